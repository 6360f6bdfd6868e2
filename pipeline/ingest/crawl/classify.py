"""What one downloaded picture is, and whether it is a headshot: size, aspect ratio, faces, card structure."""

from __future__ import annotations

import hashlib
import threading
import unicodedata
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from pipeline.config import CrawlConfig, Settings
from pipeline.ingest.crawl.extract import Candidate


def normalise_name(name: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


@dataclass
class Facts:
    """What one download told us; kept in the crawl state so an unchanged picture needs no bytes."""

    sha256: str = ""
    extension: str = ""
    width: int = 0
    height: int = 0
    face_scores: list[float] = field(default_factory=list)
    error_kind: str = ""
    error: str = ""
    n_bytes: int = 0


class FactsCache:
    """Facts by content hash within one crawl: a picture used on many cards is examined once."""

    def __init__(self) -> None:
        self._facts: dict[str, Facts] = {}
        self._lock = threading.Lock()

    def examine(self, data: bytes, url: str, settings: Settings) -> Facts:
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._facts.get(sha)
        if known is None:
            known = examine(data, url, settings, sha)
            with self._lock:
                self._facts[sha] = known
        return Facts(**asdict(known))


def examine(data: bytes, url: str, settings: Settings, sha256: str = "") -> Facts:
    from pipeline.features.faces import detect_faces
    from pipeline.ingest.intake import IntakeError, decode_image

    facts = Facts(sha256=sha256 or hashlib.sha256(data).hexdigest(), n_bytes=len(data))
    try:
        decoded = decode_image(data, urlsplit(url).path.rsplit("/", 1)[-1], settings.intake)
    except IntakeError as exc:
        facts.error_kind, facts.error = exc.kind, str(exc)
        return facts
    facts.extension, (facts.width, facts.height) = decoded.extension, decoded.rgb.size
    if shape_problem(facts, settings.crawl) is None:  # the face check is the costly part: only where it can matter
        facts.face_scores = [round(face.score, 4) for face in detect_faces(decoded.rgb, score_floor=0.5)]
    return facts


def shape_problem(facts: Facts, cfg: CrawlConfig) -> str | None:
    if min(facts.width, facts.height) < cfg.min_side:
        return f"{facts.width}x{facts.height} is smaller than crawl.min_side={cfg.min_side}: an icon, not a headshot"
    aspect = facts.width / facts.height
    if aspect < cfg.min_aspect:
        return f"aspect ratio {aspect:.2f} is below crawl.min_aspect={cfg.min_aspect}: a vertical strip, not a headshot"
    if aspect > cfg.max_aspect:
        return f"aspect ratio {aspect:.2f} is above crawl.max_aspect={cfg.max_aspect}: a banner, not a headshot"
    return None


def n_faces(facts: Facts, cfg: CrawlConfig) -> int:
    return sum(score >= cfg.face_score_floor for score in facts.face_scores)


def verdict(facts: Facts, candidate: Candidate, cfg: CrawlConfig, card_face_share: float) -> tuple[str, str]:
    if facts.error_kind == "not_an_image":
        return "rejected", facts.error
    if facts.error_kind:
        return "error", f"{facts.error_kind}: {facts.error}"
    problem = shape_problem(facts, cfg)
    if problem:
        return "rejected", problem
    faces = n_faces(facts, cfg)
    if faces == 1:
        return "kept", "face found"
    if faces > 1:
        return "kept", f"{faces} faces found: the largest is the subject"
    if candidate.card and card_face_share >= 0.5:
        # Detectors miss some real headshots (profile views, sunglasses, small faces); a picture in
        # a staff grid whose other pictures are faces is one of them, not a logo.
        return "kept", f"no face found, kept as one of a repeated card group whose photos are {card_face_share:.0%} faces"
    return "rejected", "no face found (not in a card group of faces)"


def pre_fetch_refusal(candidate: Candidate, cfg: CrawlConfig) -> tuple[str, str] | None:
    """Decisions the markup alone supports, made before any request for the picture."""
    if candidate.person and any(normalise_name(candidate.person) == normalise_name(p) for p in cfg.opt_out.persons):
        return "skipped", "opt-out: person (crawl.opt_out.persons)"
    url = candidate.url
    if url.startswith("data:"):
        return "rejected", "inline data: URI (placeholders and icons); not fetched"
    if urlsplit(url).path.lower().endswith((".svg", ".svgz")):
        return "rejected", "SVG: vector graphics are logos and icons, not photographs"
    if candidate.in_chrome:
        return "rejected", "in the page's header, navigation or footer: logos and icons, not staff photos"
    width, height = candidate.declared_width, candidate.declared_height
    if width is not None and height is not None and max(width, height) < cfg.min_side:
        return "rejected", f"declared {width}x{height}: a tracking pixel or icon"
    return None
