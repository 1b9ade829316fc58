"""PURE: a plan's results -> the text of index.html.

One static page with relative links only: it opens from disk, needs no network and runs
no script. Every piece of user text is escaped and every link percent-encoded.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from urllib.parse import quote

from pipeline import apispec
from pipeline.imaging import FAILED, MISSING, OK, Entry
from pipeline.plan import Plan

CSS = """
:root { --cell: 220px; color-scheme: light dark; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
  sans-serif; background: #fafafa; color: #1a1a1a; }
@media (prefers-color-scheme: dark) { body { background: #161616; color: #e8e8e8; }
  figure, .job { background: #222 !important; border-color: #333 !important; }
  .meta, .muted { color: #aaa !important; } a { color: #8ab4f8; } }
header h1 { margin: 0 0 4px; font-size: 1.5rem; word-break: break-word; }
.counts { margin: 4px 0 12px; }
.counts b { font-variant-numeric: tabular-nums; }
nav ul, .sheets { display: flex; flex-wrap: wrap; gap: 6px 14px; padding: 0; margin: 8px 0;
  list-style: none; }
.failures { background: #fde8e8; color: #7a1010; border-radius: 6px; padding: 8px 12px;
  margin: 12px 0; }
.failures li { word-break: break-word; }
section.job { margin: 24px 0; }
section.job > h2 { font-size: 1.25rem; margin: 0 0 8px; border-bottom: 1px solid #ccc;
  word-break: break-word; }
.variant { margin: 12px 0 20px; }
.variant h3 { font-size: 1rem; margin: 0 0 2px; }
.prompt { margin: 2px 0; white-space: pre-wrap; word-break: break-word; }
.meta, .muted { color: #555; font-size: .9em; }
.grid { display: grid; gap: 12px;
  grid-template-columns: repeat(auto-fill, minmax(min(100%, var(--cell)), 1fr)); }
figure { margin: 0; background: #fff; border: 1px solid #e2e2e2; border-radius: 6px;
  padding: 6px; display: flex; flex-direction: column; }
figure a.pic { display: flex; align-items: center; justify-content: center;
  aspect-ratio: 1 / 1; background: #eee; border-radius: 4px; overflow: hidden; }
figure img { display: block; max-width: 100%; max-height: 100%; width: auto; height: auto; }
figure .none { display: flex; align-items: center; justify-content: center; text-align: center;
  aspect-ratio: 1 / 1; border-radius: 4px; padding: 8px; word-break: break-word;
  background: repeating-linear-gradient(45deg, #e4e4e4 0 8px, #d6d6d6 8px 16px); color: #555; }
figure .none.failed { background: repeating-linear-gradient(45deg, #fbe3e3 0 8px,
  #f3cccc 8px 16px); color: #8a1414; }
figcaption { margin-top: 6px; font-size: .9em; word-break: break-word; }
@media (max-width: 480px) { body { padding: 10px; } :root { --cell: 150px; } }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def href(path: str) -> str:
    """A relative POSIX path as an escaped, percent-encoded URL for an attribute."""
    return _e(quote(path, safe="/"))


def anchor(text: str) -> str:
    """An id attribute value made from any text (stable, safe, unique per text)."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in text)
    return "s-" + out.strip("-")[:60] + "-" + format(sum(map(ord, text)) % 65536, "x")


def _params(request: dict) -> str:
    """'16:9 (1344x768) · png' for a request."""
    size = apispec.pixel_size(request)
    ratio = request.get("aspect_ratio") or apispec.SIZE_ASPECTS.get(f"{size[0]}x{size[1]}", "")
    fmt = apispec.image_format(request)
    return " · ".join(p for p in (ratio, f"{size[0]}×{size[1]}", fmt) if p)


def _figure(e: Entry) -> str:
    job = e.job
    req = job.request
    seed_line = f"seed {job.seed} · {_params(req)}"
    alt = req.get("prompt", "")
    if e.state == OK and e.thumb:
        w, h = e.thumb_size or (0, 0)
        dims = f' width="{w}" height="{h}"' if w and h else ""
        pic = (f'<a class="pic" href="{href("images/" + job.path)}">'
               f'<img src="{href(e.thumb)}" loading="lazy"{dims} alt="{_e(alt)}"></a>')
    else:
        state = e.state if e.state in (FAILED, MISSING) else FAILED
        why = f": {_e(e.reason)}" if e.reason else ""
        pic = f'<div class="none {state}"><span><b>{state}</b>{why}</span></div>'
    return (f'<figure id="{_e("job-" + job.key[:12])}">{pic}<figcaption>'
            f'<div>{_e(job.label)}</div><div class="meta">{_e(seed_line)}</div>'
            + (f'<div class="meta"><a href="{href("images/" + job.path)}">{_e(job.path)}</a></div>'
               if e.state == OK else f'<div class="meta">{_e(job.path)}</div>')
            + "</figcaption></figure>")


def index_html(plan: Plan, entries: Sequence[Entry], sheets: Sequence[str]) -> str:
    """The index page: counts, failures, contact-sheet links, a section per job id."""
    ok = sum(e.state == OK for e in entries)
    failed = [e for e in entries if e.state == FAILED]
    missing = sum(e.state == MISSING for e in entries)
    title = f"{plan.name} — {len(entries)} image{'s' if len(entries) != 1 else ''}"
    out: list[str] = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No network, no scripts: the page must work as a file and can run nothing.
        ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
         "img-src 'self' file: data:; style-src 'unsafe-inline'\">"),
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{_e(plan.name)}</h1>",
        f'<p class="counts"><b>{len(entries)}</b> images: <b>{ok}</b> done, '
        f"<b>{len(failed)}</b> failed, <b>{missing}</b> not made yet"
        f'<span class="muted"> · model {_e(plan.model)} · manifest {_e(plan.source)}'
        + (f" · shard {plan.shard[0]}/{plan.shard[1]}" if plan.shard else "")
        + "</span></p>",
    ]
    if sheets:
        links = "".join(f'<li><a href="{href(s)}">{_e(s)}</a></li>' for s in sheets)
        out.append(f'<div>Contact sheets: <ul class="sheets">{links}</ul></div>')
    ids: dict[str, list[Entry]] = {}
    for e in entries:
        ids.setdefault(e.job.id, []).append(e)
    if len(ids) > 1:
        links = "".join(f'<li><a href="#{_e(anchor(i))}">{_e(i)}</a> '
                        f'<span class="muted">({len(es)})</span></li>' for i, es in ids.items())
        out.append(f"<nav><ul>{links}</ul></nav>")
    if failed:
        items = "".join(
            f'<li><a href="#{_e("job-" + e.job.key[:12])}">{_e(e.job.path)}</a>: '
            f"{_e(e.reason or 'failed')}</li>" for e in failed)
        out.append(f'<section class="failures"><b>Failed</b><ul>{items}</ul></section>')
    out.append("</header><main>")
    for job_id, group in ids.items():
        out.append(f'<section class="job" id="{_e(anchor(job_id))}"><h2>{_e(job_id)}</h2>')
        variants: dict[str, list[Entry]] = {}
        for e in group:
            variants.setdefault(e.job.variant, []).append(e)
        for members in variants.values():
            req = members[0].job.request
            head = ", ".join(f"{k}={v}" for k, v in members[0].job.vars)
            out.append('<div class="variant">')
            if head:
                out.append(f"<h3>{_e(head)}</h3>")
            out.append(f'<p class="prompt">{_e(req.get("prompt", ""))}</p>')
            neg = req.get("negative_prompt")
            if neg:
                out.append(f'<p class="prompt meta">negative: {_e(neg)}</p>')
            out.append(f'<p class="meta">{_e(_params(req))}</p><div class="grid">')
            out.extend(_figure(e) for e in members)
            out.append("</div></div>")
        out.append("</section>")
    out.append("</main></body></html>\n")
    return "\n".join(out)


__all__ = ["CSS", "anchor", "href", "index_html"]
