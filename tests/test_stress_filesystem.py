"""Filesystem faults: an output folder that cannot be written (read-only from the start, or
turning read-only or full in the middle of a run) gives a clear error without a traceback,
exit status 2 (StoreError), and loses no finished image: what was recorded before the fault
stays valid and recorded, and the next run, once the disk is fine, asks only for the rest.

As root, chmod does not stop writes, so the faults are then made in-process by replacing
the calls the store writes with (`open`, `os.replace`) for paths under the output folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from stress_helpers import SECRET_KEY, Embedded, check_run, decode, embedded_server, load, results

import imagebatch.storage.store
from imagebatch.cli import main
from imagebatch.service.server import ServerOptions

pytestmark = pytest.mark.stress

N = 12
ROOT_USER = os.geteuid() == 0


def _manifest(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "fs.yaml"
    path.write_text(f"""\
version: 1
name: fs
jobs:
  - id: pier
    prompt: "a pier in fog"
    output_format: jpeg
    aspect_ratio: "21:9"
    seeds: {{start: 1, count: {count}}}
""")
    return path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Embedded]:
    with embedded_server(ServerOptions(flat=True, latency_ms=20)) as srv:
        monkeypatch.setenv("DIFFUSION_URL", srv.url)
        monkeypatch.setenv("DIFFUSION_KEY", SECRET_KEY)
        yield srv


def _run(manifest: Path, out: Path, capsys: pytest.CaptureFixture[str],
         *extra: str) -> tuple[int, str]:
    code = main(["run", str(manifest), "--out", str(out), "--rpm", "0", "--concurrency", "3",
                 "--no-post", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _recorded_images_are_intact(root: Path) -> set[str]:
    """Every job recorded ok has its image, complete, with the recorded bytes; their keys."""
    ok = {}
    for rec in results(root):
        if rec["status"] == "ok":
            ok[rec["key"]] = rec
    for rec in ok.values():
        path = root / "images" / rec["path"]
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec["sha256"], rec["path"]
        assert decode(path) == ("JPEG", (1536, 640))
    return set(ok)


Fault = Callable[[str], OSError]


@contextmanager
def _faulty_disk(root: Path, fault: Fault, *, after_images: int = 0,
                 calls: tuple[str, ...] = ("open", "replace")) -> Iterator[None]:
    """Writes under `root` fail with `fault(path)` once `after_images` images were written.

    Replaces the store's `open` (for writing) and `os.replace`. Images are granted one at a
    time under a lock (at their temp file's creation, or at the rename when only renames
    fail), so exactly `after_images` get through whatever the concurrency; after that every
    write under `root` fails, the summary's included, as on a disk that filled up.
    """
    real_open, real_replace = open, os.replace
    lock = threading.Lock()
    state = {"granted": 0, "tripped": after_images == 0}  # 0: broken from the start
    prefix = str(root.resolve())

    def under(path: Any) -> bool:
        return str(Path(path).resolve()).startswith(prefix)

    def allowed(path: Any, image_step: bool) -> bool:
        if not under(path):
            return True
        with lock:
            if image_step and "images" in Path(path).parts:
                if state["granted"] < after_images:
                    state["granted"] += 1
                    return True
                state["tripped"] = True
            return not state["tripped"]

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "open" in calls and any(c in mode for c in "wax+") and not allowed(file, True):
            raise fault(str(file))
        return real_open(file, mode, *args, **kwargs)

    def fake_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        # when creating files fails, an image whose temp file was written may still be
        # renamed (a rename needs no space); otherwise the rename is the image's step
        image_rename = "images" in Path(dst).parts
        if "open" in calls and image_rename:
            pass
        elif "replace" in calls and not allowed(dst, image_rename):
            raise fault(str(dst))
        real_replace(src, dst, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:  # undone on leaving, the rest left alone
        patch.setattr(imagebatch.storage.store, "open", fake_open, raising=False)
        patch.setattr(os, "replace", fake_replace)
        yield


def _eacces(path: str) -> OSError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)


def _enospc(path: str) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


@contextmanager
def _read_only(root: Path) -> Iterator[None]:
    """The output folder read-only: chmod where that binds, in-process faults as root."""
    if ROOT_USER:
        with _faulty_disk(root, _eacces):
            yield
        return
    modes = {}
    for p in [root, *root.rglob("*")]:
        modes[p] = p.stat().st_mode
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))


def test_read_only_output_folder_is_refused_at_once_and_keeps_what_was_done(
        tmp_path: Path, server: Embedded, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    root = out / "fs"
    code, text = _run(_manifest(tmp_path, N // 2), out, capsys)
    assert code == 0, text
    done = _recorded_images_are_intact(root)
    assert len(done) == N // 2
    sent = server.stats.requests

    manifest = _manifest(tmp_path, N)
    with _read_only(root):
        code, text = _run(manifest, out, capsys)
    assert code == 2, text
    assert "cannot write" in text and "Permission denied" in text, text
    assert "Traceback" not in text
    assert server.stats.requests == sent  # refused before sending anything
    assert _recorded_images_are_intact(root) == done

    code, text = _run(manifest, out, capsys)  # writable again: only the rest is asked for
    assert code == 0, text
    assert server.stats.requests == sent + N // 2
    check_run(load(manifest), root)


@pytest.mark.parametrize("fault,calls,words", [
    (_enospc, ("open", "replace"), "No space left on device"),
    (_eacces, ("replace",), "Permission denied"),
], ids=["disk-full", "rename-refused"])
def test_disk_failing_mid_run_loses_no_finished_image(
        tmp_path: Path, server: Embedded, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, fault: Fault, calls: tuple[str, ...],
        words: str) -> None:
    out = tmp_path / "out"
    root = out / "fs"
    manifest = _manifest(tmp_path, N)
    k = 5
    with _faulty_disk(out, fault, after_images=k, calls=calls):
        code, text = _run(manifest, out, capsys)
    assert code == 2, text
    assert text.strip().splitlines()[-1].startswith("imagebatch: cannot write"), text
    assert words in text and "Traceback" not in text, text
    # the summary of what was made is still printed, and the error names an image first
    assert f"fs: {k} made" in text, text
    assert "summary.json" not in text.strip().splitlines()[-1], text
    # the images finished before the fault are on disk, complete and recorded
    done = _recorded_images_are_intact(root)
    assert len(done) == k
    on_disk = [p for p in (root / "images").rglob("*") if p.is_file()]
    assert len(on_disk) == k, on_disk  # and nothing else: no temp file, no half image
    sent = server.stats.requests

    code, text = _run(manifest, out, capsys)  # the disk is fine again
    assert code == 0, text
    assert server.stats.requests == sent + N - k  # finished images are not asked for again
    check_run(load(manifest), root)


def test_post_processing_that_cannot_write_still_prints_the_summary(
        tmp_path: Path, server: Embedded, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    root = out / "fs"
    root.mkdir(parents=True)
    (root / "thumbs").write_text("a file where the thumbnails folder goes")
    manifest = _manifest(tmp_path, 4)
    code = main(["run", str(manifest), "--out", str(out), "--rpm", "0"])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2, text
    assert "fs: 4 made" in text and "Traceback" not in text, text
    assert text.strip().splitlines()[-1].startswith("imagebatch: cannot write"), text
    assert len(_recorded_images_are_intact(root)) == 4
