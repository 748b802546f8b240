"""Unpack a tar or zip archive into a folder, refusing any member that would land outside it.

Our own checks, not tarfile's ``filter=`` (missing on older 3.9 and 3.10 patch levels): a member with an
absolute name or a ``..`` part is refused, and so is a member whose path goes through a symbolic link of
the archive. Symbolic links are made last, once every name in the archive is known, and only when they
resolve inside the folder through every other link of the archive. Hard links must name a regular file
seen earlier. Devices and FIFOs are refused. Owners are never changed and modes are normalised (0644, or
0755 for executables and folders), so an archive made by anyone unpacks the same for everyone.

Reading is one pass in order, so a compressed tar is decompressed once.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Optional

ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")
MAX_LINK_HOPS = 40  # as the kernel's limit on nested symbolic links
_CHUNK = 1 << 20
# What damaged data raises while reading (encrypted zip members raise RuntimeError).
_DAMAGED = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, RuntimeError)


class ArchiveError(Exception):
    """An archive that cannot or must not be unpacked; ``member`` names the culprit when there is one."""

    def __init__(self, member: Optional[str], problem: str) -> None:
        self.member = member
        self.problem = problem
        super().__init__(f"archive member {member!r}: {problem}" if member is not None else problem)


def strip_suffix(name: str) -> str:
    """``refdb-v3.tar.gz`` -> ``refdb-v3``: the folder name for an unpacked archive."""
    lower = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class _Plan:
    """What one pass over the archive learned: the names made so far and the links still to make."""

    root: Path
    files: set[PurePosixPath] = field(default_factory=set)
    names: dict[PurePosixPath, str] = field(default_factory=dict)  # every member, as written in the archive
    links: dict[PurePosixPath, str] = field(default_factory=dict)  # symbolic link -> its target
    written: int = 0


def unpack(archive: Path, target: Path) -> int:
    """Unpack ``archive`` into the new folder ``target``; returns the bytes written.

    Raises ArchiveError naming the refused member, or saying why the archive cannot be read. ``target``
    is left half-filled on error: the caller unpacks into a temporary folder and removes it.
    """
    target.mkdir(mode=0o755)
    plan = _Plan(target)
    try:
        if _is_zip(archive):
            with zipfile.ZipFile(archive) as opened:
                _unpack_zip(opened, plan)
        else:
            with tarfile.open(archive, "r:*") as opened:
                _unpack_tar(opened, plan)
                # tarfile stops quietly at a truncated header; reading the stream to its end does not.
                while opened.fileobj is not None and opened.fileobj.read(_CHUNK):
                    pass
    except _DAMAGED as err:
        raise ArchiveError(None, f"cannot read {archive.name} as a tar or zip archive: {err}") from None
    except OSError as err:
        if err.errno is not None:
            raise  # the disk, not the archive: the caller reports it
        raise ArchiveError(None, f"cannot read {archive.name}: {err}") from None  # gzip, bz2: bad data
    _make_links(plan)
    return plan.written


def _is_zip(archive: Path) -> bool:
    if archive.name.lower().endswith(".zip"):
        return True
    if archive.name.lower().endswith(ARCHIVE_SUFFIXES):
        return False
    return zipfile.is_zipfile(archive)


def _unpack_tar(archive: tarfile.TarFile, plan: _Plan) -> None:
    for member in archive:
        path = _checked_name(member.name)
        if path is None:
            continue
        if member.isdir():
            _make_dir(plan, path, member.name)
        elif member.isfile():
            source = archive.extractfile(member)
            assert source is not None
            with source:
                _write_file(plan, path, member.name, source, executable=bool(member.mode & 0o111))
            _set_mtime(plan.root / path, member.mtime)
        elif member.issym():
            _defer_link(plan, path, member.name, member.linkname)
        elif member.islnk():
            _hard_link(plan, path, member.name, member.linkname)
        else:
            raise ArchiveError(member.name, "is a device or FIFO; only files, folders and links are unpacked")


def _unpack_zip(archive: zipfile.ZipFile, plan: _Plan) -> None:
    for info in archive.infolist():
        path = _checked_name(info.filename)
        if path is None:
            continue
        mode = info.external_attr >> 16
        if info.is_dir():
            _make_dir(plan, path, info.filename)
        elif stat.S_ISLNK(mode):
            target = archive.read(info).decode("utf-8", "surrogateescape")
            _defer_link(plan, path, info.filename, target)
        else:
            with archive.open(info) as source:
                _write_file(plan, path, info.filename, source, executable=bool(mode & 0o111))


def _checked_name(name: str) -> Optional[PurePosixPath]:
    """The member's path relative to the folder; None for the folder itself. Refuses escapes."""
    if name.startswith("/"):
        raise ArchiveError(name, "has an absolute path; refused")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(name, "has a '..' in its path and could write outside the folder; refused")
    if "\0" in name:
        raise ArchiveError(name, "has a NUL byte in its name; refused")
    return PurePosixPath(*parts) if parts else None


