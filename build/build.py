"""Build pilot.pyz with shiv: one reproducible, compressed file that runs on CPython 3.9 to 3.13.

    python build/build.py --output pilot.pyz

Reproducible: dependency versions are pinned (build/requirements.txt), every timestamp is
SOURCE_DATE_EPOCH (shiv's fixed default unless set), file modes are normalised and files are written in
sorted order, so two builds from the same tree give the same sha256.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from shiv import __version__ as shiv_version
from shiv import builder
from shiv.bootstrap.environment import Environment
from shiv.constants import BUILD_AT_TIMESTAMP_FORMAT, SOURCE_DATE_EPOCH_DEFAULT, SOURCE_DATE_EPOCH_ENV

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHEBANG = "/usr/bin/env python3"
ENTRY_POINT = "agent.cli:main"


def stage(site_packages: Path) -> None:
    """Pinned pure-Python wheels for 3.9 (so one archive serves 3.9 to 3.13), and our package."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(site_packages),
            "--no-deps",
            "--no-compile",
            "--only-binary=:all:",
            "--implementation",
            "py",
            "--python-version",
            "3.9",
            "--platform",
            "any",
            "--abi",
            "none",
            "-r",
            str(HERE / "requirements.txt"),
        ],
        check=True,
    )
    for source in sorted((REPO / "agent").rglob("*.py")):
        target = site_packages / source.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    for path in site_packages.rglob("*"):
        if path.name == "__pycache__":
            shutil.rmtree(path)
    pth = list(site_packages.rglob("*.pth"))
    if pth:  # pilot_boot.py puts site-packages on sys.path without processing .pth files
        raise SystemExit(f"unexpected .pth files in the bundle: {pth}")
    for path in site_packages.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=REPO / "pilot.pyz")
    output = parser.parse_args().output.resolve()
    timestamp = int(os.environ.get(SOURCE_DATE_EPOCH_ENV, SOURCE_DATE_EPOCH_DEFAULT))
    with tempfile.TemporaryDirectory() as tmp:
        site_packages = Path(tmp, "site-packages")
        stage(site_packages)
        env = Environment(
            built_at=time_string(timestamp),
            shiv_version=shiv_version,
            entry_point=ENTRY_POINT,
            compile_pyc=True,
            reproducible=True,
        )
        shiv_output = Path(tmp, "shiv.pyz")
        builder.create_archive(
            [site_packages], shiv_output, SHEBANG, "_bootstrap:bootstrap", env, compressed=True
        )
        replace_main(shiv_output, output, env.build_id)
    print(f"built {output} ({output.stat().st_size // 1024} KiB, build {env.build_id[:16]})")


def time_string(timestamp: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime(
        BUILD_AT_TIMESTAMP_FORMAT
    )


def replace_main(source: Path, target: Path, build_id: str) -> None:
    """Copy shiv's archive entry by entry, with our __main__ (build/pilot_boot.py) in place of shiv's.

    shiv's own __main__ unpacks into ~/.shiv, usually on NFS on a cluster; ours picks node-local disk and
    starts warm without importing zipfile. shiv's runtime stays inside and does the unpacking.
    """
    boot = (HERE / "pilot_boot.py").read_text().replace("@BUILD_ID@", build_id).encode()
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(source) as old, partial.open("wb") as out:
        out.write(b"#!" + SHEBANG.encode() + b"\n")
        with zipfile.ZipFile(out, "w") as new:
            for info in old.infolist():
                data = boot if info.filename == "__main__.py" else old.read(info)
                new.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    partial.chmod(0o755)
    partial.replace(target)


if __name__ == "__main__":
    main()
