"""tools/make_venv.py, how `make` creates .venv: pip copied from the running Python's own
where it can be, the standard `python -m venv` otherwise."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "make_venv.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_venv", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ask(python: Path, code: str) -> str:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_venv_gets_this_pythons_pip_and_its_commands(tmp_path: Path) -> None:
    target = tmp_path / "venv"
    done = subprocess.run([sys.executable, str(SCRIPT), str(target)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    python = target / "bin" / "python"
    # a virtual environment of its own (not this one), whose pip is its own copy and runs
    assert Path(_ask(python, "import sys; print(sys.prefix)")) == target
    assert _ask(python, "import sys; print(sys.prefix != sys.base_prefix)") == "True"
    import pip

    for argv in ([str(python), "-m", "pip", "--version"],
                 [str(target / "bin" / "pip"), "--version"]):
        said = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        assert said.startswith(f"pip {pip.__version__} from {target}/lib/"), said
    major, minor = sys.version_info[:2]
    assert {p.name for p in (target / "bin").glob("pip*")} == {
        "pip", f"pip{major}", f"pip{major}.{minor}"}
    # pip alone, as `python -m venv` makes it from Python 3.12 on; pip lists itself
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "freeze",
                             "--disable-pip-version-check"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed == [f"pip=={pip.__version__}"]


class _Builder:
    """venv.EnvBuilder's stand-in: records what it was asked to make."""

    made: list[tuple[Path, bool]] = []

    def __init__(self, symlinks: bool, with_pip: bool) -> None:
        self.with_pip = with_pip

    def create(self, target: Any) -> None:
        (Path(target) / "bin").mkdir(parents=True, exist_ok=True)
        _Builder.made.append((Path(target), self.with_pip))


@pytest.fixture
def builder(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, list[tuple[Path, bool]]]:
    module = _module()
    _Builder.made = []
    monkeypatch.setattr(module.venv, "EnvBuilder", _Builder)
    return module, _Builder.made


def test_without_a_pip_to_copy_the_venv_is_made_with_ensurepip(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        builder: tuple[ModuleType, list[tuple[Path, bool]]]) -> None:
    module, made = builder
    monkeypatch.setattr(module, "own_pip", lambda: None)  # none, or a distribution's
    assert module.main([str(tmp_path / "v")]) == 0
    assert made == [(tmp_path / "v", True)]


def test_a_distributions_pip_is_not_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    # Debian's pip reads its libraries from the system (pip._vendor.DEBUNDLED): a copy of
    # its folder alone would not run
    module = _module()
    import pip._vendor

    assert module.own_pip() is not None
    monkeypatch.setattr(pip._vendor, "DEBUNDLED", True, raising=False)
    assert module.own_pip() is None


def test_a_copy_that_does_not_run_is_removed_and_the_venv_made_with_ensurepip(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        builder: tuple[ModuleType, list[tuple[Path, bool]]]) -> None:
    module, made = builder
    target = tmp_path / "v"
    site = target / "lib" / "site-packages"
    copies: list[bool] = []

    def failing_check(argv: list[str]) -> subprocess.CompletedProcess[str]:
        if argv[1:] == ["-m", "pip", "--version"]:  # the copy was made, and does not run
            copies.append((site / "pip" / "__init__.py").is_file())
            return subprocess.CompletedProcess(argv, 1, "", "No module named pip")
        return subprocess.CompletedProcess(argv, 0, f"{site}\n", "")  # where pip goes

    monkeypatch.setattr(module, "_run", failing_check)
    assert module.main([str(target)]) == 0
    assert copies == [True]
    assert made == [(target, False), (target, True)]
    # what the copy left was removed before the standard way began (the stand-in makes bin/)
    assert not site.exists() and [p.name for p in (target / "bin").iterdir()] == []


def test_a_folder_already_there_is_added_to_the_standard_way(
        tmp_path: Path, builder: tuple[ModuleType, list[tuple[Path, bool]]]) -> None:
    module, made = builder
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "keep.txt").write_text("mine")
    assert module.main([str(tmp_path / "v")]) == 0
    assert made == [(tmp_path / "v", True)]
    assert (tmp_path / "v" / "keep.txt").read_text() == "mine"


def test_usage_is_one_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert _module().main([]) == 2
    assert capsys.readouterr().err == "usage: python tools/make_venv.py DIR\n"
