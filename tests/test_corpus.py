"""On the shared real-photo corpus (skipped where ../shared/data/headshots is absent)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import load_settings
from pipeline.ingest.sources import scan_folder
from pipeline.stages import run_pipeline


def test_ai_diffusion_packs_ingest_completely(corpus: Path, tmp_path: Path) -> None:
    folder = corpus / "ai_diffusion_packs"
    settings = load_settings(warehouse=str(tmp_path / "wh"), reports=str(tmp_path / "reports"))
    result = run_pipeline(scan_folder(str(folder)), settings, "2026-01-01", progress=False)
    images = pd.read_parquet(result.outputs["images"])
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(images) == len(files) == 107
    assert (images["status"] == "ok").all(), images.loc[images["status"] != "ok", ["image", "error"]]
    assert images["company"].nunique() == 5
    assert (images["width"] >= 200).all() and (images["height"] >= 200).all()


def test_one_template_with_another_face_is_not_the_same_photo(corpus: Path) -> None:
    """A studio photo whose face is replaced by another sitter's (same backdrop, suit, framing)."""
    import dataclasses

    from pipeline.features.verify import VerifyParams, features, verify
    from pipeline.ingest.intake import load_rgb

    folder = corpus / "real_lab_london" / "neutral_front"
    original = load_rgb(str(folder / "001_03.jpg"))
    other_sitter = load_rgb(str(folder / "004_03.jpg")).resize(original.size)
    original_features = features(original)
    assert original_features[0].face is not None
    x, y, w, h = original_features[0].face
    scale = original.size[0] / original_features[0].grey.shape[1]
    box = tuple(int(v * scale) for v in (x, y, x + w, y + h))
    template_clone = original.copy()
    template_clone.paste(other_sitter.crop(box), box[:2])

    verdict = verify(original_features, features(template_clone))
    assert not verdict.same_photo and verdict.block_correlation > 0.99  # only the face tells them apart
    # Without the face rules (and the motion the new face shows), the rest of the picture agrees.
    faceless = dataclasses.replace(VerifyParams.from_thresholds(), min_face_correlation=-1.0, min_face_floor=-1.0, max_motion_share=0.1)
    assert verify(original_features, features(template_clone), faceless).same_photo
    assert verify(original_features, features(original.resize((400, 400)))).same_photo


def test_degraded_copies_of_a_studio_photo_verify_and_the_sitters_other_photo_does_not(corpus: Path) -> None:
    """Crop + downscale + JPEG copies kept above the detail side (128 px) verify; the same sitter
    smiling, degraded the same ways, never does, whatever its size (below the detail side a copy must
    agree closely, and half of the smallest are missed: bench/calibrate_verify.py measures both on
    hundreds of pairs)."""
    import numpy as np

    from pipeline.features.calibration import EDIT_KINDS
    from pipeline.features.verify import VerifyParams, features, verify
    from pipeline.ingest.intake import load_rgb

    neutral = load_rgb(str(corpus / "real_lab_london" / "neutral_front" / "002_03.jpg"))
    smiling = load_rgb(str(corpus / "real_lab_london" / "smiling_front" / "002_08.jpg"))
    original = features(neutral)
    detail_side = VerifyParams.from_thresholds().detail_side
    large_copies = 0
    for seed in range(8):
        copy = EDIT_KINDS["crop_resize_jpeg"](neutral, np.random.default_rng(seed))
        if max(copy.size) >= detail_side:
            large_copies += 1
            assert verify(original, features(copy)).same_photo, seed
        degraded = EDIT_KINDS["crop_resize_jpeg"](smiling, np.random.default_rng(seed))
        assert not verify(original, features(degraded)).same_photo, seed
    assert large_copies >= 3  # the seeds draw sizes on both sides of the detail side


def test_every_ai_pack_and_the_studio_set_score_above_the_real_staff_page(corpus: Path, tmp_path: Path) -> None:
    """The first validation check of the analytics issue, with the shipped classic reference
    (bench/validate_homogeneity.py runs all three through the whole pipeline)."""
    import numpy as np

    from pipeline.features.embedders.classic import ClassicEmbedder
    from pipeline.features.reference import stored_reference
    from pipeline.metrics.homogeneity import page_index
    from pipeline.warehouse import Warehouse

    embedder = ClassicEmbedder()
    reference = stored_reference(Warehouse(str(tmp_path / "no-warehouse-here")), embedder.id, embedder.dim)
    assert reference is not None

    def index(folder: Path) -> tuple[float, float, float]:
        vectors = embedder.embed_uris(sorted(str(p) for p in folder.glob("*.jp*g")))
        return page_index(reference.centre(vectors), np.zeros((len(vectors),) * 2, bool), 400, seed=0)

    staff, _, staff_high = index(corpus / "real_staff_18f")
    packs = {folder.name: index(folder)[0] for folder in sorted((corpus / "ai_diffusion_packs").iterdir())}
    studio = index(corpus / "real_lab_london" / "neutral_front")[0]
    assert len(packs) == 5 and all(value > staff_high for value in packs.values()), (staff, staff_high, packs)
    assert studio > max(packs.values()) and staff < 0.3
