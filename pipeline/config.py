"""One validated configuration object for every stage.

Sources, highest precedence first: explicit overrides (CLI flags, DAG params), environment variables
(`HOMOG_WAREHOUSE`, `HOMOG_INTAKE__MAX_BYTES`, ... with `__` between nested names), a YAML file
(`--config FILE` or `HOMOG_CONFIG`), then the defaults below. Unknown keys are errors, so a typo in
a YAML file fails loudly instead of silently running with a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from pipeline.choices import EmbedderChoice

CONFIG_ENV_VAR = "HOMOG_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntakeConfig(_Section):
    """Limits that decide whether a fetched payload is a usable image."""

    max_bytes: int = Field(25_000_000, gt=0, description="Larger payloads are refused without reading them whole.")
    max_pixels: int = Field(
        50_000_000,
        gt=0,
        # Pillow warns above ~89.5 MP and refuses above twice that; staying under its warning level
        # keeps this limit the one that decides.
        le=89_000_000,
        description="Decompression-bomb guard: width*height above this is refused before decoding.",
    )
    min_side: int = Field(32, ge=1, description="Images smaller than this on either side are not headshots (icons, pixels).")
    thumbnail_side: int = Field(256, ge=32, le=1024, description="Longest side of stored thumbnails.")
    workers: int = Field(8, ge=1, le=256, description="Parallel fetch/decode threads (I/O bound for remote URLs).")
    fetch_timeout_s: float = Field(
        30.0, gt=0, description="http(s) sources: connect/read timeout; the whole response must arrive within 3x this."
    )


class ComputeConfig(_Section):
    """How CPU-bound stages (verification, face identity, the report's audit pages) use this machine."""

    workers: int = Field(
        0, ge=0, le=256,
        description="Worker processes for verification, face identity and audit pages; 0: one per CPU this process may use (its affinity).",
    )  # fmt: skip


class PrivacyConfig(_Section):
    keep_raw_images: bool = Field(
        True,
        description=(
            "False = no-raw-images mode: original bytes are kept only in a run-scoped staging area that "
            "is deleted when the run finishes; only hashes, metrics and (optionally) thumbnails remain."
        ),
    )
    keep_thumbnails: bool = Field(True, description="False = no thumbnails are stored (reports show no photos).")
    face_identity: bool = Field(
        True,
        description=(
            "False = no face-identity descriptors (biometric data) are computed at all: the identities table "
            "stays empty and pages show face repeats as not measured."
        ),
    )
    keep_face_descriptors: bool = Field(
        True,
        description=(
            "True = keep each face-identity descriptor (biometric data) sealed to its photo: encrypted with a key "
            "only the photo's own bytes yield, deleted by retention with the photo, so a night computes only new "
            "faces' descriptors; False = compute every descriptor in memory each run (kept ones are deleted). "
            "Either way tables store only the pairs they reveal."
        ),
    )


class RetentionConfig(_Section):
    raw_images_days: int = Field(30, ge=0, description="Originals not referenced by a run for this long are purged.")
    thumbnails_days: int = Field(180, ge=0, description="Thumbnails not referenced by a run for this long are purged.")
    staging_grace_hours: int = Field(24, ge=1, description="Temp/staging files left behind by killed runs are swept after this long.")


class ClipConfig(_Section):
    model: str = Field("ViT-B-32", description="open_clip model name (`homog models list --all`).")
    pretrained: str = Field("laion2b_s34b_b79k", description="open_clip pretrained tag whose weights are loaded from the HF cache.")
    checkpoint: Path | None = Field(None, description="Local checkpoint file; overrides `pretrained`.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: CUDA, then MPS, then the CPU.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: fp16 on CUDA, bf16 on CPUs with native bf16 (AMX/AVX512-BF16), else fp32."
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Pictures per forward pass.")
    decode_threads: int = Field(1, ge=1, le=64, description="Threads decoding the next batches while the model runs.")

    @field_validator("model", "pretrained")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty (random weights are not a user-facing option)")
        return value.strip()


class ThresholdsConfig(_Section):
    """Analytics thresholds. Similarities are cosine (0..1), one value per embedder family."""

    candidate: dict[str, float] = Field(
        default_factory=lambda: {"clip": 0.85, "classic": 0.80},
        description="Pairs at or above this similarity are near-duplicate *candidates*, then verified geometrically.",
    )
    style: dict[str, float] = Field(
        default_factory=lambda: {"clip": 0.90, "classic": 0.85},
        description="Pairs at or above this similarity join one style cluster (same template/look).",
    )
    # Verification of near-duplicate candidates (pipeline/features/verify.py): chosen by
    # bench/calibrate_verify.py on the calibration half of the corpus (docs/methodology.md).
    verify_min_inlier_ratio: float = Field(0.20, gt=0, le=1, description="Verification: share of ORB matches that fit one transform.")
    verify_min_block_correlation: float = Field(
        0.85, gt=-1, le=1, description="Verification: median block correlation once aligned, at the smaller picture's scale."
    )
    verify_min_face_correlation: float = Field(
        0.85, ge=-1, le=1, description="Verification: median block correlation inside the face, where one was found."
    )
    verify_min_face_floor: float = Field(
        0.7,
        ge=-1,
        le=1,
        description="Verification: 10th percentile of the face's block correlations (a changed mouth or eye is a few blocks).",
    )
    verify_max_motion_share: float = Field(
        0.004, gt=0, le=0.1, description="Verification: largest residual motion once aligned, as a share of the compared side."
    )
    verify_motion_floor_px: float = Field(
        0.6, ge=0, le=10, description="Verification: motion allowed in any case, in pixels (what the optical flow cannot resolve)."
    )
    verify_detail_side: int = Field(
        128, ge=0, description="Verification: below this compared side motion says too little, and the two `small` limits apply."
    )
    verify_min_small_correlation: float = Field(
        0.97, gt=-1, le=1, description="Verification below the detail side: block and face correlation at least this."
    )
    verify_min_small_face_floor: float = Field(
        0.93, ge=-1, le=1, description="Verification below the detail side: the face's 10th-percentile block correlation at least this."
    )
    # A degraded copy (small, heavily compressed, or both) differs from its original by noise spread
    # over the whole picture; another photo of the sitter differs in the face. Where the difference is
    # spread evenly, lower correlations are accepted.
    verify_max_face_residual_ratio: float = Field(
        1.4, gt=0, le=100, description="Verification, spread-noise rule: the face's residual against the whole picture's at most this."
    )
    verify_min_noisy_correlation: float = Field(
        0.92, gt=-1, le=1, description="Verification, spread-noise rule: median block correlation at least this."
    )
    verify_min_noisy_face_floor: float = Field(
        0.7, ge=-1, le=1, description="Verification, spread-noise rule: the face's 10th-percentile block correlation at least this."
    )
    verify_noisy_motion_floor_px: float = Field(
        0.8, ge=0, le=10, description="Verification, spread-noise rule: motion allowed in any case, in pixels (compression moves edges)."
    )
    face_window_candidate: float = Field(
        0.85, gt=0, le=1,
        description="Pairs whose aligned faces' coarse descriptors reach this cosine are near-duplicate candidates too (crops, overlays).",
    )  # fmt: skip
    max_candidates_per_image: int = Field(
        10, ge=1, le=200, description="Nearest neighbours per photo that are verified as near-duplicate candidates."
    )
    region_candidate: float = Field(
        0.7, gt=0, le=1,
        description="A photo whose whole picture reaches this cosine against a window of another (region views) is a candidate too (crops, borders).",
    )  # fmt: skip
    region_candidates_per_image: int = Field(
        3,
        ge=0,
        le=200,
        description="Nearest photos per photo found through its windows that are verified as candidates (0: no region search).",
    )
    min_images: int = Field(5, ge=3, description="Pages with fewer ok images get status too_few_images, no index.")
    bootstrap_samples: int = Field(400, ge=50, le=10_000, description="Bootstrap replicates behind each 95% interval of the index.")
    max_page_sample: int = Field(3000, ge=100, description="Larger pages are measured on a seeded sample this big.")
    reference_min_photos: int = Field(
        100, ge=2,
        description="An embedder with no index reference (stored or shipped) gets one fitted and frozen by the first run with this many photos.",
    )  # fmt: skip

    @field_validator("candidate", "style")
    @classmethod
    def _in_unit_interval(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0.0 < v <= 1.0}
        if bad:
            raise ValueError(f"similarity thresholds must be in (0, 1], got {bad}")
        missing = {"clip", "classic"} - set(value)
        if missing:
            raise ValueError(f"thresholds needed for every embedder family, missing {sorted(missing)}")
        return value


class OptOutConfig(_Section):
    """Who asked not to be collected. Checked before any request (person names: before the photo's)."""

    companies: list[str] = Field(default_factory=list, description="Company names as in sites.yaml (case-insensitive).")
    domains: list[str] = Field(default_factory=list, description="A domain and all its sub-domains.")
    url_patterns: list[str] = Field(default_factory=list, description="Shell-style globs over the absolute URL.")
    persons: list[str] = Field(default_factory=list, description="Names as they appear on a page (case- and space-insensitive).")


class CrawlConfig(_Section):
    user_agent: str = Field(
        "profile-homogenization-analytics/0.1 (+{contact_url})",
        description="Sent with every request; its first word is the token robots.txt rules address.",
    )
    contact_url: str = Field("https://example.invalid/contact", description="Where site owners reach us (named in the User-Agent).")
    min_delay_s: float = Field(1.0, ge=0, le=60, description="Least time between two requests to one host.")
    max_concurrency_per_host: int = Field(2, ge=1, le=32, description="Requests in flight to one host at most.")
    max_crawl_delay_s: float = Field(30.0, ge=0, description="Cap on a robots.txt Crawl-delay we honour.")
    timeout_s: float = Field(20.0, gt=0, description="Connect/read timeout, and the deadline for one whole response.")
    max_retries: int = Field(3, ge=0, le=10, description="Retries of a failed or throttled request (429, 5xx, timeouts).")
    backoff_s: float = Field(1.0, ge=0, description="First retry wait; doubles each retry (plus jitter).")
    max_retry_after_s: float = Field(120.0, ge=0, description="A longer Retry-After gives up instead of waiting.")
    max_redirects: int = Field(5, ge=0, le=20, description="Redirects followed per request, each checked by the address guard.")
    max_bytes_per_response: int = Field(25_000_000, gt=0, description="A larger response is abandoned while it downloads.")
    max_bytes_per_site: int = Field(500_000_000, gt=0, description="Bytes downloaded from one company's sites per crawl.")
    max_pages_per_site: int = Field(20, ge=1, description="Team page plus pagination / load-more pages.")
    follow_pagination: bool = Field(True, description="Follow rel=next and next/load-more links on the same host.")
    max_images_per_page: int = Field(2000, ge=1, description="Pictures fetched per page at most; the rest are logged as skipped.")
    max_discovery_pages: int = Field(
        12, ge=1, le=200, description="Pages fetched (home page included) to find a company's staff pages when only its domain is given."
    )
    render: Literal["never", "auto", "always"] = Field(
        "auto",
        description="Render pages in headless Chromium: `auto` only where the server's HTML has no candidate picture but looks like "
        "an application shell; without Chromium, `auto` renders nothing (warning) and `always` is an error.",
    )
    render_deadline_s: float = Field(30.0, gt=0, le=600, description="Deadline for rendering one page, requests included.")
    chromium: str = Field("", description="Chromium executable for rendering; empty: `chromium` (or `chromium-browser`) on PATH.")
    preferred_width: int = Field(800, ge=64, description="From a srcset, the smallest size at least this wide.")
    min_side: int = Field(64, ge=1, description="Smaller pictures are icons, not headshots.")
    min_aspect: float = Field(0.5, gt=0, description="width/height below this: a vertical strip, not a headshot.")
    max_aspect: float = Field(2.0, gt=0, description="width/height above this: a banner, not a headshot.")
    face_score_floor: float = Field(
        0.9, ge=0, le=1, description="Detector confidence from which a face counts (crawl, faces and identity)."
    )
    workers: int = Field(4, ge=1, le=64, description="Downloads in flight per company (each host still capped).")
    allow_private: list[str] = Field(
        default_factory=list,
        description="IPs, CIDRs or host names exempt from the private-address guard (tests use 127.0.0.1).",
    )
    opt_out: OptOutConfig = OptOutConfig()

    @model_validator(mode="after")
    def _contact_is_set(self) -> CrawlConfig:
        if "{contact_url}" in self.user_agent and not self.contact_url:
            raise ValueError("crawl.contact_url must be set: the User-Agent names it so site owners can reach us")
        if self.min_aspect >= self.max_aspect:
            raise ValueError("crawl.min_aspect must be below crawl.max_aspect")
        return self

    @property
    def resolved_user_agent(self) -> str:
        return self.user_agent.replace("{contact_url}", self.contact_url)

    @property
    def robots_token(self) -> str:
        """The product token robots.txt groups and X-Robots-Tag prefixes address us by."""
        return self.resolved_user_agent.split("/", 1)[0].split()[0]


class Settings(BaseSettings):
    """Everything a run needs to know, validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="HOMOG_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    warehouse: str = Field("./warehouse", description="Warehouse root: a local path or any fsspec URL (s3://...).")
    reports: str = Field("./reports", description="Where HTML reports go (<reports>/<run_date>/index.html); path or fsspec URL.")
    embedder: EmbedderChoice = Field(
        "auto", description="auto: clip where its weights are on this machine, else classic (said in the log, run.json and the report)."
    )
    embed_shards: int = Field(
        1, ge=1, le=1024,
        description=(
            "Airflow: the run's new pictures are embedded by this many mapped tasks (e.g. one per GPU worker); "
            "the CLI embeds in one process."
        ),
    )  # fmt: skip
    clip: ClipConfig = ClipConfig()
    thresholds: ThresholdsConfig = ThresholdsConfig()
    intake: IntakeConfig = IntakeConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    retention: RetentionConfig = RetentionConfig()
    crawl: CrawlConfig = CrawlConfig()
    compute: ComputeConfig = ComputeConfig()

    @field_validator("warehouse")
    @classmethod
    def _warehouse_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("warehouse must be a path or URL, got an empty string")
        return value.strip()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = os.environ.get(CONFIG_ENV_VAR)
        if yaml_path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who has to fix it."""


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the validated settings; `overrides` with value None are ignored (unset CLI flags)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    previous = os.environ.get(CONFIG_ENV_VAR)
    try:
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            os.environ[CONFIG_ENV_VAR] = str(path)
        elif previous and not Path(previous).is_file():
            raise ConfigError(f"{CONFIG_ENV_VAR} points to a missing file: {previous}")
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc)) from None
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop(CONFIG_ENV_VAR, None)
            else:
                os.environ[CONFIG_ENV_VAR] = previous


def _describe_validation_error(exc: ValidationError) -> str:
    lines = [f"invalid configuration ({exc.error_count()} problem(s)):"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        env_name = "HOMOG_" + "__".join(str(part) for part in error["loc"]).upper()
        lines.append(f"  - {where}: {error['msg']} (got {error.get('input')!r}; env var {env_name})")
    return "\n".join(lines)
