"""pilot.pyz itself: reproducible, unpacks once to node-local disk, copes with a read-only root,
and runs unchanged under every CPython 3.9+ that pyenv has."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, Site, local_config

BUILD = [sys.executable, str(REPO / "build" / "build.py"), "--output"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_builds_are_byte_for_byte_identical(tmp_path: Path) -> None:
    for name in ("a.pyz", "b.pyz"):
        subprocess.run([*BUILD, str(tmp_path / name)], check=True, capture_output=True)
    assert sha256(tmp_path / "a.pyz") == sha256(tmp_path / "b.pyz")
    assert (tmp_path / "a.pyz").read_bytes().startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(tmp_path / "a.pyz") as archive:
        names = archive.namelist()
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
    for package in ("click", "urllib3", "filelock", "tomli", "agent"):
        assert f"site-packages/{package}/__init__.py" in names, package
    assert os.access(tmp_path / "a.pyz", os.X_OK)


def test_sixteen_cold_starts_at_once_unpack_once(site: Site, tmp_path: Path) -> None:
    root = tmp_path / "fresh-root"
    site.write(local_config(site.folder, ["/bin/true"]))
    assert site.run("tokens", "add", "--range", "3").returncode == 0
    env = {**site.env, "PILOT_PYZ_ROOT": str(root)}
    starts = [
        subprocess.Popen(
            site.argv("status", "--json", "--config", str(site.config)),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(16)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in starts]
    assert [code for code, _, _ in results] == [0] * 16, [err for _, _, err in results]
    assert all('"todo": 3' in out for _, out, _ in results)
    unpacked = [p.name for p in root.iterdir() if not p.name.startswith(".")]
    assert len(unpacked) == 1 and re.fullmatch(r"pilot-[0-9a-f]{16}", unpacked[0]), unpacked


def test_default_unpack_folder_is_under_tmpdir_not_home(site: Site, tmp_path: Path) -> None:
    env = {k: v for k, v in site.env.items() if k not in ("PILOT_PYZ_ROOT", "SHIV_ROOT")}
    env["TMPDIR"] = str(tmp_path / "node-local")
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "node-local").mkdir()
    result = subprocess.run(site.argv("--version"), env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "node-local").glob(f"pilot-pyz-{os.getuid()}/pilot-*/site-packages"))
    assert not (tmp_path / "home").exists()


def test_an_unwritable_root_falls_back_to_a_private_folder_with_a_warning(site: Site, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**site.env, "PILOT_PYZ_ROOT": str(blocker / "root")}  # a path under a file: nobody can create it
    result = subprocess.run(site.argv("--version"), env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "cannot unpack into" in result.stderr and "set PILOT_PYZ_ROOT" in result.stderr
    assert result.stdout.startswith("pilot, version")


@pytest.fixture
def read_only_root(tmp_path: Path, site: Site):
    """A folder holding an unpacked pilot.pyz, then bind-mounted read-only (root ignores chmod)."""
    source, mounted = tmp_path / "unpacked", tmp_path / "readonly"
    mounted.mkdir()
    env = {**site.env, "PILOT_PYZ_ROOT": str(source)}
    subprocess.run(site.argv("--version"), env=env, check=True, capture_output=True)
    subprocess.run(["mount", "--bind", str(source), str(mounted)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True)
        yield mounted
    finally:
        subprocess.run(["umount", str(mounted)], check=True)


def test_a_read_only_root_that_already_holds_this_build_is_used_as_is(
    site: Site, read_only_root: Path
) -> None:
    with pytest.raises(OSError, match="Read-only"):
        (read_only_root / "probe").write_text("x")
    env = {**site.env, "PILOT_PYZ_ROOT": str(read_only_root)}
    result = subprocess.run(site.argv("--version"), env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def pyenv_pythons() -> list[Path]:
    """Every CPython 3.9+ that pyenv has; the test fails (not skips) when pyenv is missing."""
    try:
        root = Path(
            subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.fail(f"pyenv is needed to test every Python version: {err}")
    found = []
    for version in sorted((root / "versions").iterdir()):
        match = re.fullmatch(r"3\.(\d+)\.\d+", version.name)
        if match and int(match.group(1)) >= 9 and (version / "bin" / "python3").exists():
            found.append(version / "bin" / "python3")
    return found


def test_runs_unchanged_under_every_cpython_from_3_9(site: Site) -> None:
    pythons = pyenv_pythons()
    minors = {re.search(r"3\.(\d+)", str(p)).group(1) for p in pythons}  # type: ignore[union-attr]
    assert {"9", "13"} <= minors, f"expected at least 3.9 and 3.13 in pyenv, found {sorted(pythons)}"
    site.write(local_config(site.folder, ["/bin/true"], pilot={"slots": 2}))
    for python in pythons:
        version = subprocess.run(
            [str(python), str(site.pyz), "--version"],
            env=site.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert version.returncode == 0, (python, version.stderr)
        assert (
            site.run("tokens", "add", "--range", "4", "--prefix", python.parent.parent.name).returncode == 0
        )
        run = subprocess.run(
            [str(python), str(site.pyz), "--config", str(site.config)],
            env=site.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert run.returncode == 0, (python, run.stderr)
        assert "pool empty" in run.stderr
    assert site.status()["done"] == 4 * len(pythons)
