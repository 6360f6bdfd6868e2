"""Configuration: defaults, YAML, environment, precedence, and errors a person can act on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _no_suite_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite points HOMOG_WAREHOUSE and HOMOG_REPORTS at its temporary folder; these tests are
    about where settings come from, so they start from none."""
    monkeypatch.delenv("HOMOG_WAREHOUSE", raising=False)
    monkeypatch.delenv("HOMOG_REPORTS", raising=False)


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.warehouse == "./warehouse"
    assert settings.embedder == "auto"
    assert settings.clip.model == "ViT-B-32" and settings.clip.pretrained == "laion2b_s34b_b79k"
    assert "https://" in settings.crawl.resolved_user_agent


def test_yaml_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "homog.yaml"
    config.write_text("warehouse: /data/wh\nembedder: classic\nintake:\n  max_bytes: 1000\n  workers: 3\n")
    assert load_settings(config).intake.max_bytes == 1000

    monkeypatch.setenv("HOMOG_INTAKE__WORKERS", "5")
    settings = load_settings(config)
    assert settings.intake.workers == 5  # env beats YAML
    assert settings.intake.max_bytes == 1000  # YAML beats defaults
    assert load_settings(config, warehouse="/elsewhere", embedder=None).warehouse == "/elsewhere"
    assert load_settings(config, embedder=None).embedder == "classic"  # unset flag is ignored


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "homog.yaml"
    config.write_text("privacy:\n  keep_raw_images: false\n")
    monkeypatch.setenv("HOMOG_CONFIG", str(config))
    assert load_settings().privacy.keep_raw_images is False
    monkeypatch.setenv("HOMOG_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="missing file"):
        load_settings()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("embedder: bert\n", "embedder: Input should be 'auto', 'clip' or 'classic'"),
        ("intake:\n  max_bytes: -1\n", "intake.max_bytes"),
        ("intake:\n  max_pixels: 500000000\n", "intake.max_pixels"),
        ("intake:\n  maxbytes: 5\n", "intake.maxbytes: Extra inputs are not permitted"),
        ("thresholds:\n  candidate:\n    clip: 1.5\n    classic: 0.8\n", "must be in (0, 1]"),
        ("thresholds:\n  style:\n    clip: 0.9\n", "missing ['classic']"),
        ("warehouse: '  '\n", "warehouse"),
        ("embed_shards: 0\n", "embed_shards"),
        ("thresholds:\n  reference_min_photos: 1\n", "thresholds.reference_min_photos"),
        ("privacy:\n  face_identity: maybe\n", "privacy.face_identity"),
    ],
)
def test_invalid_settings_name_the_field_and_its_env_var(tmp_path: Path, yaml_text: str, message: str) -> None:
    config = tmp_path / "homog.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert message in str(caught.value)
    assert "env var HOMOG_" in str(caught.value)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_the_command_line_starts_without_loading_anything_heavy() -> None:
    """`homog --help` (and every command's start) imports the CLI modules only: the settings (pydantic),
    pandas, numpy and the models are imported by the commands that use them."""
    probe = (
        "import sys, json\nfrom typer.testing import CliRunner\nfrom pipeline.apps.cli import app\n"
        "out = CliRunner().invoke(app, ['--help'])\n"
        "heavy = ['pandas', 'numpy', 'pydantic', 'pyarrow', 'fsspec', 'torch', 'open_clip', 'umap', 'numba', 'cv2', 'faiss']\n"
        "print(json.dumps({'code': out.exit_code, 'loaded': [m for m in heavy if m in sys.modules], 'help': out.stdout}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and "trends" in result["help"] and "demo" in result["help"]
    assert result["loaded"] == []
