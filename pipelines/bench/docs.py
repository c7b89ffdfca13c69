"""Figures written into the docs by the command that measured them.

A doc marks a table's place with `<!-- figures: COMMAND -->` ... `<!-- /figures -->`;
`socialstream bench NAME --docs FILE` replaces what lies between the markers whose
command is the one being run (its name and options as typed, `--docs` and `--json` left
out) with the figures and a line saying when, on what machine and at what commit they
were measured. A file without that block gets it appended, so a first run places it."""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream.errors import UserError

END = "<!-- /figures -->"


def start_of(command: str) -> str:
    """The marker that opens `command`'s block."""
    return f"<!-- figures: {command} -->"


QUIET = re.compile(r"^(--json|--docs=.*|-v+|--verbose)$")
"""Options that change what is printed or where figures go, not what is measured."""


def command_of(argv: list[str]) -> str:
    """`socialstream ARGS` as typed, less the options that do not change the figures: the
    key of a doc's block, so type a command the same way each time."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--docs":
            skip = True
        elif not QUIET.match(arg):
            kept.append(arg)
    return "socialstream " + shlex.join(kept)


def machine() -> str:
    """The CPU (model, cores), memory and whether it computes bfloat16 natively: what the
    figures depend on."""
    model = platform.processor() or platform.machine()
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
        model = found.group(1).strip() if found else model
        found = re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)
        flags = found.group(1) if found else ""
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        pass
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}, {cores} cores{memory}, "
            f"{'with' if bf16 else 'without'} native bfloat16")


def _commit() -> str:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def block(command: str, rows: dict[str, Any], when: datetime | None = None) -> str:
    when = when or datetime.now(UTC)
    lines = [start_of(command),
             f"`{command}` on {machine()}, commit {_commit()}, "
             f"{when:%Y-%m-%d %H:%M} UTC:", "",
             "| figure | value |", "| --- | ---: |"]
    for key, value in rows.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    lines.append(END)
    return "\n".join(lines)


def check_doc(path: Path, command: str) -> str:
    """The doc's text, checked before a benchmark runs (an hour's soak must not end in a
    doc it cannot write): readable, its folder there, the command's block closed."""
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--docs {path}: cannot read it ({exc}); give a Markdown file") from exc
    if not path.parent.is_dir():
        raise UserError(f"--docs {path}: there is no folder {path.parent}")
    start = start_of(command)
    if start in text and END not in text.split(start, 1)[1]:
        raise UserError(f"--docs {path}: the block for `{command}` has no {END}; "
                        f"close it and run again")
    return text


def write_figures(path: Path, command: str, rows: dict[str, Any]) -> None:
    """Replace the block of `command` in the doc at `path` (append one if it has none)."""
    text = check_doc(path, command)
    start = start_of(command)
    new = block(command, rows)
    if start in text:
        head, rest = text.split(start, 1)
        text = head + new + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + new + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"--docs {path}: cannot write it ({exc})") from exc
