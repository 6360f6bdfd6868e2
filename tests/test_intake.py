"""Intake: what happens to each kind of good and bad payload.

Rule under test: every manifest row gives exactly one `images` row; a bad payload is an `error` row
with a stable `error_kind` and a reason for people; good images are normalised to 8-bit RGB.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from pipeline.config import CrawlConfig, IntakeConfig, PrivacyConfig
from pipeline.ingest.intake import IntakeError, decode_image, fetch_bytes, ingest
from pipeline.ingest.sources import ManifestRow
from pipeline.warehouse import Warehouse
from tests.conftest import encode, photo_like

CFG = IntakeConfig()


def refused(data: bytes, name: str = "x.jpg", cfg: IntakeConfig = CFG) -> IntakeError:
    with pytest.raises(IntakeError) as caught:
        decode_image(data, name, cfg)
    return caught.value


def rows_for(tmp_path: Path, files: dict[str, bytes], company: str = "acme") -> list[ManifestRow]:
    rows = []
    for name, data in files.items():
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append(ManifestRow(company=company, image=name, uri=str(path)))
    return rows


# ------------------------------------------------------------ refused payloads
def test_empty_payload_is_refused() -> None:
    assert refused(b"").kind == "empty"


def test_payload_over_byte_limit_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 5000)
    with pytest.raises(IntakeError) as caught:
        fetch_bytes(str(big), max_bytes=1000, timeout_s=5)
    assert caught.value.kind == "too_large"
    assert refused(encode(photo_like()), cfg=IntakeConfig(max_bytes=100)).kind == "too_large"


@pytest.mark.parametrize(
    ("payload", "described_as"),
    [
        (b"<!DOCTYPE html><html><body>Access denied</body></html>", "HTML page"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b'{"error": "rate limited"}', "JSON"),
        (b"%PDF-1.7\n...", "PDF"),
        (b"\x00\x01\x02\x03garbage" * 20, "binary data"),
    ],
)
def test_non_image_payloads_are_refused_and_named(payload: bytes, described_as: str) -> None:
    error = refused(payload)
    assert error.kind == "not_an_image"
    assert described_as in str(error)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # 3000x3000 of one colour compresses to a few KB but would decode to 9 MP.
    bomb = encode(Image.new("L", (3000, 3000), 0), "PNG")
    assert len(bomb) < 50_000
    error = refused(bomb, "bomb.png", IntakeConfig(max_pixels=1_000_000))
    assert error.kind == "decompression_bomb"
    assert "refused before decoding" in str(error)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_refused(fmt: str) -> None:
    whole = encode(photo_like(300, 300), fmt)
    error = refused(whole[: len(whole) // 2], f"cut.{fmt.lower()}")
    assert error.kind in {"truncated", "corrupt"}


def test_tiny_image_is_refused_as_not_a_headshot() -> None:
    error = refused(encode(photo_like(16, 16), "PNG"), "pixel.png")
    assert error.kind == "too_small"
    assert "16x16" in str(error)


# --------------------------------------------------- accepted with a warning
def test_wrong_extension_is_accepted_with_a_warning() -> None:
    decoded = decode_image(encode(photo_like(), "PNG"), "portrait.jpg", CFG)
    assert decoded.format == "PNG" and decoded.extension == "png"
    assert any(".jpg but the content is PNG" in note for note in decoded.warnings)


def test_matching_extension_has_no_warning() -> None:
    assert decode_image(encode(photo_like()), "a/b/portrait.JPEG?size=large", CFG).warnings == ()


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    decoded = decode_image(buffer.getvalue(), "wave.gif", CFG)
    assert decoded.n_frames == 3
    assert any("animated (3 frames)" in note for note in decoded.warnings)
    red, green, blue = decoded.rgb.getpixel((32, 32))
    assert red > 150 and green < 60 and blue < 60


# ----------------------------------------------------- colour normalisation
def test_cmyk_jpeg_becomes_rgb_with_the_right_colour() -> None:
    cmyk_red = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    decoded = decode_image(encode(cmyk_red), "cmyk.jpg", CFG)
    assert decoded.source_mode == "CMYK" and decoded.rgb.mode == "RGB"
    red, green, blue = decoded.rgb.getpixel((32, 32))
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 128).astype(np.uint16), (64, 1))
    decoded = decode_image(encode(Image.fromarray(ramp), "PNG"), "deep.png", CFG)
    assert decoded.rgb.mode == "RGB"
    middle = np.asarray(decoded.rgb)[32, 64]
    assert 110 < middle[0] < 145 and middle[0] == middle[1] == middle[2]


def test_transparency_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 32, 64))
    decoded = decode_image(encode(rgba, "PNG"), "alpha.png", CFG)
    assert decoded.rgb.getpixel((48, 32)) == (255, 255, 255)
    assert decoded.rgb.getpixel((10, 32)) == (0, 0, 255)


def test_palette_with_transparency_is_flattened_onto_white() -> None:
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 32, 64))
    decoded = decode_image(encode(palette, "PNG", transparency=0), "p.png", CFG)
    assert decoded.rgb.getpixel((48, 32)) == (255, 255, 255)
    assert decoded.rgb.getpixel((10, 32)) == (200, 0, 0)


def test_greyscale_becomes_three_equal_channels() -> None:
    decoded = decode_image(encode(photo_like().convert("L")), "grey.jpg", CFG)
    pixels = np.asarray(decoded.rgb)
    assert decoded.source_mode == "L" and pixels.shape[2] == 3
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    decoded = decode_image(encode(photo_like(160, 200), exif=exif), "phone.jpg", CFG)
    assert decoded.rgb.size == (200, 160)


def test_embedded_icc_profile_is_converted_and_a_broken_one_is_noted() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert decode_image(encode(photo_like(), icc_profile=srgb), "icc.jpg", CFG).warnings == ()
    broken = decode_image(encode(photo_like(), "PNG", icc_profile=b"not a profile"), "bad.png", CFG)
    assert any("ICC profile unreadable" in note for note in broken.warnings)


# --------------------------------------------------------------- ingest()
def test_ingest_stores_good_images_and_records_bad_ones(tmp_path: Path) -> None:
    good = encode(photo_like(seed=1))
    rows = rows_for(tmp_path, {"good.jpg": good, "page.jpg": b"<html><body>404</body></html>", "empty.jpg": b""})
    rows.append(ManifestRow(company="acme", image="gone.jpg", uri=str(tmp_path / "gone.jpg")))
    rows.append(ManifestRow(company="", image="x.jpg", uri="", problem="manifest row has an empty company"))
    warehouse = Warehouse(str(tmp_path / "wh"))
    frame = ingest(rows, warehouse, "2026-01-01", CFG, PrivacyConfig(), progress=False)

    assert list(frame["image"]) == ["good.jpg", "page.jpg", "empty.jpg", "gone.jpg", "x.jpg"]
    assert list(frame["status"]) == ["ok", "error", "error", "error", "error"]
    assert list(frame["error_kind"]) == ["", "not_an_image", "empty", "fetch_failed", "bad_row"]
    assert (frame.loc[frame["status"] == "error", "error"] != "").all()

    ok = frame.iloc[0]
    assert ok["content_sha256"] == hashlib.sha256(good).hexdigest()
    assert (ok["width"], ok["height"]) == (160, 200)
    assert len(ok["phash"]) == 16 and len(ok["pixel_sha256"]) == 64
    assert warehouse.read_bytes(ok["raw_object"]) == good
    thumb = Image.open(io.BytesIO(warehouse.read_bytes(ok["thumbnail_object"])))
    assert max(thumb.size) <= CFG.thumbnail_side
    # Nothing of the refused payloads is kept.
    assert len(list((tmp_path / "wh" / "objects" / "raw").rglob("*.*"))) == 1


def test_a_named_pipe_or_a_folder_is_refused_without_being_opened(tmp_path: Path) -> None:
    """A FIFO called photo.jpg blocked the run forever in open(); anything that is not a regular file
    is now an error row, decided from its metadata alone."""
    import os
    import threading

    rows = rows_for(tmp_path, {"good.jpg": encode(photo_like(seed=1))})
    os.mkfifo(tmp_path / "photo.jpg")
    (tmp_path / "folder.jpg").mkdir()
    rows += [ManifestRow(company="acme", image=name, uri=str(tmp_path / name)) for name in ("photo.jpg", "folder.jpg")]
    done: dict = {}
    worker = threading.Thread(target=lambda: done.setdefault("frame", ingest(rows, Warehouse(str(tmp_path / "wh")), "2026-01-01",
                                                                              CFG, PrivacyConfig(), progress=False)), daemon=True)  # fmt: skip
    worker.start()
    worker.join(60)
    assert "frame" in done, "intake hung on a named pipe"
    frame = done["frame"].set_index("image")
    assert frame.loc["good.jpg", "status"] == "ok"
    assert frame.loc["photo.jpg", "error_kind"] == "fetch_failed" and "is a named pipe, not a file" in frame.loc["photo.jpg", "error"]
    assert "is a directory, not a file" in frame.loc["folder.jpg", "error"]


def test_a_repeated_manifest_row_is_one_photo_and_an_explained_error_row(tmp_path: Path) -> None:
    """One row listed three times made a photo its own near-duplicate (near-dup rate 0.33 on a page
    of one photo): the repeats are now error rows saying why, and only the first row is a photo."""
    rows = rows_for(tmp_path, {"a.jpg": encode(photo_like(seed=1))})
    rows = rows * 3 + rows_for(tmp_path, {"b.jpg": encode(photo_like(seed=1))})  # b: same bytes, another name
    frame = ingest(rows, Warehouse(str(tmp_path / "wh")), "2026-01-01", CFG, PrivacyConfig(), progress=False)
    assert list(frame["status"]) == ["ok", "error", "error", "ok"]
    assert list(frame["error_kind"]) == ["", "duplicate_row", "duplicate_row", ""]
    assert "counted once" in frame.loc[1, "error"]


def test_same_bytes_twice_is_one_object_and_two_rows(tmp_path: Path) -> None:
    data = encode(photo_like(seed=2))
    rows = rows_for(tmp_path, {"a.jpg": data}, "acme") + rows_for(tmp_path, {"b/copy.jpg": data}, "globex")
    warehouse = Warehouse(str(tmp_path / "wh"))
    frame = ingest(rows, warehouse, "2026-01-01", CFG, PrivacyConfig(), progress=False)
    assert list(frame["status"]) == ["ok", "ok"]
    assert frame["content_sha256"].nunique() == 1
    assert len(list((tmp_path / "wh" / "objects" / "raw").rglob("*.jpg"))) == 1
    assert len(list((tmp_path / "wh" / "objects" / "thumbs").rglob("*.jpg"))) == 1


def test_same_pixels_in_another_encoding_share_pixel_sha(tmp_path: Path) -> None:
    picture = photo_like(seed=3)
    rows = rows_for(tmp_path, {"a.png": encode(picture, "PNG"), "a.bmp": encode(picture, "BMP")})
    frame = ingest(rows, Warehouse(str(tmp_path / "wh")), "2026-01-01", CFG, PrivacyConfig(), progress=False)
    assert frame["content_sha256"].nunique() == 2
    assert frame["pixel_sha256"].nunique() == 1


def test_no_raw_images_mode_keeps_originals_only_in_run_staging(tmp_path: Path) -> None:
    rows = rows_for(tmp_path, {"a.jpg": encode(photo_like(seed=4))})
    warehouse = Warehouse(str(tmp_path / "wh"))
    frame = ingest(rows, warehouse, "2026-01-01", CFG, PrivacyConfig(keep_raw_images=False, keep_thumbnails=False), progress=False)
    assert frame.loc[0, "raw_object"].startswith("staging/run_date=2026-01-01/")
    assert frame.loc[0, "thumbnail_object"] == ""
    assert not (tmp_path / "wh" / "objects").exists()
    warehouse.drop_staging("2026-01-01")
    assert not [p for p in (tmp_path / "wh" / "staging").rglob("*") if p.is_file()]


def test_http_sources(http_server: tuple[str, dict], tmp_path: Path) -> None:
    base, routes = http_server
    routes["/ok.jpg"] = (200, "image/jpeg", encode(photo_like(seed=5)))
    routes["/soft404.jpg"] = (200, "image/jpeg", b"<html><body>Page not found</body></html>")
    rows = [ManifestRow(company="web", image=f"{base}/{name}", uri=f"{base}/{name}") for name in ("ok.jpg", "soft404.jpg", "missing.jpg")]
    loopback = CrawlConfig(allow_private=["127.0.0.1"], min_delay_s=0)  # the test server is private, as it should be
    frame = ingest(rows, Warehouse(str(tmp_path / "wh")), "2026-01-01", CFG, PrivacyConfig(), progress=False, crawl=loopback)
    assert list(frame["status"]) == ["ok", "error", "error"]
    assert list(frame["error_kind"]) == ["", "not_an_image", "fetch_failed"]
    assert frame.loc[2, "error"] == f"HTTP 404 for {base}/missing.jpg"


def test_manifest_urls_to_private_addresses_are_refused_without_a_connection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Manifest http(s) rows were fetched with no address guard (and reported as 'not found'): they now
    go through the crawler's guard, which refuses metadata, private and loopback addresses in every
    spelling before any socket is opened, and the row says why."""
    import httpcore

    def no_connection(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", no_connection)
    urls = ["http://169.254.169.254/latest/meta-data/x.jpg", "http://10.0.0.1/x.jpg", "http://2852039166/x.jpg",
            "http://[::ffff:10.0.0.1]/x.jpg", "https://127.0.0.1:8443/x.jpg", "http://0x7f000001/x.jpg"]  # fmt: skip
    rows = [ManifestRow(company="web", image=url, uri=url) for url in urls]
    frame = ingest(rows, Warehouse(str(tmp_path / "wh")), "2026-01-01", CFG, PrivacyConfig(), progress=False)
    assert list(frame["error_kind"]) == ["fetch_refused"] * len(urls), frame["error"].tolist()
    assert "169.254.169.254, which is link-local" in frame.loc[0, "error"] and "10.0.0.1, which is private" in frame.loc[3, "error"]
    assert all("crawl.allow_private can permit it" in error for error in frame["error"])


def test_unchanged_sources_are_carried_over_without_refetching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import pipeline.ingest.intake as intake

    rows = rows_for(tmp_path, {"a.jpg": encode(photo_like(seed=7)), "b.jpg": encode(photo_like(seed=8)), "bad.jpg": b"<html>"})
    warehouse = Warehouse(str(tmp_path / "wh"))
    first = ingest(rows, warehouse, "2026-01-01", CFG, PrivacyConfig(), progress=False)
    assert (first.loc[first["status"] == "ok", "source_fingerprint"] != "").all()

    fetched: list[str] = []
    real_fetch = intake.fetch_bytes
    monkeypatch.setattr(intake, "fetch_bytes", lambda uri, *a: fetched.append(Path(uri).name) or real_fetch(uri, *a))
    second = ingest(rows, warehouse, "2026-01-02", CFG, PrivacyConfig(), progress=False, previous=first)
    assert fetched == ["bad.jpg"]  # refused rows are always retried; unchanged good ones are not fetched
    assert second.drop(columns="warnings").equals(first.drop(columns="warnings"))

    # A changed file is fetched again; so is one whose stored object disappeared.
    changed = Path(rows[0].uri)
    changed.write_bytes(encode(photo_like(seed=70)))
    os.utime(changed, (1_900_000_000, 1_900_000_000))
    warehouse.remove(first.loc[1, "raw_object"])
    fetched.clear()
    third = ingest(rows, warehouse, "2026-01-03", CFG, PrivacyConfig(), progress=False, previous=second)
    assert sorted(fetched) == ["a.jpg", "b.jpg", "bad.jpg"]
    assert third.loc[0, "content_sha256"] != first.loc[0, "content_sha256"]
    assert warehouse.exists(third.loc[1, "raw_object"])


def test_rows_are_not_carried_over_across_a_thumbnail_setting_change(tmp_path: Path) -> None:
    rows = rows_for(tmp_path, {"a.jpg": encode(photo_like(seed=11))})
    warehouse = Warehouse(str(tmp_path / "wh"))
    with_thumbs = ingest(rows, warehouse, "2026-01-01", CFG, PrivacyConfig(), progress=False)
    without = ingest(rows, warehouse, "2026-01-02", CFG, PrivacyConfig(keep_thumbnails=False), progress=False, previous=with_thumbs)
    assert with_thumbs.loc[0, "thumbnail_object"] and without.loc[0, "thumbnail_object"] == ""
    again = ingest(rows, warehouse, "2026-01-03", CFG, PrivacyConfig(), progress=False, previous=without)
    assert again.loc[0, "thumbnail_object"] == with_thumbs.loc[0, "thumbnail_object"]


def test_a_local_read_that_outlasts_its_deadline_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local reads have the remote ones' byte cap and deadline (3 x intake.fetch_timeout_s), checked
    between blocks: a file on a mount that delivers slowly cannot hold a worker forever."""
    from types import SimpleNamespace

    import pipeline.ingest.fetch as fetch

    big = tmp_path / "slow.jpg"
    big.write_bytes(b"\0" * (3 << 20))  # three blocks
    clock = iter(range(0, 1000, 50))  # every look at the clock: 50 s later
    monkeypatch.setattr(fetch, "time", SimpleNamespace(monotonic=lambda: next(clock)))  # the reader's clock only
    with pytest.raises(IntakeError, match="did not finish in time"):
        fetch_bytes(str(big), max_bytes=10 << 20, timeout_s=30)
