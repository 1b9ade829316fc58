"""PURE: a plan's results -> the text of index.html (templates/index.html).

One static page with relative links only: it opens from disk, needs no network and runs
no script. Every piece of user text is escaped (the template environment autoescapes)
and every link percent-encoded.
"""

from __future__ import annotations

import html
import math
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..planning import apispec
from ..planning.plan import Plan
from ..storage.picks import picks_path
from .imaging import (
    FAILED,
    MISSING,
    OK,
    PICK,
    REJECT,
    STALE,
    Entry,
    grid_blocks,
)
from .pages import render_template

#: The most columns a job's grid has on the page before it wraps into bands.
INDEX_COLUMNS = 6


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def href(path: str) -> str:
    """A relative POSIX path as an escaped, percent-encoded URL for an attribute."""
    return _e(quote(path, safe="/"))


def anchor(text: str) -> str:
    """An id attribute value made from any text (stable, safe, unique per text)."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in text)
    return "s-" + out.strip("-")[:60] + "-" + format(sum(map(ord, text)) % 65536, "x")


def _params(request: dict[str, Any]) -> str:
    """'16:9 (1344x768) · png' for a request."""
    size = apispec.pixel_size(request)
    ratio = request.get("aspect_ratio") or apispec.SIZE_ASPECTS.get(f"{size[0]}x{size[1]}", "")
    fmt = apispec.image_format(request)
    return " · ".join(p for p in (ratio, f"{size[0]}×{size[1]}", fmt) if p)


def _figure(e: Entry) -> dict[str, Any]:
    job = e.job
    req = job.request
    ok = e.state == OK
    w, h = e.thumb_size or (0, 0)
    rw, rh = e.thumb_size or apispec.pixel_size(req)  # a cell without a picture keeps its shape
    return {
        "fid": "job-" + job.key[:12], "path": job.path, "status": e.pick, "rating": e.rating,
        "ok": ok, "thumb": e.thumb if ok and e.thumb else None, "width": w, "height": h,
        "ratio": f"{rw} / {rh}", "alt": req.get("prompt", ""), "label": job.label,
        "seed": job.seed, "column": None, "seed_in_header": False, "prompt": req.get("prompt", ""),
        "negative": req.get("negative_prompt"), "params": _params(req),
        "state": e.state if e.state in (FAILED, MISSING) else FAILED, "reason": e.reason,
    }


def _shared(members: Sequence[Entry], value: Callable[[Entry], str | None]) -> str | None:
    """The value every entry of a row has, or None when they differ."""
    values = {value(e) for e in members}
    return values.pop() if len(values) == 1 else None


def _row(members: Sequence[Entry | None], columns: Sequence[str], seeds: bool
         ) -> dict[str, Any]:
    """A row of a job's grid: its heading and what its pictures share, then its cells.

    A seed sweep's row is a variant (all its variables); a matrix's row is all but the last
    variable, which runs across. What differs along the row (a matrix's prompts, sizes) is
    shown under each picture instead.
    """
    present = [e for e in members if e is not None]
    first = present[0].job
    shown_vars = first.vars if seeds else first.vars[:-1]
    prompt = _shared(present, lambda e: e.job.request.get("prompt", ""))
    negative = _shared(present, lambda e: e.job.request.get("negative_prompt"))
    params = _shared(present, lambda e: _params(e.job.request))
    cells: list[dict[str, Any] | None] = []
    for e, column in zip(members, columns, strict=True):
        if e is None:
            cells.append(None)
            continue
        fig = _figure(e)
        if prompt is not None:
            fig["prompt"] = None
        if negative is not None:
            fig["negative"] = None
        if params is not None:
            fig["params"] = None
        # what the column header says, repeated under the picture only where the grid
        # wraps and the headers are gone (phones): the seed, or a matrix's last value
        fig["seed_in_header"] = seeds
        fig["column"] = None if seeds else column
        cells.append(fig)
    return {"head": ", ".join(f"{k}={v}" for k, v in shown_vars), "prompt": prompt,
            "negative": negative, "params": params, "cells": cells}


def _blocks(group: Sequence[Entry]) -> list[dict[str, Any]]:
    """One job's entries laid out as its contact sheet does (imaging.grid_blocks): variants
    down and seeds across, or a matrix's last variable across; a lone image on its own."""
    out: list[dict[str, Any]] = []
    for block in grid_blocks(group):
        if not block.columns:
            out.append({"columns": [], "figures": [
                _figure(e) for _, cells in block.rows for e in cells if e is not None]})
            continue
        present = [e for _, cells in block.rows for e in cells if e is not None]
        # seeds across (a seed sweep: columns #7, #8), or a matrix's last variable
        seeds = all(block.columns[i] == f"#{e.job.seed}"
                    for _, cells in block.rows for i, e in enumerate(cells) if e is not None)
        corner = "seed" if seeds else present[0].job.vars[-1][0]
        # Many columns wrap into bands of about equal width, headers repeated, as on the
        # sheet: sixteen seeds are three bands of six or fewer, not a strip of thumbnails.
        n = len(block.columns)
        per = math.ceil(n / math.ceil(n / INDEX_COLUMNS))
        for start in range(0, n, per):
            columns = block.columns[start:start + per]
            rows = [_row(cells[start:start + per], columns, seeds) for _, cells in block.rows
                    if any(e is not None for e in cells[start:start + per])]
            # every band as many tracks wide as the first: the columns line up down the job
            out.append({"columns": list(columns), "corner": corner, "rows": rows, "span": per})
    return out


def _commands(plan: Plan, out: Path | None, picks_file: Path | None) -> dict[str, str]:
    """The commands that review and export these images, as a user types them: with
    --out and --picks when they are not the defaults."""
    extra = f" --out {shlex.quote(str(out))}" if out is not None and out != Path("outputs") else ""
    default = picks_path(plan.source)
    if picks_file is not None and Path(picks_file) != default:
        extra += f" --picks {shlex.quote(str(picks_file))}"
    manifest = shlex.quote(plan.source)
    return {"review": f"imagebatch review {manifest}{extra}",
            "export": f"imagebatch export {manifest}{extra}",
            "picks": str(picks_file if picks_file is not None else default)}


def index_html(plan: Plan, entries: Sequence[Entry], sheets: Sequence[str],
               out: Path | None = None, picks_file: Path | None = None) -> str:
    """The index page: counts, the commands that come next, contact-sheet links, a section
    per job id laid out as the contact sheet (variants down, seeds across); each image
    carries data-path and data-status, and the picks file's decisions are marked. A job
    whose prompts were written from a brief (Plan.briefs) has it under its heading.
    `out` is the outputs folder and `picks_file` the picks file, named in the commands
    when they are not the defaults."""
    ids: dict[str, list[Entry]] = {}
    for e in entries:
        ids.setdefault(e.job.id, []).append(e)
    briefs = dict(plan.briefs)
    sections = [{"id": job_id, "anchor": anchor(job_id), "count": len(group),
                 "brief": briefs.get(job_id, ""), "blocks": _blocks(group)}
                for job_id, group in ids.items()]
    failed = [{"fid": "job-" + e.job.key[:12], "path": e.job.path, "reason": e.reason}
              for e in entries if e.state == FAILED]
    marks = [e.pick for e in entries]
    return render_template(
        "index.html", plan=plan, sections=sections, sheets=list(sheets), failed=failed,
        title=f"{plan.name} — {len(entries)} image{'s' if len(entries) != 1 else ''}",
        total=len(entries), ok=sum(e.state == OK for e in entries),
        missing=sum(e.state == MISSING for e in entries),
        decided=any(marks) or any(e.rating is not None for e in entries),
        picked=marks.count(PICK), rejected=marks.count(REJECT), stale=marks.count(STALE),
        rated=sum(e.rating is not None for e in entries),
        commands=_commands(plan, out, picks_file),
    )


__all__ = ["anchor", "href", "index_html"]
