"""PURE: a plan's results -> the text of index.html (templates/index.html).

One static page with relative links only: it opens from disk, needs no network and runs
no script. Every piece of user text is escaped (the template environment autoescapes)
and every link percent-encoded.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from ..planning import apispec
from ..planning.plan import Plan
from .imaging import FAILED, MISSING, OK, PICK, REJECT, STALE, Entry
from .pages import render_template


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
    return {
        "fid": "job-" + job.key[:12], "path": job.path, "status": e.pick, "rating": e.rating,
        "ok": ok, "thumb": e.thumb if ok and e.thumb else None, "width": w, "height": h,
        "alt": req.get("prompt", ""), "label": job.label,
        "seed_line": f"seed {job.seed} · {_params(req)}",
        "state": e.state if e.state in (FAILED, MISSING) else FAILED, "reason": e.reason,
    }


def index_html(plan: Plan, entries: Sequence[Entry], sheets: Sequence[str]) -> str:
    """The index page: counts, failures, contact-sheet links, a section per job id; each
    image carries data-path and data-status, and the picks file's decisions are marked."""
    ids: dict[str, list[Entry]] = {}
    for e in entries:
        ids.setdefault(e.job.id, []).append(e)
    sections = []
    for job_id, group in ids.items():
        variants: dict[str, list[Entry]] = {}
        for e in group:
            variants.setdefault(e.job.variant, []).append(e)
        shown = []
        for members in variants.values():
            req = members[0].job.request
            shown.append({
                "head": ", ".join(f"{k}={v}" for k, v in members[0].job.vars),
                "prompt": req.get("prompt", ""), "negative": req.get("negative_prompt"),
                "params": _params(req), "figures": [_figure(e) for e in members],
            })
        sections.append({"id": job_id, "anchor": anchor(job_id), "count": len(group),
                         "variants": shown})
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
    )


__all__ = ["anchor", "href", "index_html"]
