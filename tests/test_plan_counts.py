"""What a run would act on: `plan` ends with jobs, done, restorable, to send and the cost at
the price (planning/counts.py); `plan --counts-json` gives them to programs; `plan --json`
keeps its array."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runner_helpers import make_plan
from sweep_helpers import MANIFEST

from imagebatch.cli import main
from imagebatch.commands.preview import plan_json
from imagebatch.planning.costs import parse_amount
from imagebatch.planning.counts import count_plan
from imagebatch.planning.manifest import load_plan


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(MANIFEST)
    return path


# -- the pure counts -----------------------------------------------------------------------------

def test_counts_without_a_cache_or_a_price():
    jobs = make_plan(5).jobs
    counts = count_plan(jobs, {jobs[0].key, jobs[3].key}, None, None)
    assert (counts.jobs, counts.done, counts.restorable, counts.to_send) == (5, 2, None, 3)
    assert counts.cost == "unknown (no price set: --price or IMAGEBATCH_PRICE)"
    assert counts.as_dict() == {"jobs": 5, "done": 2, "restorable": None, "to_send": 3, "held": 0,
                                "price": None, "cost": None}
    assert counts.lines() == [
        "a run would act on 5 jobs: 2 already done, no cache set, 3 to send",
        "estimated cost: unknown (no price set: --price or IMAGEBATCH_PRICE)"]


def test_restorable_jobs_are_not_sent_and_done_ones_are_not_restorable():
    jobs = make_plan(6).jobs
    done = {jobs[0].key}
    cached = {jobs[0].key, jobs[1].key, jobs[2].key, "a key of no job of this plan"}
    counts = count_plan(jobs, done, cached, parse_amount("0.08", "--price"))
    assert (counts.done, counts.restorable, counts.to_send) == (1, 2, 3)
    assert counts.cost == "$0.24"
    assert counts.as_dict()["cost"] == "0.24" and counts.as_dict()["price"] == "0.08"
    assert counts.lines()[0] == ("a run would act on 6 jobs: 1 already done, 2 restorable "
                                 "from the cache, 3 to send")
    assert counts.lines()[1].startswith("estimated cost: $0.24 (3 requests at $0.08 an image")


def test_an_empty_cache_is_zero_restorable_not_no_cache():
    jobs = make_plan(2).jobs
    assert count_plan(jobs, set(), set(), None).restorable == 0
    assert count_plan(jobs, set(), None, None).restorable is None


def test_a_price_of_zero_costs_zero_and_the_currency_is_kept():
    jobs = make_plan(4).jobs
    assert count_plan(jobs, set(), None, parse_amount("0", "--price")).cost == "$0.00"
    assert count_plan(jobs, set(), None, parse_amount("0.5 EUR", "--price")).cost == "2.00 EUR"


# -- through the command line -------------------------------------------------------------------

def test_plan_counts_what_is_done_on_disk_and_prices_the_rest(manifest, tmp_path, capsys,
                                                                  monkeypatch):
    out = tmp_path / "outputs"
    assert main(["run", str(manifest), "--out", str(out), "--only", "boat", "--no-post"]) == 0
    capsys.readouterr()
    assert main(["plan", str(manifest), "--out", str(out), "--price", "0.08"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == "a run would act on 8 jobs: 2 already done, no cache set, 6 to send"
    assert lines[-1].startswith("estimated cost: $0.48 (6 requests at $0.08 an image")
    # judged against the backend `run` would use: a URL's images are not the local server's
    monkeypatch.setenv("DIFFUSION_URL", "https://example.invalid")
    monkeypatch.setenv("DIFFUSION_KEY", "k")
    assert main(["plan", str(manifest), "--out", str(out), "--counts-json"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 0
    assert main(["plan", str(manifest), "--out", str(out), "--counts-json", "--local"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 2


def test_counts_json_is_one_object(manifest, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMAGEBATCH_PRICE", "$0.05")
    assert main(["plan", str(manifest), "--out", str(tmp_path / "o"), "--counts-json",
                 "--first-seeds", "1", "--shard", "1/1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"name": "sweep", "manifest": str(manifest), "backend": "local",
                   "out": str(tmp_path / "o" / "sweep"), "shard": "1/1",
                   "selection": {"only": [], "first_seeds": 1},
                   "jobs": 3, "done": 0, "restorable": None, "to_send": 3, "held": 0,
                   "price": "0.05", "cost": "0.15"}


def test_plan_json_keeps_its_array_exactly(manifest, capsys, monkeypatch):
    monkeypatch.setenv("IMAGEBATCH_PRICE", "0.08")
    assert main(["plan", str(manifest), "--json"]) == 0
    printed = capsys.readouterr().out
    assert printed == plan_json(load_plan(str(manifest)))
    assert isinstance(json.loads(printed), list) and "cost" not in printed


@pytest.mark.parametrize(("args", "message"), [
    (["--price", "abc"], "--price: 'abc' is not an amount of money"),
    (["--price", "-1"], "is not an amount of money"),
    (["--json", "--counts-json"], "not allowed with argument"),
])
def test_bad_plan_input_exits_2(manifest, capsys, args, message):
    assert main(["plan", str(manifest), *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
