"""Headless Chromium (Debian's `chromium`) for the tests of pages pilot.pyz writes: load a file with the
network cut off, dump the DOM as the browser built it, take a screenshot. A fresh profile each time."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Optional

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # No network: every host name fails to resolve and every connection goes to a closed port.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed: run `make test-deps` (tests/setup/install-chromium.sh)")
    return found


def run(page: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def dump_dom(page: Path) -> str:
    result = run(page, "--dump-dom")
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-2000:]
    return result.stdout


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 2600) -> tuple[int, int]:
    """Take a screenshot; returns the PNG's width and height, read from its header."""
    result = run(page, f"--screenshot={png}", f"--window-size={width},{height}", "--hide-scrollbars")
    assert result.returncode == 0 and png.exists(), result.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


class Elements(HTMLParser):
    """Every element of a document as (tag, attributes), and the text inside elements with an id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, Optional[str]]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def find(self, tag: str, **wanted: str) -> list[dict[str, Optional[str]]]:
        """Elements with this tag whose attributes have these values (class_ for class)."""
        wanted = {key.rstrip("_").replace("_", "-"): value for key, value in wanted.items()}
        return [
            attrs
            for name, attrs in self.elements
            if name == tag and all(attrs.get(key) == value for key, value in wanted.items())
        ]

    def by_id(self, element_id: str) -> dict[str, Optional[str]]:
        (found,) = [attrs for _, attrs in self.elements if attrs.get("id") == element_id]
        return found
