"""Benchmarks: `python -m bench` runs every bench_*.py module and prints one table."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence

#: The keys of every row, in the order the table and bench/results.json show them.
KEYS: tuple[str, ...] = ("bench", "metric", "value", "unit", "target", "ok", "note")


def row(bench: str, metric: str, value: float, unit: str, target: str | None = None,
        ok: bool | None = None, note: str = "") -> dict:
    """One result row with exactly KEYS."""
    return {"bench": bench, "metric": metric, "value": value, "unit": unit,
            "target": target or "", "ok": ok, "note": note}


def run_parts(bench: str, parts: Sequence[Callable[[list[dict]], None]]) -> list[dict]:
    """Each part's rows, side by side; a part that breaks leaves an error row, not a gap."""
    rows: list[dict] = []
    for part in parts:
        try:
            part(rows)
        except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others
            rows.append(row(bench, f"{part.__name__}: error", float("nan"), "", "", False,
                            f"{type(exc).__name__}: {exc}"[:300]))
    return rows


# Linux records a process's peak RSS at exec from the memory of whoever forked it, so a
# child forked straight from this (large) benchmark process reports at least our own RSS:
# /bin/true once measured 214 MB that way. Children whose memory is measured therefore
# start through this small launcher, which forks them from a fresh ~5 MB interpreter and
# reports their peak (with their waited-for children's) from wait4.
_LAUNCHER = r"""
import os, sys
fd = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    if fd >= 0:
        os.close(fd)
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
if fd >= 0:
    os.write(fd, str(usage.ru_maxrss).encode())
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def clean_rss(cmd: list[str], report_fd: int = -1) -> list[str]:
    """`cmd` behind the launcher; its peak RSS in KiB goes to `report_fd` when >= 0."""
    import sys

    return [sys.executable, "-S", "-c", _LAUNCHER, str(report_fd), *cmd]


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB of the largest process, stdout) of one command."""
    read_end, write_end = os.pipe()
    started = time.perf_counter()
    with subprocess.Popen(clean_rss(cmd, write_end), pass_fds=(write_end,),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        os.close(write_end)
        out, err = proc.communicate()
    wall = time.perf_counter() - started
    with os.fdopen(read_end, "rb") as report:
        maxrss_kib = report.read()
    if proc.returncode != 0 or not maxrss_kib:
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}: "
                           f"{(out + err).decode(errors='replace')[-500:]}")
    return wall, int(maxrss_kib) / 1024, out.decode(errors="replace")
