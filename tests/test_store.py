"""The only writer: atomic images, results.jsonl (torn lines tolerated), what counts as done."""

from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image
from runner_helpers import image_bytes, make_job

import imagebatch.storage.store
from imagebatch.errors import StoreError
from imagebatch.storage import metadata
from imagebatch.storage.store import RESULTS, Store, atomic_write, job_states, read_records


def _store(tmp_path, backend="local"):
    s = Store(tmp_path / "out", "demo", backend)
    s.prepare()
    s.load()
    return s


def test_save_writes_image_with_request_and_a_record(tmp_path):
    store = _store(tmp_path)
    job = make_job()
    rec = store.save(job, image_bytes(), attempts=2, seconds=1.23456, created=17)
    path = tmp_path / "out/demo/images/fox/1.png"
    blob = path.read_bytes()
    assert metadata.extract(blob) == job.body
    with Image.open(io.BytesIO(blob)) as img:
        img.verify()
    assert rec.bytes == len(blob) and rec.status == "ok" and rec.attempts == 2
    line = json.loads((tmp_path / "out/demo" / RESULTS).read_text())
    assert set(line) == {"key", "path", "status", "backend", "attempts", "error", "sha256",
                         "bytes", "seconds", "created", "mtime_ns"}
    assert line["mtime_ns"] == path.stat().st_mtime_ns == rec.mtime_ns
    assert line["key"] == job.key and line["path"] == "fox/1.png" and line["seconds"] == 1.235
    assert store.is_done(job)
    store.close()


def test_done_needs_same_backend_path_and_file(tmp_path):
    job = make_job()
    s = _store(tmp_path, "local")
    s.save(job, image_bytes(), attempts=1, seconds=0, created=None)
    s.close()
    remote = _store(tmp_path, "https://api.example.test")
    assert not remote.is_done(job)  # local never stands in for remote
    assert remote.state(job) == ("pending", None)
    remote.save(job, image_bytes(color=(0, 0, 255)), attempts=1, seconds=0, created=None)
    remote.close()
    # Now the file on disk is the remote one: local must not count it as its own.
    assert not _store(tmp_path, "local").is_done(job)
    again = _store(tmp_path, "https://api.example.test")
    assert again.is_done(job)
    (tmp_path / "out/demo/images/fox/1.png").unlink()
    assert not again.is_done(job)


def test_truncated_file_or_changed_size_is_not_done(tmp_path):
    job = make_job()
    s = _store(tmp_path)
    s.save(job, image_bytes(), attempts=1, seconds=0, created=None)
    path = tmp_path / "out/demo/images/fox/1.png"
    path.write_bytes(path.read_bytes()[:100])
    s.load()
    assert not s.is_done(job)


def test_failed_after_ok_keeps_done_and_failure_shows_in_state(tmp_path):
    a, b = make_job(0, seed=1), make_job(1, seed=2)
    s = _store(tmp_path)
    s.save(a, image_bytes(), attempts=1, seconds=0, created=None)
    s.fail(a, "boom", attempts=6, seconds=1)  # a --force run that failed; the image is intact
    s.fail(b, "HTTP 400: bad", attempts=1, seconds=0)
    s.close()
    s = _store(tmp_path)
    assert s.is_done(a)
    state, rec = s.state(b)
    assert state == "failed" and rec.error == "HTTP 400: bad"


def test_torn_last_line_is_tolerated_and_fixed_on_append(tmp_path):
    job, other = make_job(0, seed=1), make_job(1, seed=2)
    s = _store(tmp_path)
    s.save(job, image_bytes(), attempts=1, seconds=0, created=None)
    s.close()
    results = tmp_path / "out/demo" / RESULTS
    with open(results, "ab") as fh:
        fh.write(b'{"key": "abc", "path": "x.png", "sta')  # killed mid-line
    s = _store(tmp_path)
    assert s.is_done(job)
    s.save(other, image_bytes(), attempts=1, seconds=0, created=None)
    s.close()
    recs = list(read_records(results))
    assert [r.key for r in recs] == [job.key, other.key]


def test_prepare_removes_leftover_temp_files(tmp_path):
    images = tmp_path / "out/demo/images/fox"
    images.mkdir(parents=True)
    (images / ".tmp-1.png.123.456").write_bytes(b"half")
    (images / "keep.png").write_bytes(b"x")
    s = Store(tmp_path / "out", "demo", "local")
    assert s.prepare() == 1
    assert sorted(p.name for p in images.iterdir()) == ["keep.png"]
    s.close()


