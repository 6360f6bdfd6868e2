"""The sites file (`sites.yaml`): which companies to crawl, where, and the file's own crawl overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config import CrawlConfig, Settings


class SitesError(ValueError):
    """sites.yaml cannot be used; the message says where and why."""


class SiteEntry(BaseModel):
    """One company: its team pages (`urls`), or its `domain` to find them on, or both."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    urls: list[str] = Field(default_factory=list)
    domain: str | None = Field(None, max_length=300)

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("company name is empty")
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        parts = urlsplit(value if "://" in value else "//" + value)
        if parts.scheme not in ("", "http", "https") or not parts.hostname or parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError(f"domain {value!r} must be a host name (example.com), or an origin (https://example.com:8443)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _somewhere_to_start(self) -> SiteEntry:
        if not self.urls and not self.domain:
            raise ValueError(f"company {self.name!r} needs `urls` (its team pages), a `domain` to find them on, or both")
        return self

    @property
    def origins(self) -> list[str]:
        """Where the domain's site is: the origin as given, else https and then plain http."""
        if not self.domain:
            return []
        if "://" in self.domain:
            return [self.domain]
        return [f"https://{self.domain}", f"http://{self.domain}"]

    @property
    def where(self) -> list[str]:
        """What a log row names when nothing of the company was crawled: its pages, else its domain."""
        return self.urls or [self.origins[0]]


class SitesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    companies: list[SiteEntry] = Field(min_length=1)
    crawl: dict[str, Any] = Field(default_factory=dict)

    @field_validator("companies")
    @classmethod
    def _unique(cls, companies: list[SiteEntry]) -> list[SiteEntry]:
        names = [company.name.casefold() for company in companies]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"company names must be unique, repeated: {', '.join(repeated)}")
        return companies

    def company(self, name: str) -> SiteEntry:
        for entry in self.companies:
            if entry.name == name:
                return entry
        raise SitesError(f"no company named {name!r} in sites.yaml")


def load_sites(path: str | Path) -> SitesFile:
    """Read and validate a sites file: a local path or any fsspec URL (a worker of a nightly without a
    shared disk reads it from the object store)."""
    import fsspec

    path = str(path)
    try:
        with fsspec.open(path, "r", encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except FileNotFoundError:
        raise SitesError(f"sites file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SitesError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SitesError(f"{path}: expected a mapping with a 'companies' list")
    try:
        sites = SitesFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors())
        raise SitesError(f"{path}: {problems}") from None
    return sites


def crawl_settings(settings: Settings, sites: SitesFile) -> CrawlConfig:
    """The crawl config with the sites file's `crawl:` overrides applied, validated, and checked
    against this machine (`crawl.render: always` needs a Chromium)."""
    merged = settings.crawl.model_dump()
    for key, value in sites.crawl.items():
        if key == "opt_out" and isinstance(value, dict):
            merged["opt_out"] = {**merged["opt_out"], **value}
        else:
            merged[key] = value
    try:
        cfg = CrawlConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"crawl.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors())
        raise SitesError(f"sites file crawl overrides: {problems}") from None
    from pipeline.ingest.crawl.pages import render_check
    from pipeline.ingest.crawl.render import RenderUnavailable

    try:  # before any request: a crawl told to render every page must not quietly render none
        render_check(cfg)
    except RenderUnavailable as exc:
        raise SitesError(str(exc)) from None
    return cfg


def with_site_overrides(settings: Settings, sites: SitesFile) -> Settings:
    """The settings with the sites file's crawl overrides applied: one crawl config for the whole crawl."""
    return settings.model_copy(update={"crawl": crawl_settings(settings, sites)})
