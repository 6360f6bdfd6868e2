"""Sources: manifests and folders become rows; unusable input is an error, unusable rows are kept."""

from __future__ import annotations

import re
from pathlib import Path

import fsspec
import pytest

from pipeline.ingest.sources import SourceError, read_manifest, resolve_reference, scan_folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_manifest_paths_resolve_relative_to_the_csv(tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "m" / "manifest.csv",
        "\ufeffCompany, Image ,person,source_url\n"
        "acme,photos/a.jpg,Ada,https://acme.example/team\n"
        f"acme,{tmp_path}/abs.jpg,,\n"
        "globex,https://cdn.example/b.jpg,,\n"
        "globex,file:///srv/c.jpg,,\n",
    )
    rows = read_manifest(str(manifest))
    assert [r.uri for r in rows] == [
        str(tmp_path / "m" / "photos" / "a.jpg"),
        f"{tmp_path}/abs.jpg",
        "https://cdn.example/b.jpg",
        "file:///srv/c.jpg",
    ]
    assert rows[0].image == "photos/a.jpg" and rows[0].person == "Ada"
    assert rows[0].source_url == "https://acme.example/team"
    assert all(not r.problem for r in rows)


def test_manifest_rows_without_company_or_image_are_kept_with_a_problem(tmp_path: Path) -> None:
    rows = read_manifest(str(write(tmp_path / "m.csv", "company,image\n,a.jpg\nacme,\nacme,b.jpg\n")))
    assert [r.problem for r in rows] == [
        "manifest row has an empty company",
        "manifest row has an empty image reference",
        "",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("company,picture\nacme,a.jpg\n", "lacks column(s) image"),
        ("", "not a readable UTF-8 CSV"),
    ],
)
def test_unusable_manifest_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SourceError, match=re.escape(message)):
        read_manifest(str(write(tmp_path / "m.csv", text)))


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="manifest not found"):
        read_manifest(str(tmp_path / "nope.csv"))


def test_manifest_on_a_remote_filesystem_resolves_against_its_url() -> None:
    with fsspec.open("memory://bucket/run/manifest.csv", "w") as handle:
        handle.write("company,image\nacme,img/a.jpg\n")
    rows = read_manifest("memory://bucket/run/manifest.csv")
    assert rows[0].uri == "memory://bucket/run/img/a.jpg"
    assert resolve_reference("x.jpg", "s3://b/p") == "s3://b/p/x.jpg"


def test_folder_sub_folders_are_companies_and_sidecars_are_skipped(tmp_path: Path) -> None:
    for name in ("acme/a.jpg", "acme/nested/b.png", "acme/notes.md", "acme/.hidden.jpg", "globex/c.webp", "loose.jpg"):
        write(tmp_path / name, "x")
    (tmp_path / "empty-co").mkdir()
    rows = scan_folder(str(tmp_path))
    assert [(r.company, r.image) for r in rows] == [
        ("acme", "acme/a.jpg"),
        ("acme", "acme/nested/b.png"),
        ("globex", "globex/c.webp"),
    ]
    assert rows[0].uri == str(tmp_path / "acme" / "a.jpg")


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        scan_folder(str(tmp_path / "missing"))
    write(tmp_path / "only-loose-file.jpg", "x")
    with pytest.raises(SourceError, match="no company sub-folders"):
        scan_folder(str(tmp_path))


def test_bidi_overrides_and_zero_width_characters_leave_names_before_any_report(tmp_path: Path) -> None:
    """A company or person name from a manifest or a folder could be displayed spoofed in the reports
    (U+202E turns 'exe.txt' into 'txt.exe'): names are cleaned as scraped text is."""
    (tmp_path / "m.csv").write_text("company,image,person\nAcme\u202e gpj.exe\u200b,a.jpg,Jane\u2066 Roe\u200d\n", encoding="utf-8")
    row = read_manifest(str(tmp_path / "m.csv"))[0]
    assert (row.company, row.person) == ("Acme gpj.exe", "Jane Roe")
    folder = tmp_path / "in"
    (folder / "Globex\u202eCorp").mkdir(parents=True)
    (folder / "Globex\u202eCorp" / "x.jpg").write_bytes(b"x")
    (folder / "\u200b\u200b").mkdir()
    (folder / "\u200b\u200b" / "y.jpg").write_bytes(b"y")
    assert sorted(r.company for r in scan_folder(str(folder))) == ["GlobexCorp", "\\u200b\\u200b"]  # invisible: shown escaped


def test_a_manifest_url_is_read_through_the_address_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--manifest http://169.254.169.254/...` was read by fsspec with no guard: it is now refused
    before any connection, with the reason."""
    import httpcore

    def no_connection(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", no_connection)
    with pytest.raises(SourceError, match=r"cannot be read: not fetched \(private_address\).*169\.254\.169\.254, which is link-local"):
        read_manifest("http://169.254.169.254/latest/manifest.csv")
