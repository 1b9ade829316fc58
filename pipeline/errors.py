"""One exception root; only the CLI turns these into output and exit codes."""

from __future__ import annotations

import re
from dataclasses import dataclass

# C0 and C1 controls and DEL: text from a manifest or a server printed raw could move the
# cursor, recolour or retitle the user's terminal (ESC sequences), or hide what follows.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` safe to print on a terminal: control characters shown as escapes (ESC as \\x1b)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class ImagebatchError(Exception):
    """Root of every error the program reports to a user; `exit_code` is what the CLI returns."""

    exit_code: int = 2


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem at a place in a manifest file."""

    file: str
    line: int  # 1-based
    column: int  # 1-based
    path: str  # field path such as jobs[1].matrix.aspect_ratio[1]
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ManifestError(ImagebatchError):
    """A manifest that cannot be used; carries every problem found in the file."""

    def __init__(self, problems: list[Problem], unreadable: list[str] | None = None) -> None:
        self.problems = list(problems)
        self.unreadable = list(unreadable or [])  # files that could not be read at all
        super().__init__("\n".join([*self.unreadable, *(str(p) for p in self.problems)]))


class UsageError(ImagebatchError):
    """A bad option or argument on the command line."""


class ConfigError(ImagebatchError):
    """Missing or wrong configuration (environment variables, URLs); nothing was sent."""


class StoreError(ImagebatchError):
    """The output folder cannot be written (read-only, full, ...)."""


class Interrupted(ImagebatchError):
    """Stopped by Ctrl-C or SIGTERM; what was written is whole, and running again finishes."""

    exit_code = 130


class ApiError(ImagebatchError):
    """A request that did not produce an image; subclasses say whether to retry.

    `kind` is a short word for messages and logs; decisions are made on the type.
    `requests` is how many HTTP requests the failed call sent (a download counts).
    """

    exit_code = 1

    def __init__(
        self, message: str, *, status: int | None = None, kind: str = "", requests: int = 1
    ) -> None:
        self.status = status
        self.kind = kind
        self.message = message
        self.requests = requests
        super().__init__(message)


class RetryableApiError(ApiError):
    """Worth another try: 429, 5xx, dropped connections, timeouts, bodies that lie."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        kind: str = "",
        retry_after: float | None = None,
        requests: int = 1,
    ) -> None:
        super().__init__(message, status=status, kind=kind, requests=requests)
        self.retry_after = retry_after  # seconds the server asked us to wait, if it said


class UnreachableError(RetryableApiError):
    """No connection to the service at all: refused, a name that does not resolve, no answer
    to the connect. Retried per job once the service has answered; before that (or for a
    member of a pool) it means the URL is wrong or the service is gone."""

    def __init__(self, message: str, *, requests: int = 1) -> None:
        super().__init__(message, kind="unreachable", requests=requests)


class PermanentApiError(ApiError):
    """Never retried: 400, 403, 404, 413, 422 and the like; the job fails at once."""


class ServiceConfigError(PermanentApiError):
    """The service cannot be used as configured, so every job would fail alike: a rejected
    key, or a URL that does not connect or does not lead to the image API. The run stops
    starting requests, its jobs stay pending (nothing is recorded failed), exit status 2."""

    exit_code = 2


class AuthError(ServiceConfigError):
    """401: the key is missing or wrong; the run stops starting requests."""


def text_problem(data: bytes, source: str, limit: int, what: str) -> tuple[str, Problem | None]:
    """`data` (read with at most one byte past `limit`) as text, or the located Problem that
    refuses it: over `limit` bytes, or not UTF-8 (a byte-order mark is dropped). `what`
    names the kind of file in the message ("a manifest")."""
    if len(data) > limit:
        return "", Problem(source, 1, 1, "", f"is more than {limit:,} bytes; {what} may be at "
                                              f"most {limit:,}")
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return "", Problem(source, line, col, "", "is not UTF-8 text")
