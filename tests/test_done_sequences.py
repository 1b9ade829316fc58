"""Random sequences of what users do to an output folder, and after every step the contact
sheet and index.html show exactly what `status -v` lists, and `run` skips exactly what
`status` counts done.

Steps: run; run with the server answering 503 (with and without --force); change the
prompt and change it back; run another manifest of the same `name:` into the same --out;
damage an image in place (same size); touch one; delete one. Sequences are tiny (one or two
jobs, 32 px thumbnails); the server (one URL, so one backend, switched between healthy and
failing) and its render cache serve them all. `make test` runs 25 sequences, `make soak`
(SOAK=1) 300; IMAGEBATCH_DONE_SEQUENCES=N runs N instead.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from done_helpers import assert_page_agrees, cli, status_states, switchable_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stress_helpers import scale

settings.register_profile(
    "done-sequences",
    max_examples=int(os.environ.get("IMAGEBATCH_DONE_SEQUENCES", scale(300, 25))),
    deadline=None,  # a step that renders new images takes longer than one that does not
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

PROMPTS = ("a knight", "a wizard")
OTHER = "a dragon"  # the prompt of the other manifest that shares the name

STEPS = st.one_of(
    st.just(("run",)),
    st.just(("run-failing",)),
    st.just(("force-failing",)),
    st.just(("prompt", 0)),  # edit back
    st.just(("prompt", 1)),  # edit
    st.just(("run-other",)),
    st.tuples(st.just("damage"), st.integers(0, 1)),
    st.tuples(st.just("touch"), st.integers(0, 1)),
    st.tuples(st.just("delete"), st.integers(0, 1)),
)


def _write(path: Path, prompt: str, seeds: list[int]) -> Path:
    path.write_text(f"version: 1\nname: base\noutput:\n  thumbnail: 32\njobs:\n  - id: hero\n"
                    f"    prompt: \"{prompt}\"\n    seeds: {seeds}\n")
    return path


@dataclass
class Folder:
    """One output folder, its manifest, and the other manifest sharing its name."""

    out: Path
    manifest: Path
    other: Path
    seeds: list[int]

    @property
    def root(self) -> Path:
        return self.out / "base"

    def images(self) -> list[Path]:
        found = self.root / "images"
        return sorted(p for p in found.rglob("*") if p.is_file()) if found.is_dir() else []


def _run(srv, folder: Folder, manifest: Path, *, failing: bool, force: bool) -> None:
    """One run; it skips exactly what status counted done, and its own pages agree."""
    before = [s for s, _ in status_states(manifest, folder.out).values()]
    srv.failing(failing)
    sent = srv.requests
    try:
        code, text, err = cli("run", str(manifest), "--out", str(folder.out), "--json",
                              "--rpm", "0", "--retries", "0", *(["--force"] if force else []))
    finally:
        srv.failing(False)
    summary = json.loads(text)
    skipped = 0 if force else before.count("done")
    assert summary["skipped"] == skipped, (summary, before)
    assert srv.requests - sent == summary["requests"] == len(before) - skipped
    if failing:
        assert summary["failed"] == len(before) - skipped, err
        assert code == (1 if summary["failed"] else 0), err
    else:
        assert code == 0 and summary["succeeded"] == len(before) - skipped, err
        assert [s for s, _ in status_states(manifest, folder.out).values()] == \
            ["done"] * len(before)
    assert_page_agrees(manifest, folder.out, folder.root)  # the pages this run built


def _step(srv, folder: Folder, step: tuple) -> None:
    kind = step[0]
    if kind == "run":
        _run(srv, folder, folder.manifest, failing=False, force=False)
    elif kind == "run-failing":
        _run(srv, folder, folder.manifest, failing=True, force=False)
    elif kind == "force-failing":
        _run(srv, folder, folder.manifest, failing=True, force=True)
    elif kind == "run-other":
        _run(srv, folder, folder.other, failing=False, force=False)
    elif kind == "prompt":
        _write(folder.manifest, PROMPTS[step[1]], folder.seeds)
    else:
        images = folder.images()
        if not images:
            return
        path = images[step[1] % len(images)]
        if kind == "damage":  # 1,000 bytes overwritten in the middle: same size
            size = path.stat().st_size
            with open(path, "r+b") as fh:
                fh.seek(size // 2)
                fh.write(os.urandom(min(1000, size - size // 2)))
        elif kind == "touch":
            later = path.stat().st_mtime_ns + 2 * 10**9
            os.utime(path, ns=(later, later))
        else:
            path.unlink()
    # And `imagebatch sheet` of the manifest as it now reads agrees with its `status`.
    code, _, err = cli("sheet", str(folder.manifest), "--out", str(folder.out))
    assert code == 0, err
    assert_page_agrees(folder.manifest, folder.out, folder.root)


@pytest.fixture(scope="module")
def server():
    # flat pictures: what is checked is which jobs the pages and status call done, failed or
    # missing, not what the pictures show; decoding and thumbnailing them costs far less
    with pytest.MonkeyPatch.context() as mp, switchable_server(mp, flat=True) as srv:
        yield srv


@pytest.mark.slow
@settings(settings.get_profile("done-sequences"))
@given(jobs=st.integers(1, 2), steps=st.lists(STEPS, min_size=1, max_size=6))
def test_pages_agree_with_status_after_every_step(server, monkeypatch, jobs, steps):
    # conftest clears DIFFUSION_* for each test; set the server's again inside it
    monkeypatch.setenv("DIFFUSION_URL", server.url)
    monkeypatch.setenv("DIFFUSION_KEY", "inf-sequences")
    seeds = [5, 6][:jobs]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        folder = Folder(base / "out", _write(base / "m.yaml", PROMPTS[0], seeds),
                        _write(base / "other.yaml", OTHER, seeds), seeds)
        _run(server, folder, folder.manifest, failing=False, force=False)
        for step in steps:
            _step(server, folder, step)
