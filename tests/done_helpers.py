"""Shared pieces of the tests of "done": a switchable embedded server, and readers of what
`status -v --json` lists and what index.html and the contact sheet show, job by job."""

from __future__ import annotations

import contextlib
import html.parser
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from stress_helpers import SECRET_KEY, in_thread

from imagebatch.cli import main
from imagebatch.service.server import SERVICE_KEY, RunningServer, ServerOptions, running_server

HEALTHY = ServerOptions(workers=1)
FAILING = replace(HEALTHY, fail_rate=1.0, faults=("503",))  # every request answered 503


@dataclass
class Switchable:
    """The embedded server on one URL (so one backend) whose answers can be switched to 503s."""

    server: RunningServer
    healthy: ServerOptions = HEALTHY  # what it answers with when not failing

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> int:
        """POSTs received so far."""
        return self.server.stats.requests

    def failing(self, on: bool) -> None:
        """From now on, answer every request 503 (on) or normally (off).

        The server reads its options at each request, so its own fault machinery does it.
        """
        self.server.app[SERVICE_KEY].options = (
            replace(self.healthy, fail_rate=FAILING.fail_rate, faults=FAILING.faults) if on
            else self.healthy)


@contextlib.contextmanager
def switchable_server(monkeypatch: pytest.MonkeyPatch, *,
                      flat: bool = True) -> Iterator[Switchable]:
    """A Switchable server in a background thread, set as DIFFUSION_URL / DIFFUSION_KEY;
    `flat`: one-colour pictures (same sizes and formats, a fraction of the CPU, no render
    pool), what these tests need: which jobs are done, failed or missing, not what they show."""
    healthy = replace(HEALTHY, flat=flat)
    with in_thread(lambda: running_server(healthy)) as srv:
        monkeypatch.setenv("DIFFUSION_URL", srv.url)
        monkeypatch.setenv("DIFFUSION_KEY", SECRET_KEY)
        yield Switchable(srv, healthy)


def cli(*argv: str) -> tuple[int, str, str]:
    """`imagebatch ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def status_states(manifest: Path, out: Path, *extra: str) -> dict[str, tuple[str, str | None]]:
    """What `status -v --json` lists: key (first 12 hex) -> (done | failed | pending, error)."""
    code, text, err = cli("status", str(manifest), "--out", str(out), "-v", "--json", *extra)
    assert code == 0, err
    return {row["key"][:12]: (row["state"], row["error"]) for row in json.loads(text)["jobs"]}


class _Figures(html.parser.HTMLParser):
    """index.html's figures: key (first 12 hex) -> ok | failed | missing, as a reader sees
    them: a picture, a "failed" box, or a "missing" box."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, str] = {}
        self._key: str | None = None
        self._img = False
        self._classes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure":
            self._key = (a.get("id") or "").removeprefix("job-")
            self._img, self._classes = False, set()
        elif self._key is not None:
            self._img = self._img or tag == "img"
            self._classes |= set((a.get("class") or "").split())

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure" and self._key is not None:
            failed = "failed" in self._classes
            self.states[self._key] = "ok" if self._img else "failed" if failed else "missing"
            self._key = None


def index_states(root: Path) -> tuple[dict[str, str], tuple[int, int, int]]:
    """index.html under `root`: key (first 12 hex) -> ok | failed | missing, and its counts
    line (done, failed, not made yet)."""
    doc = (root / "index.html").read_text(encoding="utf-8")
    parser = _Figures()
    parser.feed(doc)
    text = " ".join(re.sub(r"<[^>]+>", " ", doc).split())
    m = re.search(r"(\d+) done, (\d+) failed, (\d+) not made yet", text)
    assert m, "index.html has no counts line"
    return parser.states, (int(m[1]), int(m[2]), int(m[3]))


#: status's words for index.html's
AS_INDEX = {"done": "ok", "failed": "failed", "pending": "missing"}


def assert_page_agrees(manifest: Path, out: Path, root: Path, *extra: str) -> dict[str, str]:
    """index.html under `root` shows, job by job and in its counts, what status lists."""
    status = status_states(manifest, out, *extra)
    shown, counts = index_states(root)
    want = {key: AS_INDEX[state] for key, (state, _err) in status.items()}
    assert shown == want, (shown, status)
    states = [s for s, _ in status.values()]
    assert counts == (states.count("done"), states.count("failed"), states.count("pending"))
    return want