def test_a_create_only_write_never_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "inputs" / "fox.png"
    atomic_write(path, b"first", create_only=True)
    assert path.read_bytes() == b"first"
    with pytest.raises(FileExistsError):
        atomic_write(path, b"second", create_only=True)  # another writer got there first
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["fox.png"]


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "a.bin"
    atomic_write(path, b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_read_only_output_is_a_store_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(StoreError, match="cannot write"):
        Store(ro, "demo", "local").prepare()


def test_summary_is_written_atomically(tmp_path):
    s = _store(tmp_path)
    path = s.write_summary({"planned": 1, "failures": []})
    assert json.loads(path.read_text()) == {"planned": 1, "failures": []}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_one_store_per_folder_at_a_time(tmp_path):
    first = _store(tmp_path)
    with pytest.raises(StoreError, match="another imagebatch run"):
        Store(tmp_path / "out", "demo", "local").prepare()
    first.close()
    second = _store(tmp_path)  # the lock goes with the handle
    second.close()


def test_hostile_lines_are_skipped_and_an_unreadable_file_is_a_store_error(tmp_path):
    job = make_job()
    s = _store(tmp_path)
    s.save(job, image_bytes(), attempts=1, seconds=0, created=None)
    s.close()
    results = tmp_path / "out/demo" / RESULTS
    with open(results, "ab") as fh:
        fh.write(b'{"key":"x","path":"p","status":"ok","backend":"local","attempts":1e400}\n')
        fh.write(b"[" * 100_000 + b"\n")
    assert [r.key for r in read_records(results)] == [job.key]
    assert _store(tmp_path).is_done(job)
    folder = tmp_path / "odd" / RESULTS
    folder.mkdir(parents=True)  # a folder where results.jsonl should be
    with pytest.raises(StoreError, match="cannot read"):
        list(read_records(folder))


def test_a_prompt_changed_and_changed_back_is_not_done_by_its_old_record(tmp_path):
    # "a cat", then "a bat", then "a cat" again: the same path, images of the same size
    cat, bat = make_job(prompt="a cat"), make_job(prompt="a bat")
    assert cat.path == bat.path and cat.key != bat.key
    s = _store(tmp_path)
    s.save(cat, image_bytes(), attempts=1, seconds=0, created=None)
    s.save(bat, image_bytes(), attempts=1, seconds=0, created=None)
    assert s.is_done(bat) and not s.is_done(cat)  # the file holds the bat now
    s.close()
    s = _store(tmp_path)  # and the same after a restart, from results.jsonl
    assert s.is_done(bat) and not s.is_done(cat)
    assert s.state(cat)[0] == "pending"
    s.close()


def test_a_same_size_change_in_the_same_clock_tick_as_the_save_is_seen(tmp_path, monkeypatch):
    written: list[int] = []  # the mtime the image's write gave it

    def spy(path, data):
        atomic_write(path, data)
        written.append(os.stat(path).st_mtime_ns)

    monkeypatch.setattr(imagebatch.storage.store, "atomic_write", spy)
    job = make_job()
    s = _store(tmp_path)
    rec = s.save(job, image_bytes(), attempts=1, seconds=0, created=None)
    path = tmp_path / "out/demo/images/fox/1.png"
    assert path.stat().st_mtime_ns == rec.mtime_ns
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    # a write in the save's own clock tick gets the time the save's write got
    os.utime(path, ns=(written[0], written[0]))
    (st,) = job_states([job], s.root, "local")
    assert st.state == "pending" and st.hashed
    s.close()


def test_done_image_reached_through_a_link_out_of_images_is_not_done(tmp_path):
    job = make_job()
    s = _store(tmp_path)
    s.save(job, image_bytes(), attempts=1, seconds=0, created=None)
    s.close()
    folder = tmp_path / "out/demo/images/fox"
    elsewhere = tmp_path / "elsewhere"
    folder.rename(elsewhere)  # the same bytes, now outside images/ behind a link
    os.symlink(elsewhere, folder)
    (st,) = job_states([job], tmp_path / "out/demo", "local")
    assert st.state == "pending"
    s = _store(tmp_path)
    reason = s.cannot_write(job)
    assert reason is not None and "leads outside" in reason and str(elsewhere) in reason
    s.close()


def test_cannot_write_names_a_folder_or_file_in_the_way(tmp_path):
    s = _store(tmp_path)
    (tmp_path / "out/demo/images/fox/1.png").mkdir(parents=True)
    assert "is a folder" in (s.cannot_write(make_job()) or "")
    (tmp_path / "out/demo/images/owl").write_bytes(b"x")
    assert "is not a folder" in (s.cannot_write(make_job(job_id="owl")) or "")
    assert s.cannot_write(make_job(job_id="cat")) is None
    s.close()


def test_job_states_with_no_backend_takes_whichever_made_the_image(tmp_path):
    job, other = make_job(0, seed=1), make_job(1, seed=2)
    s = _store(tmp_path, "https://api.example.test")
    s.save(job, image_bytes(), attempts=1, seconds=0, created=None)
    s.fail(other, "HTTP 400: no", attempts=1, seconds=0)
    s.close()
    root = tmp_path / "out/demo"
    assert [(x.state, x.reason) for x in job_states([job, other], root, None)] == [
        ("done", None), ("failed", "HTTP 400: no")]
    assert [x.state for x in job_states([job, other], root, "local")] == ["pending", "pending"]


def test_old_lines_without_mtime_are_checked_by_their_hash(tmp_path):
    job = make_job()
    s = _store(tmp_path)
    s.save(job, image_bytes(), attempts=1, seconds=0, created=None)
    s.close()
    results = tmp_path / "out/demo" / RESULTS
    doc = json.loads(results.read_text())
    del doc["mtime_ns"]
    results.write_text(json.dumps(doc) + "\n")
    (st,) = job_states([job], tmp_path / "out/demo", "local")
    assert st.state == "done" and st.hashed and st.record.mtime_ns is None
    path = tmp_path / "out/demo/images/fox/1.png"
    path.write_bytes(path.read_bytes()[::-1])  # same size, other bytes
    assert job_states([job], tmp_path / "out/demo", "local")[0].state == "pending"
