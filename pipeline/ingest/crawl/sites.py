"""The sites file (`sites.yaml`): which companies to crawl, where, and the file's own crawl overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.config import CrawlConfig, Settings


class SitesError(ValueError):
    """sites.yaml cannot be used; the message says where and why."""


class SiteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    urls: list[str] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("company name is empty")
        return value


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
    """The crawl config with the sites file's `crawl:` overrides applied (and validated)."""
    merged = settings.crawl.model_dump()
    for key, value in sites.crawl.items():
        if key == "opt_out" and isinstance(value, dict):
            merged["opt_out"] = {**merged["opt_out"], **value}
        else:
            merged[key] = value
    try:
        return CrawlConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"crawl.{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors())
        raise SitesError(f"sites file crawl overrides: {problems}") from None


def with_site_overrides(settings: Settings, sites: SitesFile) -> Settings:
    """The settings with the sites file's crawl overrides applied: one crawl config for the whole crawl."""
    return settings.model_copy(update={"crawl": crawl_settings(settings, sites)})
