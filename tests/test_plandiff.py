"""The pure plan diff (imagebatch.planning.plandiff), loading a manifest from bytes, and the
diff's renderings (imagebatch.commands.diffreport), the Markdown rendered to HTML."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from diff_helpers import LAUNCH
from markdown_it import MarkdownIt

from imagebatch.commands import diffreport
from imagebatch.commands.diffreport import FROM_CHANGE, DiffReport, ManifestDiff
from imagebatch.errors import ManifestError
from imagebatch.planning.costs import Price
from imagebatch.planning.manifest import load_plan, load_plan_bytes
from imagebatch.planning.plan import Plan
from imagebatch.planning.plandiff import (
    CHANGED,
    MOVED,
    REMOVED,
    PlanDiff,
    change_groups,
    diff_plans,
)
from imagebatch.storage.picks import PickEntry


def plan(text: str, source: str = "m.yaml") -> Plan:
    return load_plan_bytes(text.encode(), source)


def diff(old: str | None, new: str | None, decisions=None) -> PlanDiff:
    return diff_plans(plan(old) if old else None, plan(new) if new else None, decisions)


def paths(jobs) -> list[str]:
    return [j.path for j in jobs]


# --- the diff ------------------------------------------------------------------------------


def test_the_same_manifest_is_no_change():
    d = diff(LAUNCH, LAUNCH)
    assert d.is_empty and d.unchanged == 7 and d.old_total == d.new_total == 7
    assert d.regenerated == ()


def test_a_prompt_edit_changes_every_job_of_that_entry_and_nothing_else():
    d = diff(LAUNCH, LAUNCH.replace("A paper boat", "A paper boat at sea"))
    assert paths(c.new for c in d.changed) == ["boat/5.png"]
    (c,) = d.changed
    assert [(f.field, f.old, f.new) for f in c.fields] == [
        ("prompt", "A paper boat", "A paper boat at sea")]
    assert c.old.key != c.new.key and c.old.path == c.new.path
    assert not d.added and not d.removed and not d.moved and d.unchanged == 6
    assert paths(d.regenerated) == ["boat/5.png"]


def test_added_and_removed_jobs():
    new = LAUNCH.replace('  - id: boat\n    prompt: "A paper boat"\n    seeds: [5]\n',
                       '  - id: kite\n    prompt: "A red kite"\n    seeds: [7, 8]\n')
    d = diff(LAUNCH, new)
    assert paths(d.added) == ["kite/7.png", "kite/8.png"]
    assert paths(d.removed) == ["boat/5.png"]
    assert not d.changed and not d.moved and d.unchanged == 6
    assert (d.old_total, d.new_total) == (7, 8)


def test_a_seed_list_grown_by_one_adds_one_job_per_variant():
    d = diff(LAUNCH, LAUNCH.replace("seeds: [1, 2, 3]", "seeds: [1, 2, 3, 4]"))
    assert paths(d.added) == ["fox/ink/4.png", "fox/clay/4.png"]
    assert not d.removed and not d.changed and not d.moved and d.unchanged == 7


def test_a_start_count_seed_range_grown_by_one_adds_one_job():
    old = LAUNCH.replace("seeds: [5]", "seeds: {start: 10, count: 3}")
    d = diff(old, old.replace("count: 3", "count: 4"))
    assert paths(d.added) == ["boat/13.png"] and d.unchanged == 9


def test_a_matrix_axis_reordered_makes_the_same_jobs_so_no_change():
    reordered = LAUNCH.replace("[ink, clay]", "[clay, ink]")
    assert [j.path for j in plan(reordered).jobs] != [j.path for j in plan(LAUNCH).jobs]
    d = diff(LAUNCH, reordered)
    assert d.is_empty and d.unchanged == 7


def test_jobs_listed_in_another_order_are_no_change():
    fox, boat = LAUNCH.split("  - id: boat\n")
    head, fox_entry = fox.split("jobs:\n")
    swapped = f"{head}jobs:\n  - id: boat\n{boat}{fox_entry}"
    assert plan(swapped).jobs[0].id == "boat"
    assert diff(LAUNCH, swapped).is_empty


def test_a_renamed_job_is_moved_not_added_and_removed():
    d = diff(LAUNCH, LAUNCH.replace("id: boat", "id: paper-boat"))
    assert [(m.old.path, m.new.path) for m in d.moved] == [("boat/5.png", "paper-boat/5.png")]
    assert d.moved[0].old.key == d.moved[0].new.key  # the same request
    assert not d.added and not d.removed and not d.changed
    # a run makes it again: an image is done only at the path its plan gives it
    assert paths(d.regenerated) == ["paper-boat/5.png"]


def test_a_renamed_job_with_an_edited_prompt_is_removed_and_added():
    new = LAUNCH.replace("id: boat", "id: ship").replace("A paper boat", "A ship")
    d = diff(LAUNCH, new)
    assert paths(d.added) == ["ship/5.png"] and paths(d.removed) == ["boat/5.png"]
    assert not d.moved


def test_a_changed_model_changes_every_job():
    new = LAUNCH.replace("name: launch\n", "name: launch\nmodel: another-model\n")
    d = diff(LAUNCH, new)
    assert len(d.changed) == 7 and d.unchanged == 0
    assert {f.field for c in d.changed for f in c.fields} == {"model"}


def test_no_old_plan_means_every_job_is_added_and_no_new_plan_every_job_removed():
    d = diff(None, LAUNCH)
    assert d.old_total is None and len(d.added) == 7 and d.unchanged == 0
    gone = diff(LAUNCH, None)
    assert len(gone.removed) == 7 and gone.new_total == 0 and gone.regenerated == ()


def test_change_groups_gather_one_edit_across_seeds():
    new = LAUNCH.replace("A fox in the snow, {style}", "A fox in the snow at dusk, {style}")
    groups = change_groups(diff(LAUNCH, new).changed)
    assert [len(g.jobs) for g in groups] == [3, 3]  # one group per style: the prompts differ
    assert [f.new for g in groups for f in g.fields] == [
        "A fox in the snow at dusk, ink", "A fox in the snow at dusk, clay"]


# --- stale picks ---------------------------------------------------------------------------


def _entries(p: Plan, **decided) -> dict[str, PickEntry]:
    keys = {j.path: j.key for j in p.jobs}
    return {path: PickEntry(keys.get(path, "0" * 64), status, rating)
            for path, (status, rating) in decided.items()}


def test_picks_on_changed_removed_and_moved_jobs_go_stale_and_the_others_do_not():
    old = plan(LAUNCH)
    new_text = (LAUNCH.replace("A fox in the snow, {style}", "A fox at dawn, {style}")
                .replace("seeds: [1, 2, 3]", "seeds: [1, 2]"))
    renamed = plan(new_text.replace("id: boat", "id: paper-boat"))
    entries = {
        **_entries(old, **{"fox/ink/1.png": ("pick", 5), "fox/clay/3.png": ("reject", None),
                           "boat/5.png": (None, 4)}),
    }
    d = diff_plans(old, renamed, entries)
    stale = {s.path: (s.why, s.what, s.moved_to) for s in d.stale_picks}
    assert stale == {
        "fox/ink/1.png": (CHANGED, "pick, rated 5", None),
        "fox/clay/3.png": (REMOVED, "reject", None),  # seed 3 is gone
        "boat/5.png": (MOVED, "rated 4", "paper-boat/5.png"),
    }


def test_a_pick_that_was_stale_before_the_change_is_not_this_changes_doing():
    old = plan(LAUNCH)
    entry = PickEntry("f" * 64, "pick", None)  # made on a picture no plan here has
    new = plan(LAUNCH.replace("A paper boat", "A paper boat at sea"))
    assert diff_plans(old, new, {"boat/5.png": entry}).stale_picks == ()
    # a pick on an unchanged job stays, a decision with nothing in it is no pick
    keys = {j.path: j.key for j in old.jobs}
    fresh = {"fox/ink/1.png": PickEntry(keys["fox/ink/1.png"], "pick", None),
             "boat/5.png": PickEntry(keys["boat/5.png"], None, None)}
    assert diff_plans(old, new, fresh).stale_picks == ()


def test_with_no_old_plan_every_pick_that_does_not_match_the_new_plan_is_named():
    new = plan(LAUNCH)
    d = diff_plans(None, new, {"boat/5.png": PickEntry("f" * 64, "pick", None)})
    assert [(s.path, s.why) for s in d.stale_picks] == [("boat/5.png", CHANGED)]


# --- loading from bytes --------------------------------------------------------------------


def test_load_plan_bytes_is_load_plan(tmp_path):
    path = tmp_path / "launch.yaml"
    path.write_text(LAUNCH)
    from_file = load_plan(str(path))
    from_bytes = load_plan_bytes(LAUNCH.encode(), "main:art/launch.yaml")
    assert [(j.path, j.key, j.body) for j in from_file.jobs] == \
        [(j.path, j.key, j.body) for j in from_bytes.jobs]
    assert from_bytes.source == "main:art/launch.yaml"


@pytest.mark.parametrize(("data", "where", "what"), [
    (LAUNCH.replace("seeds: [5]", "seeds: [5, 5]").encode(), "main:m.yaml:11:", "already"),
    (LAUNCH.replace("prompt: \"A paper boat\"", "promt: x").encode(), "main:m.yaml:10:5:",
     "did you mean 'prompt'"),
    (b"version: 1\njobs:\n  - id: a\n    prompt: \"\xff\"\n", "main:m.yaml:4:14:", "UTF-8"),
    (b"version: 1\njobs: [\n", "main:m.yaml:3:1:", "YAML syntax"),
])
def test_load_plan_bytes_locates_problems_in_the_source_it_is_given(data, where, what):
    with pytest.raises(ManifestError) as info:
        load_plan_bytes(data, "main:m.yaml")
    lines = str(info.value).splitlines()
    assert any(line.startswith(where) and what in line for line in lines), lines


def test_load_plan_bytes_refuses_too_much_unread():
    with pytest.raises(ManifestError, match="at most"):
        load_plan_bytes(b"#" * (8 * 1024 * 1024 + 1), "main:m.yaml")


# --- the renderings ------------------------------------------------------------------------

NASTY = 'A fox | with `ticks` and ``two``, <script>alert(1)</script> @octocat [x](http://e.com)'


def _report(old: str | None, new: str, price: Price | None = None, **kw) -> DiffReport:
    old_plan = plan(old) if old else None
    new_plan = plan(new)
    d = diff_plans(old_plan, new_plan, kw.pop("decisions", None))
    m = ManifestDiff(manifest="manifests/launch.yaml", name="launch",
                     old_source="main:manifests/launch.yaml",
                     old_state=kw.pop("old_state", "ok" if old else "missing"), new_state="ok",
                     diff=d, to_send=len(d.regenerated), to_send_from=FROM_CHANGE,
                     outputs="outputs/launch", picks_file="manifests/launch.picks.json", **kw)
    return DiffReport(against="main (merge base 0123456789ab)", against_doc={}, price=price,
                      manifests=(m,))


def _html(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(markdown)


def test_markdown_renders_a_table_per_manifest_and_the_prompts_old_and_new():
    new = LAUNCH.replace("A paper boat", NASTY).replace("seeds: [1, 2, 3]", "seeds: [1, 2, 3, 4]")
    old_plan = plan(LAUNCH)
    keys = {j.path: j.key for j in old_plan.jobs}
    report = _report(LAUNCH, new, Price(Decimal("0.08")),
                     decisions={"boat/5.png": PickEntry(keys["boat/5.png"], "pick", 5)})
    md = diffreport.markdown(report)
    html = _html(md)
    tables = re.findall(r"<table>.*?</table>", html, re.DOTALL)
    assert len(tables) == 2  # the counts, and the manifest's own
    counts = tables[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", counts)
    assert cells == ["<code>manifests/launch.yaml</code>", "7 → 9", "2", "0", "1", "0", "6",
                     "3", "$0.24", "1"]
    rows = re.findall(r"<tr>\s*<td>(.*?)</td>", tables[1])
    assert rows == ["added", "changed"]  # a row per manifest entry and kind of change
    assert "<td><code>fox</code></td>\n<td>4</td>\n<td style=\"text-align:right\">2</td>" in \
        tables[1]
    # every row of the manifest's table has its five cells: the | in the prompt split none
    assert all(len(re.findall(r"<td", row)) == 5
               for row in re.findall(r"<tr>.*?</tr>", tables[1], re.DOTALL)[1:])
    # the prompts old and new, in a diff block that is text: no tag, link or mention made
    block = re.search(r'<pre><code class="language-diff">(.*?)</code></pre>', html, re.DOTALL)
    assert block is not None
    assert "- A paper boat\n" in block.group(1)
    assert "+ A fox | with `ticks` and ``two``, &lt;script&gt;" in block.group(1)
    assert "<script" not in html and "<a " not in html
    assert "@octocat" in html and "<strong>1 pick goes stale</strong>" in html
    assert "<code>boat/5.png</code>: pick, rated 5; its job changed" in html
    assert "Price per image: $0.08 (an estimate)" in html


def test_markdown_code_spans_hold_any_text():
    for value in ["plain", "a|b", "`tick", "tick`", "a ``double`` b", " space ", "<b>x</b>"]:
        html = _html(f"| x |\n| --- |\n| {diffreport._code(value)} |\n")
        cell = re.search(r"<td>(.*?)</td>", html, re.DOTALL)
        assert cell is not None
        inner = re.fullmatch(r"<code>(.*)</code>", cell.group(1), re.DOTALL)
        assert inner is not None, (value, html)
        shown = inner.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        assert shown == value, (value, html)


def test_markdown_without_a_price_says_unknown_never_zero():
    md = diffreport.markdown(_report(LAUNCH, LAUNCH.replace("A paper boat", "A boat")))
    assert "unknown" in md and "$0" not in md
    assert "No price set" in md


def test_markdown_of_an_invalid_old_manifest_shows_its_problems_and_every_job_added():
    report = _report(None, LAUNCH, old_state="invalid",
                     problems=("main:manifests/launch.yaml:3:7: seeds: must be a list",),
                     notes=("main:manifests/launch.yaml has the problems above",))
    md = diffreport.markdown(report)
    html = _html(md)
    assert "cannot be read as a manifest" in html
    assert "main:manifests/launch.yaml:3:7: seeds: must be a list" in html
    cells = re.findall(r"<td[^>]*>(.*?)</td>", re.findall(r"<table>.*?</table>", html,
                                                          re.DOTALL)[0])
    assert cells[1] == "– → 7" and cells[2] == "7"


def test_markdown_too_long_for_a_comment_keeps_the_counts():
    seeds = "seeds: {start: 1, count: 2000}"
    old = LAUNCH.replace("seeds: [1, 2, 3]", seeds)
    new = old.replace("A fox in the snow, {style}", "A fox, " + "very " * 250 + "{style}")
    report = _report(old, new)
    md = diffreport.markdown(report)
    assert len(md) <= diffreport.MAX_MARKDOWN_CHARS
    assert "4000" in md  # the changed count is still in the table


def test_large_diffs_are_cut_to_a_bounded_table():
    entries = "".join(f'  - id: job{i}\n    prompt: "p {i}"\n    seeds: [1]\n' for i in range(45))
    old = LAUNCH + entries
    new = old.replace('prompt: "p ', 'prompt: "q ')
    md = diffreport.markdown(_report(old, new))
    assert "| … | 5 more rows |" in md and "… and 33 more changes" in md
    assert md.count("\n| changed |") == diffreport.MAX_ROWS
    # a sweep is one row, however many variants and seeds it has
    sweep = LAUNCH.replace("[ink, clay]", "[" + ", ".join(f"s{i}" for i in range(30)) + "]")
    md = diffreport.markdown(_report(sweep, sweep.replace("in the snow", "in the rain")))
    assert md.count("\n| changed |") == 1 and "| 1, 2, 3 | 90 |" in md


def test_json_lists_every_job_and_the_cost():
    new = LAUNCH.replace("A paper boat", "A boat").replace("id: fox", "id: vixen")
    doc = json.loads(diffreport.json_text(_report(LAUNCH, new, Price(Decimal("0.1")))))
    (m,) = doc["manifests"]
    assert m["counts"] == {"added": 0, "removed": 0, "changed": 1, "moved": 6,
                           "unchanged": 0, "stale_picks": 0}
    assert m["changed"][0]["fields"] == [{"field": "prompt", "old": "A paper boat",
                                          "new": "A boat"}]
    assert m["to_send"] == 7 and m["cost"] == "0.70" and doc["totals"]["cost"] == "0.70"
    assert doc["price"] == {"amount": "0.10", "text": "$0.10"}


def test_text_names_each_job_and_the_prompt_old_and_new():
    text = diffreport.text(_report(LAUNCH, LAUNCH.replace("A paper boat", "A boat")))
    assert "7 -> 7 jobs: 0 added, 0 removed, 1 changed, 0 moved, 6 unchanged" in text
    assert "  changed  boat/5.png  (prompt)" in text
    assert "prompt: - A paper boat" in text and "+ A boat" in text
    assert "cost unknown" in text
