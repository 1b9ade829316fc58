"""HTML from Jinja2 templates (pipeline/templates/), every value escaped unless marked safe.

One environment for every page the program writes or serves, so each gets the same
escaping: autoescape is on for every template, whatever its name, and an undefined name
is an error instead of an empty string.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined


def url_path(path: str) -> str:
    """A relative POSIX path percent-encoded for a URL (`/` kept): `a b/#1.png` -> `a%20b/%231.png`.
    """
    return quote(path, safe="/")


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    """The shared Jinja2 environment: templates of pipeline/templates, autoescaped, strict."""
    env = Environment(
        loader=PackageLoader("imagebatch", "templates"),
        autoescape=True,  # every template, .html or not: user text never becomes markup
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["url_path"] = url_path
    return env


def render_template(name: str, **context: Any) -> str:
    """The text of template `name` (e.g. "index.html") rendered with `context`."""
    return environment().get_template(name).render(**context)


__all__ = ["environment", "render_template", "url_path"]
