"""The __main__ of pilot.pyz: find or unpack the bundled packages on node-local disk, then run the pilot.

Standard library only, and as little of it as possible: a warm start imports nothing beyond os and sys
before the pilot itself, so it costs little more than the interpreter's own start-up. build/build.py fills
in BUILD_ID (the hash of the bundled files) when it writes this file into the archive.

Where the packages go, first that is set:
  $PILOT_PYZ_ROOT, then $SHIV_ROOT, then $TMPDIR/pilot-pyz-<uid>, then /tmp/pilot-pyz-<uid>.
A folder that already holds this build is used even when read-only (a pre-unpacked software area).
A folder that cannot be written is not fatal: the packages go to a private temporary folder for this run,
with a warning, and that folder is removed at exit.
"""

import os
import sys

BUILD_ID = "@BUILD_ID@"
EXIT_ENVIRONMENT = 8  # agent.errors.ExitCode.ENVIRONMENT


def _root():
    for variable in ("PILOT_PYZ_ROOT", "SHIV_ROOT"):
        if os.environ.get(variable):
            return os.path.expanduser(os.environ[variable])
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", "pilot-pyz-%d" % os.getuid())


def _unpack(target):
    """Unpack into ``target`` with shiv's runtime: look, lock, look again, write to a temporary name,
    rename. Sixteen pilots starting at once on a fresh node unpack once; the others wait on the lock."""
    import pathlib
    import zipfile

    import _bootstrap

    with zipfile.ZipFile(sys.argv[0]) as archive:
        _bootstrap.extract_site_packages(archive, pathlib.Path(target), compile_pyc=True, compile_workers=1)


def _private_copy(root, error):
    import atexit
    import shutil
    import tempfile

    target = tempfile.mkdtemp(prefix="pilot-pyz-")
    atexit.register(shutil.rmtree, target, True)
    sys.stderr.write(
        "pilot.pyz: cannot unpack into %s (%s); using %s for this run only "
        "(set PILOT_PYZ_ROOT to a writable node-local folder)\n" % (root, error, target)
    )
    target = os.path.join(target, "pilot")
    _unpack(target)
    return target


def main():
    root = _root()
    target = os.path.join(root, "pilot-" + BUILD_ID[:16])
    if not os.path.isdir(os.path.join(target, "site-packages")):
        try:
            _unpack(target)
        except OSError as error:
            try:
                target = _private_copy(root, error.strerror or error)
            except OSError as second:
                sys.stderr.write(
                    "pilot.pyz: cannot unpack its packages anywhere: %s; set PILOT_PYZ_ROOT to a writable "
                    "node-local folder (or one where this build is unpacked already)\n" % second
                )
                sys.exit(EXIT_ENVIRONMENT)
    sys.path.insert(0, os.path.join(target, "site-packages"))
    if sys.argv[1:] == ["--version"]:
        # What click's version option prints (tests/test_cli.py holds them to the same line), without
        # importing click and logging: a warm --version then costs about what the interpreter's start does.
        from agent import __version__

        sys.stdout.write("pilot, version %s\n" % __version__)
        return
    from agent.cli import main as pilot_main

    pilot_main()


main()
