"""`imagebatch review`: a local page to pick, reject and rate a manifest's images.

An aiohttp app on loopback serves one page (Jinja2, autoescaped), its script and style
(files of this package, no outside URLs), the output folder's images and thumbnails, and a
small JSON API over the picks file (imagebatch.storage.picks); besides the picks file it
writes only "More like this"'s copy of an image beside the manifest (assets.variations).
Every request needs the random token the URL carries, a Host naming this server and, when
the browser sends one, an Origin of this server: a page elsewhere cannot read or change
anything, DNS rebinding included.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import os
import secrets
import sys
import webbrowser
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import jinja2
from aiohttp import web

from ..errors import StoreError, UsageError
from ..pictures import imaging
from ..pictures.imaging import OK, Entry
from ..pictures.post import entries_for, make_thumb, thumb_rel
from ..planning import apispec, config
from ..planning.plan import Job, Plan
from ..planning.select import ALL, Selection, narrow_all
from ..signals import on_stop_signals
from ..storage import picks
from ..storage.store import IMAGES, write_error
from .variations import InputExists, input_path, save_input, variation_snippet

#: Request bodies of the API are a few dozen bytes; anything far larger is not ours.
MAX_BODY_BYTES = 16 * 1024
#: How long the first of a burst of changes waits for the others to join its write: a
#: burst (several tabs, a script) costs one write of the picks file instead of several.
GATHER_SECONDS = 0.004
#: Files the page may load from the output folder: images and nothing a browser would run.
SERVED_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                   ".webp": "image/webp", ".avif": "image/avif", ".gif": "image/gif"}
STATIC = {"review.js": "text/javascript", "review.css": "text/css",
          "favicon.svg": "image/svg+xml"}
#: Only our own script, style, images and API: nothing inline, nothing from elsewhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


# ---------------------------------------------------------------------------------------
# What the page and the API show


@dataclass(frozen=True, slots=True)
class Cell:
    """One image of the page: what its element shows and carries."""

    path: str
    status: str  # pick | reject | stale | "" (data-status)
    rating: int | None
    state: str  # ok | failed | missing
    reason: str
    label: str  # the caption: its column (seed, last variable) or the job's label
    title: str  # the job's label, for alt text and tooltips
    thumb: str  # URL of the thumbnail (or the image when thumbnails are off)
    width: int  # thumbnail size from the request alone: the layout does not jump
    height: int


@dataclass(frozen=True, slots=True)
class Row:
    """A row of the grid: a variant (seed sweeps) or all but the last variable (matrices)."""

    head: str
    prompt: str  # the prompt when every image of the row shares it, else ""
    cells: tuple[Cell | None, ...]  # None keeps a column free where a job is absent


@dataclass(frozen=True, slots=True)
class Block:
    """Rows that share their columns (imaging.grid_blocks); a job written from a brief is
    a block of its own, headed by its brief."""

    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    job: str = ""  # the job of `brief`
    brief: str = ""  # the brief its prompts were written from, or ""


def image_url(path: str) -> str:
    """The URL (without token) of an image under images/."""
    return "/files/" + quote(f"{IMAGES}/{path}", safe="/")


def thumb_url(path: str) -> str:
    """The URL (without token) of an image's thumbnail, made on demand when missing."""
    return "/thumb/" + quote(path, safe="/")


