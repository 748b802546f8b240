"""`pilot.pyz report`: the run as one HTML page (``--html``) and as data (``--json``), read from the pool in
one pass over its tokens, page by page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from agent.errors import UsageError
from agent.pools.base import Pool
from agent.views import figures, html


def collect(pool: Pool, now: float) -> figures.Report:
    return figures.build(pool.histories(), now)


def write(path: Path, text: str) -> None:
    """To a temporary name, then renamed: a half-written report never replaces a whole one."""
    temporary = path.with_name(path.name + ".part")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise UsageError(f"report file {path}: {err.strerror}") from None


def run(pool: Pool, now: float, html_file: Optional[Path], json_file: Optional[Path]) -> list[str]:
    """Write what was asked for; the lines to print."""
    if html_file is None and json_file is None:
        raise UsageError("say what to write: --html FILE, --json FILE, or both")
    report = collect(pool, now)
    said = []
    if html_file is not None:
        write(html_file, html.page(report, pool.where))
        said.append(f"wrote {html_file} ({len(report.spans)} attempts of {report.tokens} tokens)")
    if json_file is not None:
        write(json_file, json.dumps(report.as_json(), ensure_ascii=False) + "\n")
        said.append(f"wrote {json_file}")
    return said
