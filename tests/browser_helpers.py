"""One headless chromium per test process (Playwright driving the system chromium), shared by
the browser tests of every module, and its pages lent from test to test.

A test module uses it with `pytest_plugins = ["browser_helpers"]` (not by importing it) and
`pytest.mark.asyncio(loop_scope="session")` on its tests: its fixtures are then the session's,
whatever module asks first, so a pytest-xdist worker launches chromium once however the browser
tests of several modules are dealt out to it.

A page is the costly part of a browser test: a new one (its context, its renderer and
Playwright's scripts in it) burns more CPU than loading the page under test, and each worker
makes its own. So the tests look at two screens only, a laptop's and a phone's (`SCREENS`),
and `Pages` keeps one page of each, lent to one test at a time; between tests it is emptied
(about:blank), its listeners removed, its mouse put back where a new page has it. A test that
failed gives its page up: the next one gets a new page.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# --renderer-process-limit=1: every test serves its page from a server of its own, a new
# origin, for which chromium would start a renderer process (about 0.4 CPU-s each); one
# shared renderer does the same work. Pages stay apart as pages; no test checks isolation.
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
        "--disable-dev-shm-usage", "--disable-sync", "--no-first-run", "--renderer-process-limit=1"]
#: The variable naming a folder to keep the pages' screenshots in, for a person to look at
#: what the tests check (`make test SCREENSHOTS=DIR`). Unset, none is taken: a full-page one
#: costs chromium a third of a CPU-second, and no test reads the files.
SCREENSHOTS = "SCREENSHOTS"
#: The screens pages are shown on (Browser.new_context's options): a laptop's, where the review's
#: "More like this" may copy to the clipboard, and a phone's (touch, two device pixels a CSS
#: pixel, as a phone has).
SCREENS: dict[str, dict[str, Any]] = {
    "laptop": {"viewport": {"width": 1280, "height": 900},
               "permissions": ["clipboard-read", "clipboard-write"]},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
              "device_scale_factor": 2},
}


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if CHROMIUM is None:
        return "no chromium binary (make test-deps installs it)"
    return None


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chromium() -> AsyncIterator[Any]:
    """The system chromium through Playwright, launched once for the test process."""
    problem = missing()
    if problem is not None:
        if os.environ.get("CI"):  # CI must run these: a missing browser is a failure there
            pytest.fail(f"the browser tests cannot run: {problem}")
        pytest.skip(problem)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


class Pages:
    """Pages of the shared chromium, one kept per screen, each lent to one test at a time."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self._idle: dict[str, list[Any]] = {}
        self._lent: list[tuple[str, Any]] = []
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._scheme: dict[Any, str] = {}
        self.test = ""  # the name of the test the pages are lent to

    async def new(self, screen: str = "laptop", *, color_scheme: str = "light") -> Any:
        """A blank page on `screen` (of SCREENS) showing `color_scheme` (set on the page, so
        both schemes are one page), the test's until it ends."""
        idle = self._idle.setdefault(screen, [])
        page = idle.pop() if idle else await (
            await self.browser.new_context(**SCREENS[screen])).new_page()
        if self._scheme.get(page, "light") != color_scheme:  # a context's is light unless told
            await page.emulate_media(color_scheme=color_scheme)
            self._scheme[page] = color_scheme
        self._lent.append((screen, page))
        return page

    async def screenshot(self, page: Any, name: str, **options: Any) -> None:
        """Keep a screenshot of `page` as DIR/TEST-NAME.png when SCREENSHOTS names a folder."""
        folder = os.environ.get(SCREENSHOTS)
        if folder:  # Playwright makes the folder
            test = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.test)
            await page.screenshot(path=str(Path(folder) / f"{test}-{name}.png"), **options)

    def on(self, page: Any, event: str, handler: Callable[..., Any]) -> None:
        """page.on(event, handler) for this test only."""
        page.on(event, handler)
        self._listeners.append((page, event, handler))

    async def give_back(self, keep: bool) -> None:
        """Take the test's pages back: emptied for the next test if `keep`, else closed."""
        for page, event, handler in self._listeners:
            page.remove_listener(event, handler)
        self._listeners.clear()
        lent, self._lent = self._lent, []
        for key, page in lent:
            context = page.context
            if keep and not page.is_closed() and context.pages == [page]:
                try:
                    await page.goto("about:blank")  # the test's page stops: timers, requests
                    await page.mouse.move(0, 0)  # nothing left hovered
                except Exception:  # noqa: BLE001 - a page that cannot be reset is not kept
                    pass
                else:
                    self._idle[key].append(page)
                    continue
            self._scheme.pop(page, None)
            await context.close()


@pytest.fixture(scope="session")
def _page_pool(chromium: Any) -> Pages:
    """The pages of the session's chromium."""
    return Pages(chromium)


@pytest_asyncio.fixture(loop_scope="session")
async def pages(_page_pool: Pages, request: pytest.FixtureRequest) -> AsyncIterator[Pages]:
    """The shared chromium's pages for this test; a failed test's are closed, not reused."""
    failed = request.session.testsfailed
    _page_pool.test = request.node.name
    yield _page_pool
    await _page_pool.give_back(keep=request.session.testsfailed == failed)
