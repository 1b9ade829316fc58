"""What the commands print: safe on a terminal, quiet when the reader goes away or the disk
fills."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imagebatch.commands.preview import plan_table
from imagebatch.errors import printable
from imagebatch.planning.manifest import load_plan

ROOT = Path(__file__).resolve().parent.parent
BIG = """version: 1
name: big
jobs:
  - id: hill
    prompt: "a hill at dawn"
    seeds: {start: 1, count: 4000}
"""


def test_printable_escapes_terminal_controls_and_keeps_text():
    assert printable("red \x1b[31malert\x07 \x9b2J ok") == r"red \x1b[31malert\x07 \x9b2J ok"
    assert printable("café 東京 ✓\ttab") == "café 東京 ✓\ttab"


def test_plan_table_never_prints_an_escape_sequence(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text('version: 1\nname: esc\njobs:\n  - id: a\n'
                        '    prompt: "innocent \\e]0;owned\\a \\e[2J cleared"\n    seeds: [1]\n')
    table = plan_table(load_plan(str(manifest)), 200)
    assert "\x1b" not in table and "\x07" not in table
    assert r"innocent \x1b]0;owned\x07 \x1b[2J cleared" in table


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imagebatch", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_plan_into_a_closed_pipe_stops_quietly(tmp_path):
    (tmp_path / "big.yaml").write_text(BIG)
    proc = _cli("plan", "big.yaml", cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader went away (`| head -1` once it has its line)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141
    assert err == ""  # no traceback, no "Exception ignored" at exit


def test_a_broken_pipe_that_is_not_the_output_is_not_taken_for_a_reader_gone(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    # standard output and error are files here, still open: exit 141 in silence would hide
    # the fault (a worker's or a child's pipe), so it is raised as the error it is
    from imagebatch import cli

    def broken(_args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setitem(cli.COMMANDS, "plan", broken)
    with pytest.raises(BrokenPipeError):
        cli.main(["plan", "m.yaml"])
    assert capfd.readouterr() == ("", "")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_to_a_full_device_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "big.yaml").write_text(BIG)
    with open("/dev/full", "wb") as full:
        res = subprocess.run([sys.executable, "-m", "imagebatch", "plan", "big.yaml", "--json"],
                             cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True,
                             timeout=60, check=False)
    assert res.returncode == 2
    assert res.stderr == "imagebatch: cannot write the output: No space left on device\n"


def test_mistyped_options_commands_and_manifests_get_a_did_you_mean(tmp_path, capsys):
    from imagebatch.cli import main

    (tmp_path / "example.yaml").write_text("version: 1\njobs:\n  - {id: a, prompt: p}\n")
    assert main(["run", "--concurency", "3", str(tmp_path / "example.yaml")]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --concurency" in err
    assert "--concurency: did you mean --concurrency?" in err
    assert main(["rnu", "x"]) == 2
    assert "did you mean 'run'?" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "exampel.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"no such manifest file (did you mean {str(tmp_path / 'example.yaml')!r}?)" in err
    assert main(["plan", str(tmp_path / "zzz.yaml")]) == 2
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no guess


def test_show_is_indented_on_a_terminal_and_one_line_for_a_script(tmp_path, capsys):
    import io
    import json

    from PIL import Image

    from imagebatch.commands.status import show_command
    from imagebatch.storage.metadata import embed

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    body = '{"model":"stable-image-ultra","prompt":"a fox","seed":3}'
    (tmp_path / "a.png").write_bytes(embed(buf.getvalue(), body))

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    piped, tty = io.StringIO(), Tty()
    show_command(str(tmp_path / "a.png"), out=piped)
    show_command(str(tmp_path / "a.png"), out=tty)
    assert piped.getvalue() == body + "\n"  # the body to send again, as one line
    assert tty.getvalue().startswith("{\n  \"model\"") and json.loads(tty.getvalue()) == \
        json.loads(body)
