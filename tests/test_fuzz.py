"""A seeded mutation fuzzer over valid JPEG, PNG, WebP, GIF, TIFF and BMP files: every case ends as a
decoded picture or an error with a reason (an `ok` or an error row), never another exception.
`python -m bench.fuzz_intake` runs 100,000 such cases in worker processes and counts hangs too."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.fuzz_intake import FORMATS, cases, outcome
from pipeline.config import load_settings
from pipeline.ingest.intake import ingest
from pipeline.ingest.sources import ManifestRow
from pipeline.warehouse import Warehouse
from tests.conftest import encode, photo_like

# Mutated TIFF tags make Pillow warn on nearly every case; the warnings are the point, not news.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N_CASES = 2_100


def test_no_mutated_picture_crashes_the_decoder() -> None:
    outcomes = Counter(outcome(data) for _, data in cases(N_CASES, seed=0))
    crashes = {result: n for result, n in outcomes.items() if result.startswith("crash")}
    assert not crashes, crashes
    assert outcomes["ok"] > 0 and sum(n for r, n in outcomes.items() if r.startswith("error")) > N_CASES // 4  # both paths exercised
    assert len(FORMATS) == 6


def _raises_outside_intake_errors(data: bytes) -> bool:
    from pipeline.config import IntakeConfig
    from pipeline.ingest.intake import IntakeError, _decode

    try:
        _decode(data, "case", IntakeConfig(), None)
    except IntakeError:
        return False
    except Exception:  # what Pillow raises on these files: TypeError and the like, not OSError
        return True
    return False


def test_a_poisoned_picture_is_one_error_row_among_good_ones(tmp_path) -> None:  # noqa: ANN001
    """A mutated TIFF on which Pillow raises TypeError: before, it ended the whole run (the intake
    thread pool re-raised it); now it is one error row and the good pictures beside it are kept."""
    poisoned = next(data for fmt, data in cases(N_CASES, seed=0) if fmt == "TIFF" and _raises_outside_intake_errors(data))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad.tif").write_bytes(poisoned)
    for i in range(3):
        (folder / f"good{i}.jpg").write_bytes(encode(photo_like(seed=i)))
    rows = [ManifestRow(company="acme", image=p.name, uri=str(p)) for p in sorted(folder.iterdir())]
    settings = load_settings(warehouse=str(tmp_path / "wh"))
    images = ingest(rows, Warehouse(settings.warehouse), "2026-01-01", settings.intake, settings.privacy, progress=False)
    by_image = images.set_index("image")
    assert by_image.loc["bad.tif", "status"] == "error" and by_image.loc["bad.tif", "error_kind"] == "corrupt"
    assert "the image decoder failed on this payload" in by_image.loc["bad.tif", "error"]
    assert (by_image.drop(index="bad.tif")["status"] == "ok").all()