def _claim(plan: _Plan, path: PurePosixPath, name: str) -> Path:
    """Record ``name`` and make its parent folders; refuses a path through a link of the archive."""
    for parent in path.parents:
        if parent in plan.links:
            raise ArchiveError(name, f"goes through the link {plan.names[parent]!r}; refused")
    plan.names[path] = name
    destination = plan.root / path
    destination.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    return destination


def _make_dir(plan: _Plan, path: PurePosixPath, name: str) -> None:
    if path in plan.links:
        raise ArchiveError(name, "is a folder where the archive also has a link; refused")
    _claim(plan, path, name).mkdir(mode=0o755, exist_ok=True)


def _write_file(plan: _Plan, path: PurePosixPath, name: str, source: IO[bytes], executable: bool) -> None:
    if path in plan.links:
        raise ArchiveError(name, "is a file where the archive also has a link; refused")
    destination = _claim(plan, path, name)
    if destination.is_file():
        destination.unlink()  # a later copy of the same name replaces the earlier one, as tar does
    with destination.open("xb") as out:
        while True:
            data = source.read(_CHUNK)
            if not data:
                break
            out.write(data)
            plan.written += len(data)
    destination.chmod(0o755 if executable else 0o644)
    plan.files.add(path)


def _set_mtime(path: Path, mtime: float) -> None:
    # A timestamp the file system cannot store is not worth refusing the archive for.
    with contextlib.suppress(OSError, OverflowError, ValueError):
        os.utime(path, (mtime, mtime))


def _defer_link(plan: _Plan, path: PurePosixPath, name: str, target: str) -> None:
    """Symbolic links are made after every other member (``_make_links``), once all names are known."""
    if target.startswith("/"):
        raise ArchiveError(name, f"is a link to the absolute path {target!r}; refused")
    if not target or "\0" in target:
        raise ArchiveError(name, "is a link with an empty or invalid target; refused")
    if path in plan.names and path not in plan.links:
        raise ArchiveError(name, "is a link where the archive also has a file or folder; refused")
    _claim(plan, path, name)
    plan.links[path] = target


def _hard_link(plan: _Plan, path: PurePosixPath, name: str, target: str) -> None:
    try:
        source = _checked_name(target)
    except ArchiveError:
        source = None
    if source is None or source not in plan.files:
        raise ArchiveError(name, f"is a hard link to {target!r}, which is not a file seen earlier; refused")
    destination = _claim(plan, path, name)
    if destination.is_file():
        destination.unlink()
    os.link(plan.root / source, destination)
    plan.files.add(path)


def _make_links(plan: _Plan) -> None:
    """Check every member path against every link, then make the links that resolve inside."""
    for path, name in plan.names.items():
        for parent in path.parents:
            if parent in plan.links:
                raise ArchiveError(name, f"goes through the link {plan.names[parent]!r}; refused")
    for path, target in plan.links.items():
        if _resolve(path.parent, target, plan.links) is None:
            raise ArchiveError(plan.names[path], f"is a link to {target!r}, outside the folder; refused")
    for path, target in plan.links.items():
        (plan.root / path).symlink_to(target)


def _resolve(start: PurePosixPath, target: str, links: dict[PurePosixPath, str]) -> Optional[PurePosixPath]:
    """Where ``target``, read in the folder ``start``, leads within the archive's tree, following its
    links as the kernel would; None when it leaves the tree (or loops)."""
    stack: list[str] = list(start.parts)
    pending: list[str] = _parts(target)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(part)
        here = PurePosixPath(*stack)
        if here in links:
            hops += 1
            link_target = links[here]
            if hops > MAX_LINK_HOPS or link_target.startswith("/"):
                return None
            stack.pop()
            pending = _parts(link_target) + pending
    return PurePosixPath(*stack)


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]
