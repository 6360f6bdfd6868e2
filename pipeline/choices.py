"""Literal types that the settings and the command line share, in a module that imports nothing
heavy: `homog --help` builds its options from them without loading pydantic or pandas."""

from __future__ import annotations

from typing import Literal

EmbedderChoice = Literal["auto", "clip", "classic"]
