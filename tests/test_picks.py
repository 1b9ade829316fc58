"""The picks file: round trip, stale entries, hostile files, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from imagebatch.planning.manifest import load_plan
from imagebatch.planning.plan import Plan
from imagebatch.storage import picks
from imagebatch.storage.picks import KEEP, PickEntry, PicksError, load_picks, update_picks

MANIFEST = """\
version: 1
name: launch
defaults:
  aspect_ratio: "1:1"
seeds: [1, 2]
jobs:
  - id: city
    prompt: "A city at {time}"
    matrix:
      time: [dawn, dusk]
  - id: fox
    prompt: "A fox"
"""


def write_manifest(tmp_path: Path, text: str = MANIFEST) -> Path:
    path = tmp_path / "launch.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    return load_plan(str(write_manifest(tmp_path)))


def paths(plan: Plan) -> list[str]:
    return [j.path for j in plan.jobs]


def test_picks_path_beside_the_manifest_and_override() -> None:
    assert picks.picks_path("manifests/launch.yaml") == Path("manifests/launch.picks.json")
    assert picks.picks_path(Path("a/b.yml")) == Path("a/b.picks.json")
    assert picks.picks_path("m.yaml", "other/x.json") == Path("other/x.json")


def test_missing_file_is_no_picks(tmp_path: Path, plan: Plan) -> None:
    got = load_picks(tmp_path / "launch.picks.json", plan)
    assert got.manifest == "launch"
    assert dict(got.entries) == {}
    assert load_picks(tmp_path / "nope.json").manifest == ""


def test_round_trip_sorted_one_entry_a_line(tmp_path: Path, plan: Plan) -> None:
    file = tmp_path / "launch.picks.json"
    p = paths(plan)
    result = update_picks(file, plan, {p[3]: ("pick", 5), p[0]: ("reject", None),
                                       p[1]: (None, 2)})
    text = file.read_text()
    keys = {j.path: j.key for j in plan.jobs}
    first, second, third = sorted([p[0], p[1], p[3]])
    entries = {p[3]: ("pick", 5), p[0]: ("reject", None), p[1]: (None, 2)}

    def line(path: str) -> str:
        status, rating = entries[path]
        return (f'    "{path}": {{"key": "{keys[path]}", "rating": '
                f'{json.dumps(rating)}, "status": {json.dumps(status)}}}')

    assert text == ('{\n  "version": 1,\n  "manifest": "launch",\n  "picks": {\n'
                    f"{line(first)},\n{line(second)},\n{line(third)}\n  }}\n}}\n")
    again = load_picks(file, plan)
    assert again == result
    assert list(again.entries) == [first, second, third]
    assert again.entries[p[3]] == PickEntry(keys[p[3]], "pick", 5)
    assert picks.dumps(again) == text


def test_clear_and_neither_removes_the_entry(tmp_path: Path, plan: Plan) -> None:
    file = tmp_path / "launch.picks.json"
    p = paths(plan)
    update_picks(file, plan, {p[0]: ("pick", 4), p[1]: ("reject", None)})
    after = update_picks(file, plan, {p[0]: None, p[1]: (None, None)})
    assert dict(after.entries) == {}
    assert json.loads(file.read_text())["picks"] == {}
    assert file.read_text().endswith('"picks": {}\n}\n')


def test_clearing_nothing_creates_no_file(tmp_path: Path, plan: Plan) -> None:
    file = tmp_path / "launch.picks.json"
    update_picks(file, plan, {paths(plan)[0]: None})
    assert not file.exists()


def test_keep_keeps_the_other_field_as_the_file_has_it(tmp_path: Path, plan: Plan) -> None:
    file = tmp_path / "launch.picks.json"
    p = paths(plan)[0]
    update_picks(file, plan, {p: ("pick", None)})
    after = update_picks(file, plan, {p: (KEEP, 3)})
    assert after.entries[p].status == "pick" and after.entries[p].rating == 3
    after = update_picks(file, plan, {p: ("reject", KEEP)})
    assert after.entries[p].status == "reject" and after.entries[p].rating == 3


def test_stale_when_the_prompt_changes(tmp_path: Path, plan: Plan) -> None:
    file = tmp_path / "launch.picks.json"
    p = paths(plan)
    update_picks(file, plan, {p[0]: ("pick", 5), p[2]: ("pick", None), p[4]: (None, 3)})
    changed = load_plan(str(write_manifest(tmp_path, MANIFEST.replace("A city at", "A town at"))))
    assert paths(changed) == p  # same paths, new keys for the city job
    got = load_picks(file, changed)
    assert got.is_stale(p[0], changed) and got.is_stale(p[2], changed)
    assert not got.is_stale(p[4], changed)
    assert not got.is_stale(p[1], changed)  # no entry: nothing to be stale
    assert got.status_of(p[0], changed) == "stale"
    assert got.status_of(p[4], changed) == ""
    assert str(picks.counts(got, changed)) == "picked 0, rejected 0, rated 1, stale 2"
    assert picks.counts(got, plan).as_dict() == {"picked": 2, "rejected": 0, "rated": 2,
                                                 "stale": 0}
    # a stale entry is kept through other changes, until cleared
    after = update_picks(file, changed, {p[4]: ("reject", KEEP)})
    assert after.is_stale(p[0], changed) and p[0] in after.entries
    assert after.entries[p[0]].key == plan.jobs[0].key
    # keeping a field of a stale entry does not carry the old decision to the new picture
    after = update_picks(file, changed, {p[0]: (KEEP, 2)})
    assert after.entries[p[0]] == PickEntry(changed.jobs[0].key, None, 2)
    assert not after.is_stale(p[0], changed)
    after = update_picks(file, changed, {p[2]: None})
    assert p[2] not in after.entries


def test_unknown_path_or_bad_values_in_a_change_leave_the_file(tmp_path: Path,
                                                               plan: Plan) -> None:
    file = tmp_path / "launch.picks.json"
    update_picks(file, plan, {paths(plan)[0]: ("pick", None)})
    before = file.read_bytes()
    with pytest.raises(PicksError, match="not an image of the plan"):
        update_picks(file, plan, {"city/nope/1.png": ("pick", None)})
    with pytest.raises(PicksError, match="status"):
        update_picks(file, plan, {paths(plan)[1]: ("maybe", None)})
    with pytest.raises(PicksError, match="rating"):
        update_picks(file, plan, {paths(plan)[1]: (None, 6)})
    with pytest.raises(PicksError, match="rating"):
        update_picks(file, plan, {paths(plan)[1]: (None, True)})
    assert file.read_bytes() == before


# ---- hostile files -----------------------------------------------------------------------

def hostile(tmp_path: Path, plan: Plan, text: str | bytes) -> str:
    file = tmp_path / "launch.picks.json"
    if isinstance(text, str):
        file.write_text(text)
    else:
        file.write_bytes(text)
    before = file.read_bytes()
    with pytest.raises(PicksError) as info:
        load_picks(file, plan)
    # and a writer refuses to overwrite it, leaving it exactly as it was
    with pytest.raises(PicksError):
        update_picks(file, plan, {paths(plan)[0]: ("pick", None)})
    assert file.read_bytes() == before
    return str(info.value)


def doc(plan: Plan, entries: str) -> str:
    return ('{\n  "version": 1,\n  "manifest": "launch",\n  "picks": {\n' + entries
            + "\n  }\n}\n")


def entry(plan: Plan, i: int, rest: str = '"rating": 5, "status": "pick"') -> str:
    return f'    "{plan.jobs[i].path}": {{"key": "{plan.jobs[i].key}", {rest}}}'


def test_not_json_is_located(tmp_path: Path, plan: Plan) -> None:
    msg = hostile(tmp_path, plan, '{\n  "version": 1,\n  "picks": {\n    "a": 1,,\n  }\n}\n')
    assert msg.startswith(f"{tmp_path / 'launch.picks.json'}:4:12: not valid JSON")
    assert "Traceback" not in msg


def test_empty_and_binary_files(tmp_path: Path, plan: Plan) -> None:
    assert ":1:1: the file is empty" in hostile(tmp_path, plan, "")
    msg = hostile(tmp_path, plan, b'{"version": 1,\n "manifest": "\xff"}')
    assert msg.endswith(":2:15: is not UTF-8 text")


def test_unknown_fields_are_located(tmp_path: Path, plan: Plan) -> None:
    text = doc(plan, entry(plan, 0, '"rating": 5, "stauts": "pick"'))
    msg = hostile(tmp_path, plan, text.replace('"manifest"', '"extra": 1,\n  "manifest"'))
    lines = msg.splitlines()
    assert lines[0].endswith(":3:3: extra: unknown field 'extra'; allowed: version, manifest, "
                             "picks")
    col = text.splitlines()[4].index('"stauts"') + 1
    assert lines[1].endswith(f':6:{col}: picks["{plan.jobs[0].path}"].stauts: unknown field '
                             "'stauts'; did you mean 'status'?")


@pytest.mark.parametrize(("rest", "field", "says"), [
    ('"rating": 6, "status": "pick"', "rating", "from 1 to 5, or null; got a number 6"),
    ('"rating": 0, "status": null', "rating", "got a number 0"),
    ('"rating": 4.5, "status": null', "rating", "got a number 4.5"),
    ('"rating": "5", "status": null', "rating", "got text"),
    ('"rating": true, "status": null', "rating", "got a boolean"),
    ('"rating": NaN, "status": null', "rating", "got a number nan"),
    ('"rating": null, "status": "maybe"', "status", "got text 'maybe'"),
    ('"rating": null, "status": 1', "status", "got a number"),
    ('"rating": null, "status": ["pick"]', "status", "got a list"),
])
def test_wrong_types_and_ranges_are_located(tmp_path: Path, plan: Plan, rest: str, field: str,
                                            says: str) -> None:
    text = doc(plan, entry(plan, 1, rest))
    msg = hostile(tmp_path, plan, text)
    line = text.splitlines()[4]
    value = line.index(rest.split(", ")[0 if field == "rating" else 1].split(": ")[1],
                       line.index(f'"{field}"'))
    assert msg == (f'{tmp_path / "launch.picks.json"}:5:{value + 1}: '
                   f'picks["{plan.jobs[1].path}"].{field}: {msg.split(": ", 2)[2]}')
    assert says in msg


def test_bad_keys_are_located(tmp_path: Path, plan: Plan) -> None:
    path = plan.jobs[0].path
    for bad in ('"abc"', '"' + "A" * 64 + '"', "12", "null"):
        text = doc(plan, f'    "{path}": {{"key": {bad}, "status": "pick"}}')
        msg = hostile(tmp_path, plan, text)
        assert f':5:{text.splitlines()[4].index(bad) + 1}: picks["{path}"].key: must be 64 ' \
               "lowercase hex digits" in msg
    msg = hostile(tmp_path, plan, doc(plan, f'    "{path}": {{"status": "pick"}}'))
    assert f':5:{len(path) + 9}: picks["{path}"]: needs a key' in msg


def test_paths_outside_the_plan_and_climbing_out(tmp_path: Path, plan: Plan) -> None:
    key = plan.jobs[0].key
    for bad, says in (("../../etc/passwd", "'..'"), ("/etc/passwd", "absolute"),
                      ("city/../fox/1.png", "'..'"), ("C:/x.png", "absolute"),
                      ("city\\\\dawn\\\\1.png", "backslash"), ("", "is empty"),
                      ("city/dawn/9.png", "not an image of the plan")):
        text = doc(plan, f'    "{bad}": {{"key": "{key}", "status": "pick"}}')
        msg = hostile(tmp_path, plan, text)
        assert msg.splitlines()[0].split(": ", 1)[0].endswith(":5:5"), msg
        assert says in msg
    msg = hostile(tmp_path, plan, doc(plan, f'    "city/dawn/3.png": {{"key": "{key}"}}'))
    assert "did you mean 'city/dawn/1.png'?" in msg or "did you mean 'city/dawn/2.png'?" in msg


def test_paths_not_checked_without_a_plan(tmp_path: Path, plan: Plan) -> None:
    file = tmp_path / "x.picks.json"
    file.write_text(doc(plan, f'    "gone/1.png": {{"key": "{"a" * 64}", "rating": 1}}'))
    assert load_picks(file).entries["gone/1.png"] == PickEntry("a" * 64, None, 1)


def test_top_level_problems(tmp_path: Path, plan: Plan) -> None:
    assert ":1:1: must be an object" in hostile(tmp_path, plan, "[1, 2]\n")
    msg = hostile(tmp_path, plan, '{"version": 2, "manifest": "launch", "picks": {}}')
    assert ":1:13: version: 2 is not supported" in msg
    msg = hostile(tmp_path, plan, '{"manifest": "launch", "picks": []}')
    assert ':1:1: needs "version": 1' in msg and ":1:33: picks: must be an object" in msg
    msg = hostile(tmp_path, plan, '{"version": 1, "manifest": "other", "picks": {}}')
    assert ":1:28: manifest: these are the picks of 'other', not of 'launch'" in msg


def test_duplicate_paths_are_located(tmp_path: Path, plan: Plan) -> None:
    text = doc(plan, entry(plan, 0) + ",\n" + entry(plan, 0, '"rating": 1, "status": null'))
    msg = hostile(tmp_path, plan, text)
    assert f':6:5: picks["{plan.jobs[0].path}"]: duplicate key' in msg


def test_every_problem_is_reported_at_once(tmp_path: Path, plan: Plan) -> None:
    text = doc(plan, ",\n".join([entry(plan, 0, '"rating": 9, "status": "pick"'),
                                 entry(plan, 1, '"rating": 1, "status": "nope"')]))
    msg = hostile(tmp_path, plan, text)
    assert len(msg.splitlines()) == 2
    assert ":5:" in msg.splitlines()[0] and ":6:" in msg.splitlines()[1]


def test_deep_nesting_and_huge_numbers(tmp_path: Path, plan: Plan) -> None:
    msg = hostile(tmp_path, plan, "[" * 100_000 + "]" * 100_000)
    assert "nested too deep" in msg or "must be an object" in msg
    msg = hostile(tmp_path, plan, '{"version": ' + "9" * 5000 + "}")
    assert ":1:13:" in msg


def test_50_mb_file_refused_unread(tmp_path: Path, plan: Plan) -> None:
    file = tmp_path / "launch.picks.json"
    with open(file, "wb") as fh:
        fh.truncate(50 * 1024 * 1024)
    with pytest.raises(PicksError, match="is 52,428,800 bytes; a picks file may be at most"):
        load_picks(file, plan)
    with pytest.raises(PicksError):
        update_picks(file, plan, {paths(plan)[0]: ("pick", None)})
    assert file.stat().st_size == 50 * 1024 * 1024


def test_a_folder_a_pipe_or_an_unreadable_file(tmp_path: Path, plan: Plan) -> None:
    (tmp_path / "d.json").mkdir()
    with pytest.raises(PicksError, match="is a folder"):
        load_picks(tmp_path / "d.json", plan)
    os.mkfifo(tmp_path / "fifo.json")  # reading it would wait for a writer forever
    with pytest.raises(PicksError, match="is not a regular file"):
        load_picks(tmp_path / "fifo.json", plan)
    if os.geteuid() != 0:
        file = tmp_path / "launch.picks.json"
        file.write_text("{}")
        file.chmod(0)
        with pytest.raises(PicksError, match="cannot read"):
            load_picks(file, plan)


def test_a_hand_written_file_with_omitted_fields_reads(tmp_path: Path, plan: Plan) -> None:
    file = tmp_path / "launch.picks.json"
    file.write_text(json.dumps({"version": 1, "manifest": "launch", "picks": {
        plan.jobs[0].path: {"key": plan.jobs[0].key, "status": "pick"},
        plan.jobs[1].path: {"key": plan.jobs[1].key, "rating": None, "status": None},
    }}))
    got = load_picks(file, plan)
    assert dict(got.entries) == {plan.jobs[0].path: PickEntry(plan.jobs[0].key, "pick", None)}


# ---- two writers ---------------------------------------------------------------------------

def _writer(manifest: str, file: str, indexes: list[int], rating: int, start) -> None:
    plan = load_plan(manifest)
    start.wait()
    for n, i in enumerate(indexes):
        path = plan.jobs[i].path
        # every other change is a rating kept beside the status the other process sets
        if n % 2:
            update_picks(Path(file), plan, {path: (KEEP, rating)})
        else:
            update_picks(Path(file), plan, {path: ("pick" if rating == 5 else "reject", KEEP)})


def test_two_processes_never_lose_changes(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, MANIFEST.replace("seeds: [1, 2]",
                                                         "seeds: {start: 1, count: 60}"))
    plan = load_plan(str(manifest))
    assert len(plan.jobs) == 180
    file = tmp_path / "launch.picks.json"
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    # A sets a status then a rating on even jobs, B on odd ones: 360 changes, interleaved
    a_idx = [i for i in range(0, 180, 2) for _ in (0, 1)]
    b_idx = [i for i in range(1, 180, 2) for _ in (0, 1)]
    procs = [ctx.Process(target=_writer, args=(str(manifest), str(file), a_idx, 5, start)),
             ctx.Process(target=_writer, args=(str(manifest), str(file), b_idx, 1, start))]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = load_picks(file, plan)
    assert len(got.entries) == 180
    for i, job in enumerate(plan.jobs):
        want = ("pick", 5) if i % 2 == 0 else ("reject", 1)
        assert (got.entries[job.path].status, got.entries[job.path].rating) == want
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def _rater(manifest: str, file: str, start) -> None:
    plan = load_plan(manifest)
    start.wait()
    for job in plan.jobs[:90]:
        update_picks(Path(file), plan, {job.path: (KEEP, job.seed % 5 + 1)})


def test_two_processes_on_the_same_entries_keep_both_fields(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, MANIFEST.replace("seeds: [1, 2]",
                                                         "seeds: {start: 1, count: 60}"))
    plan = load_plan(str(manifest))
    file = tmp_path / "launch.picks.json"
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    rater = ctx.Process(target=_rater, args=(str(manifest), str(file), start))
    rater.start()
    start.set()
    # this process picks the entries the other rates, at the same time, in the same order
    for job in plan.jobs[:90]:
        update_picks(file, plan, {job.path: ("pick", KEEP)})
    rater.join(120)
    assert rater.exitcode == 0
    got = load_picks(file, plan)
    assert {p: (e.status, e.rating) for p, e in got.entries.items()} == \
        {j.path: ("pick", j.seed % 5 + 1) for j in plan.jobs[:90]}


def test_problems_deep_in_a_large_file_are_located_and_capped(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, MANIFEST.replace("seeds: [1, 2]",
                                                         "seeds: {start: 1, count: 400}"))
    plan = load_plan(str(manifest))
    file = tmp_path / "launch.picks.json"
    update_picks(file, plan, {j.path: ("pick", 2) for j in plan.jobs})
    lines = file.read_text().splitlines()
    target = next(i for i, line in enumerate(lines) if '"fox/399.png"' in line)
    lines[target] = lines[target].replace('"rating": 2', '"rating": 7')
    file.write_text("\n".join(lines) + "\n")
    with pytest.raises(PicksError) as info:
        load_picks(file, plan)
    col = lines[target].index('"rating": 7') + len('"rating": ') + 1
    assert str(info.value) == (f'{file}:{target + 1}:{col}: picks["fox/399.png"].rating: must '
                               "be a whole number from 1 to 5, or null; got a number 7")
    # the manifest's matrix renamed: every city path is gone, each one reported, the
    # message capped
    renamed = write_manifest(tmp_path, MANIFEST.replace("seeds: [1, 2]",
                                                        "seeds: {start: 1, count: 400}")
                             .replace("[dawn, dusk]", "[sunrise, sunset]"))
    with pytest.raises(PicksError) as info:
        load_picks(file, load_plan(str(renamed)))
    assert len(info.value.problems) == 801  # and the rating above
    shown = str(info.value).splitlines()
    assert len(shown) == picks.MAX_SHOWN + 1 and shown[-1] == "... and 601 more problems"


def _reference_dumps(p: picks.Picks) -> str:
    """The file text built with a json.dumps per value: what dumps must give byte for byte."""
    head = ('{\n  "version": 1,\n'
            f'  "manifest": {json.dumps(p.manifest, ensure_ascii=False)},\n')
    if not p.entries:
        return head + '  "picks": {}\n}\n'
    lines = [f"    {json.dumps(path, ensure_ascii=False)}: "
             f"{json.dumps(e.as_dict(), ensure_ascii=False)}"
             for path, e in sorted(p.entries.items())]
    return head + '  "picks": {\n' + ",\n".join(lines) + "\n  }\n}\n"


def test_dumps_escapes_as_json_does() -> None:
    key = "ab" * 32
    entries = {
        "plain/1.png": PickEntry(key, "pick", 5),
        'say "hi"/1.png': PickEntry(key, None, 1),
        "caf\u00e9/\u732b/\U0001f98a.png": PickEntry(key, "reject", None),
        "line\u2028sep/tab\there.png": PickEntry(key, "pick", None),
        "back\\slash/\x7f.png": PickEntry('odd "key"', "reject", 3),
        # values a checked file never holds are still written as json.dumps writes them
        "odd/1.png": PickEntry(key, "maybe", True),  # type: ignore[arg-type]
        "odd/2.png": PickEntry(key, None, 2.0),  # type: ignore[arg-type]
    }
    made = picks.make_picks('the "launch" \u00e9', entries)
    assert picks.dumps(made) == _reference_dumps(made)
    assert '"rating": true' in picks.dumps(made) and '"rating": 2.0' in picks.dumps(made)
    assert picks.dumps(picks.make_picks("x", {})) == _reference_dumps(picks.make_picks("x", {}))


def test_an_unchanged_file_is_not_rewritten(tmp_path: Path, plan: Plan) -> None:
    file = tmp_path / "launch.picks.json"
    p = paths(plan)
    update_picks(file, plan, {p[0]: ("pick", 4), p[1]: ("reject", None)})
    inode, text = file.stat().st_ino, file.read_bytes()
    update_picks(file, plan, {p[0]: ("pick", KEEP), p[1]: (KEEP, None)})
    assert file.stat().st_ino == inode and file.read_bytes() == text
    update_picks(file, plan, {p[0]: ("pick", 3)})
    assert file.stat().st_ino != inode and b'"rating": 3' in file.read_bytes()


def test_a_file_changed_after_a_write_is_read_afresh(tmp_path: Path, plan: Plan) -> None:
    file = tmp_path / "launch.picks.json"
    p = paths(plan)
    written = update_picks(file, plan, {p[0]: ("pick", 4), p[1]: ("reject", 2)})
    assert load_picks(file, plan) == written
    # another writer's change, of the same length: seen on the next read
    text = file.read_text()
    file.write_text(text.replace('"rating": 4', '"rating": 5'))
    assert load_picks(file, plan).entries[p[0]].rating == 5
    # a hand edit that breaks it: refused on every read, and never overwritten
    broken = text.replace('"rating": 4', '"rating": 9')
    file.write_text(broken)
    for _ in range(2):
        with pytest.raises(PicksError, match=r"rating: must be a whole number"):
            load_picks(file, plan)
    with pytest.raises(PicksError, match=r"rating: must be a whole number"):
        update_picks(file, plan, {p[2]: ("pick", 1)})
    assert file.read_text() == broken
    # mended to the text written before: the picks written then
    file.write_text(text)
    assert load_picks(file, plan) == written
    after = update_picks(file, plan, {p[2]: ("pick", 1)})
    assert after.entries[p[0]] == written.entries[p[0]] and after.entries[p[2]].rating == 1


def test_picks_read_again_are_what_a_fresh_read_gives(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, MANIFEST.replace("seeds: [1, 2]",
                                                         "seeds: {start: 1, count: 300}"))
    plan = load_plan(str(manifest))
    file = tmp_path / "launch.picks.json"
    for n, job in enumerate(plan.jobs[:400]):
        update_picks(file, plan, {job.path: (("pick", "reject", None)[n % 3], 1 + n % 5)})
    remembered = load_picks(file, plan)
    picks._READ_CACHE.clear()
    fresh = load_picks(file, plan)
    assert fresh == remembered and list(fresh.entries) == list(remembered.entries)
    assert picks.dumps(fresh) == file.read_text() == _reference_dumps(fresh)
    # another plan object is checked afresh: a renamed matrix makes those paths unknown
    renamed = load_plan(str(write_manifest(tmp_path, MANIFEST.replace(
        "seeds: [1, 2]", "seeds: {start: 1, count: 300}").replace("dusk", "noon"))))
    with pytest.raises(PicksError, match="is not an image of the plan"):
        load_picks(file, renamed)
