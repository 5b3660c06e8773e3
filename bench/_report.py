"""Shared by the benchmarks: run a command measuring its own peak RSS, and write a section of
BENCHMARKS.md between markers."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_measured(args: list[str], env: dict[str, str], workdir: Path) -> tuple[float, int, str, str, float]:
    """Run a command: wall seconds, the child's own peak RSS (KiB, via wait4), stdout, stderr,
    and its CPU seconds (user + system, via wait4)."""
    out_f = (workdir / "stdout.txt").open("w+b")
    err_f = (workdir / "stderr.txt").open("w+b")
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=out_f, stderr=err_f, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    out_f.seek(0)
    err_f.seek(0)
    out, err = out_f.read().decode(), err_f.read().decode()
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({code}): {err[-2000:]}")
    return wall, usage.ru_maxrss, out, err, usage.ru_utime + usage.ru_stime


def publish(name: str, title: str, lines: list[str], write: bool) -> None:
    """Print a benchmark's figures and, unless told not to, put them in BENCHMARKS.md."""
    table = "\n".join(lines)
    print(table)
    if write:
        write_section(name, title, table)


def write_section(name: str, title: str, table: str) -> None:
    """Replace (or append) the `name` section of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{table}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## {title}\n\n{block}\n"
    path.write_text(text)
