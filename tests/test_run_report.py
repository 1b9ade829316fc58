"""The typed run report: its renderings (pure), the exit codes the command line gives it,
and the import direction that keeps `validate` free of the HTTP code."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from imagebatch.cli import report_run
from imagebatch.errors import AuthError, StoreError
from imagebatch.running.summary import (
    Failure,
    PlanReport,
    RunReport,
    markdown,
    plan_doc,
    run_json,
    text,
)

ROOT = Path(__file__).resolve().parent.parent


def _plan(**kw) -> PlanReport:
    base = PlanReport(name="demo", manifest="demo.yaml", backend="local", shard=None,
                      out="outputs/demo", planned=4, succeeded=2, skipped=1, failed=1, pending=0,
                      requests=5, seconds=1.25, interrupted=False,
                      failures=(Failure("k1", "fox/2.png", "prompt refused"),))
    return replace(base, **kw)


def test_summary_json_keeps_its_keys_in_order():
    doc = plan_doc(_plan())
    assert list(doc) == ["name", "manifest", "backend", "shard", "out", "planned", "succeeded",
                         "skipped", "failed", "pending", "requests", "seconds", "interrupted",
                         "failures", "image_requests", "price", "cost", "budget",
                         "stopped_by_budget", "selection", "held", "flagged"]
    assert (doc["price"], doc["cost"], doc["budget"], doc["stopped_by_budget"]) == \
        (None, None, None, False)  # no price: the cost is unknown (null), never 0
    assert doc["failures"] == [{"key": "k1", "path": "fox/2.png", "reason": "prompt refused"}]
    merged = plan_doc(_plan(merged_from=("a", "b")), version="1.2.3")
    assert merged["merged_from"] == ["a", "b"] and merged["version"] == "1.2.3"


def test_run_json_is_one_object_for_one_plan_and_a_list_for_several():
    one = RunReport((_plan(),), version="9")
    assert json.loads(run_json(one))["version"] == "9"
    two = RunReport((_plan(), _plan(name="other")))
    assert [d["name"] for d in json.loads(run_json(two))] == ["demo", "other"]


def test_text_and_markdown_say_the_same_counts():
    report = RunReport((_plan(pending=1, sheets=("outputs/demo/contact-sheet.png",),
                              index="outputs/demo/index.html"),))
    assert text(report).splitlines() == [
        ("demo: 2 made, 1 already done, 1 failed, 1 not run of 4 in 1.2 s "
         "(5 requests, backend local)"),
        "  0 image requests sent, 2 images made, cost unknown (no price set: --price or "
        "IMAGEBATCH_PRICE)",
        "  FAILED fox/2.png: prompt refused",
        "  outputs: outputs/demo",
    ]
    md = markdown(report)
    assert "| `demo` | 4 | 2 | 1 | 1 | 1 | 5 | 1.25 |" in md
    assert "`outputs/demo/contact-sheet.png`" in md and "index: `outputs/demo/index.html`" in md
    assert "| `fox/2.png` | prompt refused |" in md


@pytest.mark.parametrize(("report", "code"), [
    (RunReport((_plan(failed=0, failures=()),)), 0),
    (RunReport((_plan(),)), 1),
    (RunReport((_plan(failed=0, failures=()),), interrupted=True), 130),
    (RunReport((_plan(),), interrupted=True,
               config_error=AuthError("the service rejected the key (401): check X_KEY")), 2),
])
def test_the_command_line_turns_the_report_into_the_exit_code(report, code):
    out, err = io.StringIO(), io.StringIO()
    assert report_run(report, as_json=False, out=out, err=err) == code
    assert out.getvalue().startswith("demo: ")
    if code == 2:
        assert err.getvalue().strip() == (
            "imagebatch: the service rejected the key (401): check X_KEY")


def test_a_failed_write_is_raised_after_the_summary_is_printed():
    out, err = io.StringIO(), io.StringIO()
    report = RunReport((_plan(),), store_error=StoreError("cannot write x: No space left"))
    with pytest.raises(StoreError, match="No space left"):
        report_run(report, as_json=True, out=out, err=err)
    assert json.loads(out.getvalue())["name"] == "demo" and err.getvalue().startswith("demo: ")


def test_validate_and_plan_load_no_http_code(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\njobs:\n  - id: a\n    prompt: p\n    seeds: 1\n")
    script = ("import sys\nfrom imagebatch.cli import main\n"
              f"assert main(['validate', {str(manifest)!r}]) == 0\n"
              f"assert main(['plan', {str(manifest)!r}, '--json']) == 0\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('aiohttp', 'imagebatch') and m in ('aiohttp', 'imagebatch.service.server', "
              "'imagebatch.running.client', 'imagebatch.running.run')))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_metadata_errors_are_under_the_one_root_and_still_value_errors():
    from imagebatch.errors import ImagebatchError
    from imagebatch.storage.metadata import MetadataError

    assert issubclass(MetadataError, ImagebatchError) and issubclass(MetadataError, ValueError)
