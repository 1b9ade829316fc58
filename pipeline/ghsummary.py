"""A Markdown summary of a run for CI pages (`$GITHUB_STEP_SUMMARY`): counts, failures, sheets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MAX_FAILURES = 50  # listed per manifest; the count says how many there were


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(summaries: Sequence[Mapping[str, Any]]) -> str:
    """The summary of one `run` as Markdown: one table row per manifest, then details."""
    lines = ["## imagebatch", "",
             "| manifest | planned | made | already done | failed | not run | requests | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        lines.append(f"| `{_cell(s['name'])}` | {s['planned']} | {s['succeeded']} | "
                     f"{s['skipped']} | {s['failed']} | {s.get('pending', 0)} | "
                     f"{s['requests']} | {s['seconds']} |")
    for s in summaries:
        root = Path(str(s["out"]))
        sheets = sorted(p.name for p in root.glob("contact-sheet*.png"))
        extras = []
        if sheets:
            extras.append("contact sheets: " + ", ".join(f"`{root / n}`" for n in sheets))
        if (root / "index.html").is_file():
            extras.append(f"index: `{root / 'index.html'}`")
        if extras:
            lines += ["", f"**{_cell(s['name'])}** ({_cell(s['backend'])}): " + "; ".join(extras)]
        if s["failures"]:
            lines += ["", (f"<details><summary>{len(s['failures'])} failed job(s) of "
                           f"{_cell(s['name'])}</summary>"), "",
                      "| path | reason |", "| --- | --- |"]
            for f in s["failures"][:MAX_FAILURES]:
                lines.append(f"| `{_cell(f['path'])}` | {_cell(f['reason'])} |")
            if len(s["failures"]) > MAX_FAILURES:
                lines.append(f"| ... | {len(s['failures']) - MAX_FAILURES} more |")
            lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def write_step_summary(summaries: Sequence[Mapping[str, Any]], env: Mapping[str, str]) -> bool:
    """Append the Markdown summary to $GITHUB_STEP_SUMMARY when it is set; True if written."""
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target or not summaries:
        return False
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown(summaries))
    except OSError:
        return False  # a CI nicety; never fail a finished run over it
    return True
