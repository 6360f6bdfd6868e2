"""Untrusted text (scraped names, manifest and folder names) made safe to store and to show."""

from __future__ import annotations

import unicodedata

MAX_TEXT = 200


def clean_text(value: object) -> str:
    """An untrusted scraped string made safe to store: NFC, no control/format characters, one line, capped."""
    if not isinstance(value, str):
        return ""
    # Category C: control, format (bidi overrides that reorder displayed text), private use, unassigned.
    text = "".join(ch for ch in unicodedata.normalize("NFC", value) if unicodedata.category(ch)[0] != "C" or ch in "\t\n")
    text = " ".join(text.split())
    return text[:MAX_TEXT]


def printable(value: object, width: int = 40) -> str:
    """Untrusted text for a terminal or a plot: every character that cannot be shown as itself (control
    and format characters, terminal escapes, what fonts cannot draw) becomes '?', at most `width` long."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))[:width]