@dataclass
class Review:
    """One reviewed manifest: plan, output folder, picks file and the server's identity."""

    plan: Plan
    root: Path
    picks_file: Path
    manifest: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    hosts: set[str] = field(default_factory=set)  # Host header values of this server
    any_ip_host: bool = False  # listening on every address: any IP literal may name us
    port: int = 0
    # the backends whose images count as done, as `status` judges; None: any backend
    backends: frozenset[str] | None = None
    # the jobs shown (--only, --first-seeds); None: every job. Picks are the whole plan's.
    shown: Plan | None = None

    @property
    def view(self) -> Plan:
        """The plan narrowed to the jobs the page shows."""
        return self.shown if self.shown is not None else self.plan

    def __post_init__(self) -> None:
        self.jobs: dict[str, Job] = {j.path: j for j in self.plan.jobs}
        self.writer = _Writer(self)
        self.thumb_side = self.plan.output.thumbnail

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> picks.Picks:
        """The picks file as it is now; PicksError when broken or naming unplanned images."""
        return picks.load_picks(self.picks_file, self.plan)

    def is_stale(self, current: picks.Picks, path: str) -> bool:
        """Whether the entry for `path` was made on another picture than the plan's."""
        return current.is_stale(path, self.plan)

    def entry_doc(self, current: picks.Picks, path: str) -> dict[str, Any]:
        """{"path", "key", "status", "rating", "stale"}: one entry as the API answers it."""
        entry = current.entries.get(path)
        return {"path": path, "key": entry.key if entry else self.jobs[path].key,
                "status": entry.status if entry else None,
                "rating": entry.rating if entry else None,
                "stale": self.is_stale(current, path)}

    def items(self, current: picks.Picks) -> list[dict[str, Any]]:
        """GET /api/items: every planned image with its decision, in plan order."""
        out = []
        for e in entries_for(self.view, self.root, self.backends):
            job = e.job
            entry = current.entries.get(job.path)
            out.append({
                "path": job.path, "key": job.key,
                "status": entry.status if entry else None,
                "rating": entry.rating if entry else None,
                "stale": self.is_stale(current, job.path),
                "thumb": thumb_url(job.path) if e.state == OK else None,
                "image": image_url(job.path) if e.state == OK else None,
                "request": job.request, "vars": dict(job.vars), "seed": job.seed,
                "id": job.id, "label": job.label, "state": e.state, "reason": e.reason,
                "params": params_text(job.request),
            })
        return out

    def blocks(self, current: picks.Picks, entries: list[Entry]) -> list[Block]:
        """The page's grid: the contact sheet's blocks with each cell's state and URLs."""
        side = self.thumb_side if self.thumb_side > 0 else imaging.SHEET_BOX
        out = []
        for block in imaging.grid_blocks(entries, dict(self.plan.briefs)):
            rows = []
            for head, members in block.rows:
                cells: list[Cell | None] = []
                for col, e in enumerate(members):
                    if e is None:
                        cells.append(None)
                        continue
                    job = e.job
                    entry = current.entries.get(job.path)
                    w, h = imaging.thumb_size(job, side)
                    cells.append(Cell(
                        path=job.path,
                        status=current.status_of(job.path, self.plan),
                        rating=entry.rating if entry else None, state=e.state,
                        reason=e.reason or "", title=job.label,
                        label=block.columns[col] if block.columns else job.label,
                        thumb=thumb_url(job.path) if self.thumb_side > 0 else image_url(job.path),
                        width=w, height=h))
                prompts = {e.job.request.get("prompt", "") for e in members if e is not None}
                rows.append(Row(head or group_title(members), prompts.pop()
                                if len(prompts) == 1 else "", tuple(cells)))
            out.append(Block(block.columns, tuple(rows), block.job, block.brief))
        return out


def group_title(members: Sequence[Entry | None], most: int = 3) -> str:
    """The heading of a group the grid gives none (single images side by side): the job
    ids it holds, `most` of them named (`mushrooms`, `a, b, c and 4 more`)."""
    ids = list(dict.fromkeys(e.job.id for e in members if e is not None))
    named = ", ".join(ids[:most])
    return f"{named} and {len(ids) - most} more" if len(ids) > most else named


def params_text(request: Mapping[str, Any]) -> str:
    """'3:2 · 1216×832 · png' for a request."""
    w, h = apispec.pixel_size(dict(request))
    ratio = request.get("aspect_ratio") or apispec.SIZE_ASPECTS.get(f"{w}x{h}", "")
    return " · ".join(p for p in (ratio, f"{w}×{h}", apispec.image_format(dict(request))) if p)


# ---------------------------------------------------------------------------------------
# Writing: every change goes through picks.update_picks (its lock, the file as it is now)


class BadChange(ValueError):
    """A PUT body that is not a change of status and/or rating."""


