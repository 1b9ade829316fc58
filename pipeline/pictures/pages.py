"""HTML from Jinja2 templates (pipeline/templates/), every value escaped unless marked safe.

One environment for every page the program writes or serves, so each gets the same
escaping: autoescape is on for every template, whatever its name, and an undefined name
is an error instead of an empty string.

Compiling a template is a tenth of a second or more of a command's CPU (index.html, every
`run`); the compiled code is kept in the user's cache folder
(`$XDG_CACHE_HOME/imagebatch/templates`, by default `~/.cache/imagebatch/templates`), as
Jinja2's bytecode cache, and compiled again when a template, Jinja2, Python or imagebatch
changes. A folder that cannot be written, or that is not the user's alone, is not used.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from jinja2 import Environment, FileSystemBytecodeCache, PackageLoader, StrictUndefined
from jinja2.bccache import Bucket

from .. import __version__

#: The environment's settings: compiled code depends on them, so they name its cache files.
#: autoescape for every template, .html or not: user text never becomes markup.
_OPTIONS: dict[str, Any] = {"autoescape": True, "trim_blocks": True, "lstrip_blocks": True,
                            "keep_trailing_newline": True}


def url_path(path: str) -> str:
    """A relative POSIX path percent-encoded for a URL (`/` kept): `a b/#1.png` -> `a%20b/%231.png`.
    """
    return quote(path, safe="/")


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    """The shared Jinja2 environment: templates of pipeline/templates, autoescaped, strict."""
    env = Environment(loader=PackageLoader("imagebatch", "templates"),
                      undefined=StrictUndefined, bytecode_cache=_bytecode_cache(), **_OPTIONS)
    env.filters["url_path"] = url_path
    return env


class _Cache(FileSystemBytecodeCache):
    """Jinja2's cache of compiled templates in files, whose failures cost a compile, never
    a command: a file that is unreadable or cut short is compiled again, and one that cannot
    be written (a full disk, a read-only home) is not kept."""

    def load_bytecode(self, bucket: Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:  # noqa: BLE001 - pickle and marshal raise many kinds on bad bytes
            bucket.reset()

    def dump_bytecode(self, bucket: Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _bytecode_cache() -> FileSystemBytecodeCache | None:
    """The cache of compiled templates, or None where there is no folder safe to keep it in.

    The files hold code this program runs, so the folder must be the user's alone: owned by
    them and writable by nobody else."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base, "imagebatch", "templates")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.stat()
    except OSError:
        return None
    if not hasattr(os, "getuid") or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None
    key = hashlib.sha256(repr((__version__, jinja2.__version__, sorted(_OPTIONS.items())))
                         .encode()).hexdigest()[:16]
    return _Cache(str(folder), f"{key}-%s.cache")


def render_template(name: str, **context: Any) -> str:
    """The text of template `name` (e.g. "index.html") rendered with `context`."""
    return environment().get_template(name).render(**context)


__all__ = ["environment", "render_template", "url_path"]
