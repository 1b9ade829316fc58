"""Thin command line: parse, call one function, map errors to exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.errors import ImagebatchError, UsageError

DEFAULT_MAX_JOBS = 5000


def _shard(text: str) -> tuple[int, int]:
    """Parse K/N (1 <= K <= N)."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not K/N, e.g. 1/3") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"'{text}': K must be between 1 and N")
    return k, n


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


def _add_max_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-jobs", type=_positive_int, default=DEFAULT_MAX_JOBS, metavar="N",
        help=f"refuse plans larger than N jobs (default {DEFAULT_MAX_JOBS})",
    )


def _add_env_prefix(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--env-prefix", default="DIFFUSION", metavar="PREFIX",
        help="read PREFIX_URL, PREFIX_KEY, PREFIX_MODEL_ID (default DIFFUSION)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every user mistake maps to exit 2 here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, defined once."""
    parser = _Parser(prog="imagebatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", help="check manifests; change nothing")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    _add_max_jobs(p)
    _add_env_prefix(p)

    p = sub.add_parser("plan", help="print the job list; send nothing")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--json", action="store_true", help="only a JSON array on stdout")
    p.add_argument("--shard", type=_shard, metavar="K/N")
    _add_max_jobs(p)
    _add_env_prefix(p)

    sub.add_parser("schema", help="print the manifest's JSON Schema")

    return parser


def _cmd_validate(args: argparse.Namespace) -> int:
    raise UsageError("validate is not built yet")


def _cmd_plan(args: argparse.Namespace) -> int:
    raise UsageError("plan is not built yet")


def _cmd_schema(args: argparse.Namespace) -> int:
    raise UsageError("schema is not built yet")


COMMANDS = {
    "validate": _cmd_validate,
    "plan": _cmd_plan,
    "schema": _cmd_schema,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `imagebatch` console script."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except ImagebatchError as exc:
        print(f"imagebatch: {exc}" if not str(exc).startswith("imagebatch") else str(exc),
              file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