def parse_change(body: Any) -> dict[str, Any]:
    """The fields a PUT body sets: {"status"?, "rating"?}; BadChange naming what is wrong."""
    if not isinstance(body, dict):
        raise BadChange('the body must be a JSON object such as {"status": "pick", "rating": 4}')
    unknown = sorted(set(body) - {"status", "rating"})
    if unknown:
        raise BadChange(f"unknown field(s) {', '.join(map(repr, unknown))}; "
                        "only 'status' and 'rating'")
    if not body:
        raise BadChange("nothing to change: give 'status', 'rating' or both")
    if "status" in body and body["status"] not in (picks.PICK, picks.REJECT, None):
        raise BadChange(f"'status' must be \"pick\", \"reject\" or null; got "
                        f"{json.dumps(body['status'])[:40]}")
    if "rating" in body:
        r = body["rating"]
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 5):
            raise BadChange(f"'rating' must be a whole number from 1 to 5 or null; got "
                            f"{json.dumps(r)[:40]}")
    return dict(body)


class _Writer:
    """Applies PUTs to the picks file, those arriving together in one update_picks call.

    One write of a large picks file costs a few milliseconds (it is re-read, checked and
    written whole under the lock); changes that arrive within GATHER_SECONDS of each other,
    or while a write is under way, go out together, so twenty at once cost one or two
    writes, not twenty. A change names only the fields it sets: the other is picks.KEEP,
    read by update_picks from the file as it is now, under its lock.
    """

    def __init__(self, review: Review) -> None:
        self.review = review
        self.pending: list[tuple[str, dict[str, Any], asyncio.Future[picks.Picks]]] = []
        self.task: asyncio.Task[None] | None = None

    async def submit(self, path: str, change: dict[str, Any]) -> picks.Picks:
        """Queue one change; the picks as written with it (PicksError/StoreError/OSError)."""
        fut: asyncio.Future[picks.Picks] = asyncio.get_running_loop().create_future()
        self.pending.append((path, change, fut))
        if self.task is None:
            self.task = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(GATHER_SECONDS)
            while self.pending:
                batch, self.pending = self.pending, []
                changes = merge_changes([(p, c) for p, c, _ in batch])
                try:
                    result = await asyncio.to_thread(
                        picks.update_picks, self.review.picks_file, self.review.plan, changes)
                except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_result(result)
        finally:
            self.task = None


def merge_changes(batch: list[tuple[str, dict[str, Any]]]) -> dict[str, picks.Change]:
    """PUT bodies in arrival order -> update_picks changes: the later field wins, a field
    no body set is KEEP, and status and rating both null clear the entry."""
    merged: dict[str, tuple[Any, Any]] = {}
    for path, change in batch:
        status, rating = merged.get(path, (picks.KEEP, picks.KEEP))
        merged[path] = (change.get("status", status), change.get("rating", rating))
    return {p: (None if s is None and r is None else (s, r)) for p, (s, r) in merged.items()}


# ---------------------------------------------------------------------------------------
# The app


REVIEW_KEY = web.AppKey("imagebatch_review", Review)
_JINJA = jinja2.Environment(
    loader=jinja2.PackageLoader("imagebatch", "templates"), autoescape=True,
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _host_allowed(review: Review, host: str | None) -> bool:
    """Host names this server: one of its own names with its port (never a DNS name an
    attacker's page could point here), or any IP literal when listening on every address."""
    if not host:
        return False
    if host.lower() in review.hosts:
        return True
    if not review.any_ip_host:
        return False
    name, _, port = host.rpartition(":")
    if port != str(review.port):
        return False
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name.strip("[]"))
        return True
    return False


def _token_ok(review: Review, request: web.Request) -> bool:
    given = request.query.get("token")
    if given is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else ""
    # compare_digest: the time taken does not tell how much of a guess was right
    return hmac.compare_digest(given.encode("utf-8", "replace"), review.token.encode())


