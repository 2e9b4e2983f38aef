"""Write one benchmark's results as a section of docs/benchmarks.md, leaving the others alone."""

from __future__ import annotations

import platform
import re
from datetime import date
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Written by the scripts in `benchmarks/` (`make bench`); each section is replaced when its\n"
    "script runs again. Ratios are measured side by side in one run.\n"
)


def machine() -> str:
    """One line naming where the numbers were taken."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    cores = len(__import__("os").sched_getaffinity(0))
    return (
        f"{platform.processor() or platform.machine()}, {cores} cores, {device}; "
        f"torch {torch.__version__}, Python {platform.python_version()}, {date.today().isoformat()}"
    )


def write_section(key: str, title: str, body: str) -> Path:
    """Replace (or append) the section tagged ``key`` in docs/benchmarks.md."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    section = f"{begin}\n## {title}\n\nMachine: {machine()}\n\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)
    return DOC
