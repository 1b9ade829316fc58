"""The pages' Jinja2 environment keeps compiled templates in the user's cache folder, and a
cache it cannot trust or use costs a compile, never a page."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import jinja2.bccache
import pytest
from jinja2 import Environment

from imagebatch.pictures import pages

CONTEXT = {"title": "t"}
#: index.css has no Jinja2 syntax: rendered, it is its own text
CSS = (Path(pages.__file__).parent.parent / "templates" / "index.css").read_text()


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A cache folder of the test's own (XDG_CACHE_HOME), and the environment made anew."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pages.environment.cache_clear()
    yield tmp_path / "cache" / "imagebatch" / "templates"
    pages.environment.cache_clear()


def _compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the templates compiled from their source from now on."""
    compiled: list[str] = []
    real = Environment.compile

    def counted(self: Environment, source: str, name: str | None = None,
                *args: object, **kwargs: object) -> object:
        compiled.append(str(name))
        return real(self, source, name, *args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(Environment, "compile", counted)
    return compiled


def _render() -> str:
    out = pages.environment().get_template("index.css").render(**CONTEXT)
    assert out == CSS
    return out


def test_a_template_is_compiled_once_then_read_from_the_cache(fresh, monkeypatch):
    compiled = _compiles(monkeypatch)
    first = _render()
    assert compiled == ["index.css"]
    files = list(fresh.iterdir())
    assert len(files) == 1 and files[0].stat().st_size > 0
    assert fresh.stat().st_mode & 0o777 == 0o700  # the user's alone: it holds code
    pages.environment.cache_clear()  # a new command: nothing compiled in memory
    assert _render() == first
    assert compiled == ["index.css"]  # read from the file, not compiled again


def test_a_damaged_cache_file_is_compiled_again(fresh, monkeypatch):
    first = _render()
    (cached,) = fresh.iterdir()
    compiled = _compiles(monkeypatch)
    for damage in (cached.read_bytes()[:20], b"", os.urandom(300)):
        cached.write_bytes(damage)
        pages.environment.cache_clear()
        assert _render() == first
    assert compiled == ["index.css"] * 3


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX ownership")
def test_a_folder_others_can_write_is_not_used(fresh, monkeypatch):
    fresh.mkdir(parents=True)
    fresh.chmod(0o777)
    assert pages.environment().bytecode_cache is None
    compiled = _compiles(monkeypatch)
    _render()
    assert compiled == ["index.css"] and list(fresh.iterdir()) == []


def test_a_cache_folder_that_cannot_be_made_costs_nothing_but_a_compile(fresh, monkeypatch):
    fresh.parent.parent.parent.mkdir(parents=True, exist_ok=True)
    (fresh.parent.parent).write_text("a file where the folder would go")
    assert pages.environment().bytecode_cache is None
    compiled = _compiles(monkeypatch)
    _render()
    assert compiled == ["index.css"]


def test_a_cache_that_cannot_be_written_costs_a_compile(fresh, monkeypatch):
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(jinja2.bccache.tempfile, "NamedTemporaryFile", full)
    compiled = _compiles(monkeypatch)
    _render()
    pages.environment.cache_clear()
    _render()
    assert compiled == ["index.css"] * 2
    assert list(fresh.iterdir()) == []