@web.middleware
async def _guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Host, Origin and token before anything else; 403 without saying which was wrong
    beyond what the user can fix."""
    review = request.app[REVIEW_KEY]
    host = request.headers.get("Host")
    if not _host_allowed(review, host):
        return _error(403, "this server answers only to its own address (Host refused)")
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() != f"http://{host}".lower():
        return _error(403, "requests from other sites are refused (Origin)")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return _error(403, "requests from other sites are refused")
    if not _token_ok(review, request):
        return _error(403, "open the URL `imagebatch review` printed: it carries the token")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer: no sniffing, no referrer, no framing, our CSP; no caching of data."""
    h = response.headers
    h["Content-Security-Policy"] = CSP
    h["X-Content-Type-Options"] = "nosniff"
    h["Referrer-Policy"] = "no-referrer"
    h["X-Frame-Options"] = "DENY"
    h["Cross-Origin-Resource-Policy"] = "same-origin"
    if request.path.startswith(("/files/", "/thumb/")) and response.status == 200:
        h.setdefault("Cache-Control", "private, no-cache")  # revalidated: files change
    else:
        h["Cache-Control"] = "no-store"


def render_page(review: Review) -> str:
    """The review page's HTML as things are on disk now."""
    problem = ""
    try:
        current = review.load()
    except picks.PicksError as exc:
        problem = f"The picks file cannot be read, so nothing can be saved: {exc}"
        current = picks.make_picks(review.plan.name, {})
    entries = entries_for(review.view, review.root, review.backends)
    return _JINJA.get_template("review.html").render(
        name=review.plan.name, manifest=review.manifest, root=str(review.root),
        picks_file=str(review.picks_file), token=review.token,
        blocks=review.blocks(current, entries), total=len(entries),
        ok=sum(e.state == OK for e in entries), problem=problem,
        counts=picks.counts(current, review.plan))


async def page(request: web.Request) -> web.StreamResponse:
    """GET /: the review page (made in a thread: 5,000 images take a while)."""
    html = await asyncio.to_thread(render_page, request.app[REVIEW_KEY])
    return web.Response(text=html, content_type="text/html", charset="utf-8")


async def static(request: web.Request) -> web.StreamResponse:
    """GET /static/review.js|css: the page's script and style, files of this package."""
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound(reason="no such file")
    data = (resources.files("imagebatch") / "templates" / name).read_bytes()
    return web.Response(body=data, content_type=STATIC[name], charset="utf-8")


async def api_items(request: web.Request) -> web.StreamResponse:
    """GET /api/items."""
    review = request.app[REVIEW_KEY]
    try:
        current = await asyncio.to_thread(review.load)
    except picks.PicksError as exc:
        return _error(409, f"the picks file cannot be read: {exc}")
    items = await asyncio.to_thread(review.items, current)
    return web.json_response(items, dumps=lambda d: json.dumps(d, ensure_ascii=False))


async def api_put(request: web.Request) -> web.StreamResponse:
    """PUT /api/picks/{path}: change one image's status and/or rating."""
    review = request.app[REVIEW_KEY]
    path = request.match_info["path"]
    if path not in review.jobs:
        return _error(404, f"{path!r} is not an image of the plan {review.plan.name!r}")
    try:
        raw = await request.read()
        change = parse_change(json.loads(raw.decode("utf-8")))
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"the body is over {MAX_BODY_BYTES} bytes")
    except (UnicodeDecodeError, ValueError) as exc:
        message = str(exc) if isinstance(exc, BadChange) else "the body is not valid JSON"
        return _error(400, message)
    try:
        written = await review.writer.submit(path, change)
    except picks.PicksError as exc:
        return _error(409, f"not saved: {exc}")
    except (StoreError, OSError) as exc:
        return _error(500, f"not saved: {exc}")
    return web.json_response(review.entry_doc(written, path))


def more_like_this(review: Review, path: str) -> dict[str, Any]:
    """Copy the image at `path` beside the manifest (variations.input_path) and give the
    snippet of a variations job that starts from that copy: {"snippet", "input",
    "written"}. LookupError when the image is not on disk; InputExists, StoreError."""
    job = review.jobs[path]
    image = _inside(review.root, f"{IMAGES}/{path}")
    if image is None:
        raise LookupError(f"{path} has no image in {review.root}: make it first")
    dest = input_path(job, review.manifest, review.plan.name)
    try:
        written = save_input(image.read_bytes(), dest)
    except OSError as exc:
        raise write_error(dest, exc) from None
    return {"snippet": variation_snippet(job, dest, review.manifest), "input": str(dest),
            "written": written}


