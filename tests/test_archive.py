"""Unpacking archives for the cache: every format it accepts, and every way out of the folder refused."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Optional

import pytest

from agent.archive import ArchiveError, strip_suffix, unpack

Member = tuple[str, str, Optional[str]]  # (name, kind, data or link target)


def make_tar(path: Path, members: list[Member], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                data = (value or "").encode()
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "exe": tarfile.REGTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "device": tarfile.CHRTYPE,
            }[kind]
            info.mode = 0o4755 if kind == "exe" else 0o755
            if kind in ("symlink", "hardlink"):
                info.linkname = value or ""
            if kind == "exe":
                data = (value or "").encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def make_zip(path: Path, members: list[Member]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, kind, value in members:
            info = zipfile.ZipInfo(name)
            if kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            elif kind == "exe":
                info.external_attr = (stat.S_IFREG | 0o755) << 16
            archive.writestr(info, value or "")
    return path


GOOD: list[Member] = [
    ("./refdb/", "dir", None),
    ("./refdb/data.txt", "file", "reference data\n"),
    ("./refdb/bin/tool", "exe", "#!/bin/sh\necho tool\n"),
    ("./refdb/current", "symlink", "data.txt"),
    ("./refdb/same.txt", "hardlink", "refdb/data.txt"),
]

FORMATS = [("ref.tar", "w"), ("ref.tar.gz", "w:gz"), ("ref.tgz", "w:gz"), ("ref.tar.bz2", "w:bz2")]
FORMATS += [("ref.tar.xz", "w:xz"), ("ref.bin", "w:gz")]  # no suffix: the format is found from the bytes


@pytest.mark.parametrize(("name", "mode"), FORMATS)
def test_every_tar_format_unpacks_files_folders_and_links_inside(
    tmp_path: Path, name: str, mode: str
) -> None:
    archive = make_tar(tmp_path / name, GOOD, mode)
    target = tmp_path / "out"
    written = unpack(archive, target)
    assert (target / "refdb" / "data.txt").read_text() == "reference data\n"
    assert (target / "refdb" / "current").is_symlink()
    assert (target / "refdb" / "current").read_text() == "reference data\n"
    assert (target / "refdb" / "same.txt").stat().st_ino == (target / "refdb" / "data.txt").stat().st_ino
    tool = (target / "refdb" / "bin" / "tool").stat().st_mode
    assert stat.S_IMODE(tool) == 0o755, "executable, but without the setuid bit the archive asked for"
    assert stat.S_IMODE((target / "refdb" / "data.txt").stat().st_mode) == 0o644
    assert written == len("reference data\n") + len("#!/bin/sh\necho tool\n")


def test_a_zip_unpacks_with_its_executables_and_links(tmp_path: Path) -> None:
    members: list[Member] = [
        ("refdb/", "dir", None),
        ("refdb/data.txt", "file", "zipped\n"),
        ("refdb/run", "exe", "#!/bin/sh\n"),
        ("refdb/latest", "symlink", "data.txt"),
    ]
    target = tmp_path / "out"
    unpack(make_zip(tmp_path / "ref.zip", members), target)
    assert (target / "refdb" / "latest").read_text() == "zipped\n"
    assert stat.S_IMODE((target / "refdb" / "run").stat().st_mode) == 0o755


ESCAPES: list[tuple[str, list[Member], str]] = [
    ("dot-dot", [("../evil", "file", "x")], "../evil"),
    ("dot-dot-inside", [("a/../../evil", "file", "x")], "a/../../evil"),
    ("absolute", [("/tmp/evil-absolute", "file", "x")], "/tmp/evil-absolute"),
    ("link-absolute", [("etc", "symlink", "/etc")], "etc"),
    ("link-up", [("up", "symlink", "..")], "up"),
    ("link-up-deep", [("a/", "dir", None), ("a/up", "symlink", "../../evil")], "a/up"),
    ("through-link", [("d/", "dir", None), ("l", "symlink", "d"), ("l/x", "file", "x")], "l/x"),
    # Each link alone stays inside; followed together they leave: a/s is the top, and top/.. is outside.
    ("link-chain", [("a/", "dir", None), ("a/s", "symlink", ".."), ("l", "symlink", "a/s/..")], "l"),
    ("file-then-link", [("x/y", "file", "y"), ("x", "symlink", ".")], "x/y"),
    ("hardlink-out", [("h", "hardlink", "../evil")], "h"),
    ("hardlink-missing", [("h", "hardlink", "not-there")], "h"),
    ("fifo", [("pipe", "fifo", None)], "pipe"),
    ("device", [("tty", "device", None)], "tty"),
]


@pytest.mark.parametrize(("members", "culprit"), [c[1:] for c in ESCAPES], ids=[c[0] for c in ESCAPES])
def test_members_that_would_leave_the_folder_are_refused_by_name(
    tmp_path: Path, members: list[Member], culprit: str
) -> None:
    archive = make_tar(tmp_path / "bad.tar.gz", members, "w:gz")
    target = tmp_path / "deep" / "out"
    target.parent.mkdir()
    with pytest.raises(ArchiveError) as caught:
        unpack(archive, target)
    assert caught.value.member == culprit
    assert repr(culprit) in str(caught.value)
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/evil-absolute").exists()


@pytest.mark.parametrize(
    ("members", "culprit"),
    [([("../evil", "file", "x")], "../evil"), ([("ln", "symlink", "../../evil")], "ln")],
    ids=["dot-dot", "link-out"],
)
def test_zip_members_that_would_leave_the_folder_are_refused(
    tmp_path: Path, members: list[Member], culprit: str
) -> None:
    target = tmp_path / "deep" / "out"
    target.parent.mkdir()
    with pytest.raises(ArchiveError) as caught:
        unpack(make_zip(tmp_path / "bad.zip", members), target)
    assert caught.value.member == culprit
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()


def test_a_damaged_archive_is_an_archive_error_not_a_crash(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "ref.tar.gz", GOOD, "w:gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2] + bytes(64))
    with pytest.raises(ArchiveError, match=r"cannot read ref\.tar\.gz"):
        unpack(archive, tmp_path / "out")


def test_folder_names_drop_the_archive_suffix() -> None:
    assert strip_suffix("refdb-v3.tar.gz") == "refdb-v3"
    assert strip_suffix("model.TGZ") == "model"
    assert strip_suffix("x.zip") == "x"
    assert strip_suffix("plain.bin") == "plain.bin"
    assert strip_suffix(".tar.gz") == ".tar.gz"
