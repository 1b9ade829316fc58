"""The checkers some tests run on what imagebatch writes: check-jsonschema (workflows against
GitHub's schema, manifests and the schema itself) and zizmor (workflow security).

check-jsonschema runs in the test process, through the click command its script calls: a
fresh process spends about half a CPU-second importing it before a check of a twentieth of
that, and the suite runs it a dozen times. zizmor is a compiled program, run as one."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """The path of the console script `name` installed beside this Python, or skip the test."""
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed")
    return str(path)


def check_jsonschema(*args: str) -> tuple[int, str]:
    """`check-jsonschema ARGS`: (its exit status, what it printed on stdout and stderr)."""
    main = pytest.importorskip("check_jsonschema").main
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        try:
            main(args=list(args), prog_name="check-jsonschema")
        except SystemExit as exc:  # click's standalone mode always ends in one
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            code = 0
    return code, said.getvalue()