async def api_more(request: web.Request) -> web.StreamResponse:
    """POST /api/more/{path}: the picked image copied beside the manifest, and the snippet
    of a variations job of it (the one thing this server writes besides the picks file)."""
    review = request.app[REVIEW_KEY]
    path = request.match_info["path"]
    if path not in review.jobs:
        return _error(404, f"{path!r} is not an image of the plan {review.plan.name!r}")
    try:
        doc = await asyncio.to_thread(more_like_this, review, path)
    except LookupError as exc:
        return _error(404, str(exc))
    except InputExists as exc:
        return _error(409, f"not saved: {exc}")
    except StoreError as exc:
        return _error(500, f"not saved: {exc}")
    return web.json_response(doc, dumps=lambda d: json.dumps(d, ensure_ascii=False))


def _inside(root: Path, rel: str) -> Path | None:
    """root/rel when it is a file whose real path is inside root's real path, else None."""
    parts = rel.split("/")
    if (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel
            or any(p in ("", ".", "..") for p in parts)):
        return None
    try:
        real = (root / rel).resolve(strict=True)
        base = root.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    # resolve() follows every symlink: a link leaving the folder lands outside `base`
    if not real.is_relative_to(base) or not real.is_file():
        return None
    return real


async def files(request: web.Request) -> web.StreamResponse:
    """GET /files/{rel}: an image file of the output folder, never anything outside it."""
    review = request.app[REVIEW_KEY]
    rel = request.match_info["rel"]
    kind = SERVED_SUFFIXES.get(Path(rel).suffix.lower())
    if kind is None:
        return _error(404, "only images of the output folder are served")
    real = await asyncio.to_thread(_inside, review.root, rel)
    if real is None:
        return _error(404, "no such image in the output folder")
    return web.FileResponse(real, headers={"Content-Type": kind})


async def thumb(request: web.Request) -> web.StreamResponse:
    """GET /thumb/{path}: the thumbnail of a planned image; made now when missing or old."""
    review = request.app[REVIEW_KEY]
    path = request.match_info["path"]
    if path not in review.jobs:
        return _error(404, f"{path!r} is not an image of the plan")
    image = await asyncio.to_thread(_inside, review.root, f"{IMAGES}/{path}")
    if image is None:
        return _error(404, "no such image in the output folder")
    rel = thumb_rel(path)
    side = review.thumb_side
    if side <= 0:  # thumbnails are off for this manifest: the image itself
        return web.FileResponse(image)
    made = await asyncio.to_thread(_current_thumb, review.root, rel, image)
    if made is None:
        async with request.app[THUMB_SLOTS]:
            made = await asyncio.to_thread(_make_thumb, review.root, rel, image, side)
    if made is None:  # cannot write thumbs/ here (read-only): show the image itself
        return web.FileResponse(image)
    return web.FileResponse(made, headers={"Content-Type": "image/jpeg"})


def _current_thumb(root: Path, rel: str, image: Path) -> Path | None:
    """The thumbnail at `rel` (thumb_rel) when it was made from the image as it is now."""
    real = _inside(root, rel)
    try:
        if real is not None and real.stat().st_mtime_ns == image.stat().st_mtime_ns:
            return real
    except OSError:
        return None
    return None


def _make_thumb(root: Path, rel: str, image: Path, side: int) -> Path | None:
    again = _current_thumb(root, rel, image)  # another request may have made it meanwhile
    if again is not None:
        return again
    try:
        result = make_thumb((str(image), str(root / rel), side))
    except StoreError:
        return None
    return _inside(root, rel) if not isinstance(result, str) else None


THUMB_SLOTS = web.AppKey("imagebatch_review_thumb_slots", asyncio.Semaphore)


def make_app(review: Review) -> web.Application:
    """The review app for `review`; its Host names are set once the port is known."""
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY_BYTES)
    app[REVIEW_KEY] = review
    app[THUMB_SLOTS] = asyncio.Semaphore(max(1, os.cpu_count() or 1))
    app.on_response_prepare.append(_headers)
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/items", api_items)
    app.router.add_put("/api/picks/{path:.+}", api_put)
    app.router.add_post("/api/more/{path:.+}", api_more)
    app.router.add_get("/files/{rel:.+}", files)
    app.router.add_get("/thumb/{path:.+}", thumb)
    return app


@dataclass(frozen=True, slots=True)
class RunningReview:
    """A started review server: its URL with the token, port and state."""

    url: str
    port: int
    review: Review


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@contextlib.asynccontextmanager
async def running_review(
    review: Review, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningReview]:
    """Serve `review` on host:port (0: a free port) for the duration of the block."""
    app = make_app(review)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        review.port = bound
        names = {"127.0.0.1", "localhost", _shown(host)}
        review.hosts = {f"{n}:{bound}".lower() for n in names}
        review.any_ip_host = host in WILDCARD_HOSTS
        shown = "127.0.0.1" if host in WILDCARD_HOSTS else _shown(host)
        yield RunningReview(f"http://{shown}:{bound}/?token={review.token}", bound, review)
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------------------
# The command


@dataclass(frozen=True, slots=True)
class ReviewOptions:
    """Everything `imagebatch review` was asked to do."""

    manifest: str
    out: Path = Path("outputs")
    picks: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    open_browser: bool = True
    env_prefixes: Sequence[str] = (config.DEFAULT_PREFIX,)
    max_jobs: int = 5000
    selection: Selection = ALL  # the jobs shown (--only, --first-seeds); picks stay whole


def has_display(env: Mapping[str, str], platform: str = sys.platform) -> bool:
    """Whether a browser window could open here: macOS, Windows, or an X/Wayland display."""
    return platform in ("darwin", "win32") or bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


async def _serve(review: Review, opts: ReviewOptions, env: Mapping[str, str], out: TextIO,
                 err: TextIO, ready: Callable[[RunningReview], None] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with on_stop_signals(stop.set):
        async with running_review(review, opts.host, opts.port) as srv:
            # The URL alone on stdout, at once: a script reading it can connect now.
            print(srv.url, file=out, flush=True)
            n = len(review.plan.jobs)
            print(f"reviewing {review.plan.name} ({n} image{'s' if n != 1 else ''} planned, "
                  f"{review.root}); decisions go to {review.picks_file}; Ctrl-C stops",
                  file=err, flush=True)
            if opts.open_browser and has_display(env):
                # webbrowser may block while it starts a browser: not on the event loop
                loop.run_in_executor(None, webbrowser.open, srv.url)
            if ready is not None:
                ready(srv)
            await stop.wait()
            print("stopped; every change was saved as it was made", file=err, flush=True)


def review_command(
    opts: ReviewOptions, env: Mapping[str, str] | None = None, out: TextIO | None = None,
    err: TextIO | None = None, ready: Callable[[RunningReview], None] | None = None,
) -> int:
    """`imagebatch review`: serve the page until Ctrl-C or SIGTERM; 0 once stopped."""
    from ..storage.context import resolve

    env = os.environ if env is None else env
    out = out or sys.stdout
    err = err or sys.stderr
    # planned and judged as `run` does: every prefix, every member's images
    ctx = resolve([opts.manifest], env=env, env_prefixes=opts.env_prefixes,
                  out_dir=opts.out, max_jobs=opts.max_jobs)
    plan, backends = ctx.plan, ctx.judged
    picks_file = picks.picks_path(opts.manifest, opts.picks)
    picks.load_picks(picks_file, plan)  # a broken file is an error now (exit 2), not on first save
    shown = narrow_all([plan], opts.selection)[0] if opts.selection.active else None
    review = Review(plan=plan, root=Path(opts.out) / plan.name, picks_file=picks_file,
                    manifest=opts.manifest, backends=backends, shown=shown)
    # Ctrl-C is the way to stop the server, so it ends with 0, the same as SIGTERM.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(review, opts, env, out, err, ready))
    return 0


__all__ = [
    "CSP",
    "BadChange",
    "Block",
    "Cell",
    "Review",
    "ReviewOptions",
    "Row",
    "RunningReview",
    "group_title",
    "has_display",
    "image_url",
    "make_app",
    "merge_changes",
    "more_like_this",
    "params_text",
    "parse_change",
    "render_page",
    "review_command",
    "running_review",
    "thumb_url",
]
