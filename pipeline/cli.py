"""Thin command line: parse, call one function, map errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from .errors import ImagebatchError, ManifestError, UsageError
from .planning.config import DEFAULT_PREFIX
from .planning.manifest import DEFAULT_MAX_JOBS
from .running.options import DEFAULT_OUT, REMOTE_DEFAULT_RPM, RunOptions, default

if TYPE_CHECKING:
    from .planning.select import Selection
    from .running.summary import RunReport

# Errors of writing standard output itself (redirected to a full disk or /dev/full).
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EFBIG, errno.EDQUOT, errno.EBADF}

DESCRIPTION = """\
imagebatch generates images in bulk from YAML manifests: prompts, seeds and parameter
sweeps are checked, expanded into jobs and sent to Stable Image Ultra through Heroku Managed
Inference (DIFFUSION_URL, DIFFUSION_KEY) or Stability AI's API (STABILITY_API_KEY), or to
its embedded offline server when neither is set; runs resume where they stopped and end in
thumbnails, contact sheets and index.html; the images you pick become finished assets."""

EPILOG = """\
examples:
  imagebatch init                              set up this repository: an example
                                               manifest, make targets, a nightly workflow
  imagebatch plan manifests/example.yaml       list the jobs a manifest makes; sends nothing
  imagebatch run manifests/example.yaml        make them into outputs/example/
  imagebatch review manifests/example.yaml     pick, reject and rate them in the browser
  imagebatch export manifests/example.yaml     the picks as sized web assets in assets/example/

`imagebatch COMMAND --help` lists a command's options. Run with no command, imagebatch
prints this help and exits 0."""

# Examples per command, shown at the end of its --help.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "init": ("imagebatch init                 write what is missing in the current folder",
             "imagebatch init --diff          how existing files differ; change nothing"),
    "validate": ("imagebatch validate manifests/*.yaml",),
    "plan": ("imagebatch plan manifests/example.yaml --json --shard 1/3",
             "imagebatch plan manifests/example.yaml --price 0.08 --only 'fox*'"),
    "schema": ("imagebatch schema > imagebatch.schema.json",),
    "expand": ("imagebatch expand manifests/example.yaml",
               "imagebatch expand manifests/example.yaml --again heroes"),
    "run": ("DIFFUSION_URL=... DIFFUSION_KEY=... imagebatch run manifests/*.yaml --rpm 20",
            "imagebatch run manifests/example.yaml --first-seeds 1 --budget 20 --price 0.08"),
    "status": ("imagebatch status manifests/example.yaml -v",),
    "show": ("imagebatch show outputs/example/images/fox/watercolor/1.png",),
    "sheet": ("imagebatch sheet manifests/example.yaml --out outputs",),
    "merge": ("imagebatch merge shard-1 shard-2 shard-3 --out outputs",),
    "serve": ("imagebatch serve --port 8000 --rpm 20 --fail-rate 0.1",),
    "review": ("imagebatch review manifests/example.yaml",),
    "pick": ("imagebatch pick manifests/example.yaml fox/watercolor/1.png --rating 5",),
    "export": ("imagebatch export manifests/example.yaml",),
    "diff": ("imagebatch diff manifests/example.yaml            against the merge base with main",
             "imagebatch diff manifests/*.yaml --against v1.2 --price 0.08",
             "imagebatch diff manifests/example.yaml --against old.yaml --markdown"),
    "pull": ("IMAGEBATCH_CACHE=s3://team-bucket/imagebatch imagebatch pull manifests/a.yaml",),
    "push": ("imagebatch push manifests/example.yaml --cache /mnt/share/imagebatch-cache",),
}


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


def _add_env_prefix(p: argparse.ArgumentParser, *, pool: bool = False) -> None:
    more = ("; give several (repeated or comma-separated) to run on a pool of model "
            "resources, each paced on its own") if pool else ""
    p.add_argument(
        "--env-prefix", action="append", metavar="PREFIX",
        help=f"read PREFIX_URL, PREFIX_KEY, PREFIX_MODEL_ID (default {DEFAULT_PREFIX}){more}",
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; each option's default unless its help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings and action.nargs != argparse.OPTIONAL) \
                or action.nargs == 0 or "default" in text or default is None \
                or default is argparse.SUPPRESS or default in ([], {}, ()):
            return text  # positionals, flags, and helps that already name their default
        return f"{text} (default %(default)s)" if text else "(default %(default)s)"


class _Version(argparse.Action):
    """--version: the installed version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from . import version

        print(f"imagebatch {version()}")
        parser.exit()


def _prefixes(args: argparse.Namespace) -> tuple[str, ...]:
    """The --env-prefix values as given (each may be a comma-separated list)."""
    return tuple(args.env_prefix or (DEFAULT_PREFIX,))


def _add_selection(p: argparse.ArgumentParser) -> None:
    """--only and --first-seeds: a subset of the plan (planning/select.py), defined once."""
    p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="only jobs whose id or image path matches this glob ('fox*', "
                        "'fox/*/1.png'); repeat for more")
    p.add_argument("--first-seeds", type=_positive_int, default=None, metavar="N",
                   help="only the first N seeds of each variant (a job id with its variable "
                        "values), in plan order")


def _selection(args: argparse.Namespace) -> Selection:
    from .planning.select import Selection

    return Selection(only=tuple(args.only), first_seeds=args.first_seeds)


def _add_price(p: argparse.ArgumentParser) -> None:
    p.add_argument("--price", default=None, metavar="AMOUNT",
                   help="what one image request costs, e.g. 0.08 or $0.08 (default: "
                        "$IMAGEBATCH_PRICE; without either the cost is unknown)")


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                   help=f"output root (default {DEFAULT_OUT})")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every user mistake maps to exit 2 here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if "invalid choice:" in message and self._subparsers is not None:
            import difflib
            import re

            found = re.search(r"invalid choice: '([^']*)'", message)
            sub = next(a for a in self._actions if isinstance(a, argparse._SubParsersAction))
            close = difflib.get_close_matches(found[1] if found else "", list(sub.choices), n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        raise UsageError(f"{self.prog}: {message}")


def unrecognized(parser: argparse.ArgumentParser, command: str, extra: Sequence[str]) -> str:
    """The message for arguments a command does not take, with a did-you-mean for each
    mistyped option (`--concurency`: did you mean --concurrency?)."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = list(sub.choices[command]._option_string_actions)
    lines = [f"imagebatch {command}: unrecognized arguments: {' '.join(extra)}"]
    for arg in extra:
        if arg.startswith("-"):
            close = difflib.get_close_matches(arg.split("=", 1)[0], options, n=1, cutoff=0.7)
            if close:
                lines.append(f"  {arg}: did you mean {close[0]}?")
    return "\n".join(lines)


class _Undefined(_Parser):
    """Where a command this process does not run goes, with its arguments: nowhere.

    Every parser and argument argparse makes costs it gettext lookups of its headings (each a
    search of the disk for a translation, about 70 us; 12 ms for the whole command line,
    measured, most of a quick command's start). A process whose first argument is a command
    runs that one, so build_parser(only=...) defines it alone (1 to 2 ms): the list of commands
    is wanted only by `--help` before a command and by the did-you-mean of an unknown one,
    which get the whole command line."""

    def __init__(self) -> None:  # no parser state: nothing here is ever parsed or shown
        pass

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def add_mutually_exclusive_group(self, **kwargs: Any) -> Any:
        return self

    def format_usage(self) -> str:
        return ""


class _Commands:
    """The subcommands action, handing out a sink instead of the parser of a command whose
    arguments need not be defined (see _Undefined)."""

    def __init__(self, sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                 only: str | None) -> None:
        self._sub, self._only = sub, only

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if self._only in (None, name):
            parser: argparse.ArgumentParser = self._sub.add_parser(name, **kwargs)
            return parser
        return _Undefined()  # another command: not even listed (see _Undefined)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, defined once; with `only` (a command's name), the arguments
    of that command alone: what a process running it parses."""
    parser = _Parser(prog="imagebatch", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    action = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                   title="commands", metavar="COMMAND")
    sub = _Commands(action, only)

    p = sub.add_parser("init", help="set up a repository: example manifest, schema, make "
                                    "targets, nightly workflow, .gitignore")
    p.add_argument("directory", nargs="?", default=".", metavar="DIR",
                   help="the repository (default: the current folder; created if missing)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true",
                      help="replace files that differ from what init writes")
    mode.add_argument("--diff", action="store_true",
                      help="show how existing files differ from what init writes; change "
                           "nothing (exit 1 when any differs or is missing)")
    mode.add_argument("--print", dest="print_file", metavar="FILE",
                      help="print FILE as init writes it (e.g. Makefile, imagebatch.mk, "
                           ".github/workflows/imagebatch.yml); change nothing")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--requirement", metavar="SPEC",
                        help="what the workflows pip-install (default: where this imagebatch "
                             "was installed from: its git commit, or imagebatch==THIS VERSION "
                             "from the package index); e.g. 'imagebatch @ "
                             "git+https://HOST/OWNER/imagebatch.git@v0.1.0'")
    source.add_argument("--vendor-wheel", metavar="WHEEL",
                        help="keep WHEEL (this version's, from `make wheel`) in ci/ and have "
                             "the workflows install it from the repository")

    p = sub.add_parser("validate", help="check manifests; change nothing")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    _add_max_jobs(p)
    _add_env_prefix(p)

    p = sub.add_parser("plan", help="print the job list and what a run would send; send nothing")
    p.add_argument("manifest", metavar="MANIFEST")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="only a JSON array on stdout")
    shape.add_argument("--counts-json", action="store_true",
                       help="only the counts (jobs, done, restorable, to send, cost) as a "
                            "JSON object on stdout")
    p.add_argument("--shard", type=_shard, metavar="K/N", help="only the jobs of shard K of N")
    _add_selection(p)
    _add_price(p)
    _add_out(p)
    p.add_argument("--local", action="store_true",
                   help="count as done what the embedded server made, as `status --local`")
    _add_cache(p)
    _add_max_jobs(p)
    _add_env_prefix(p, pool=True)

    sub.add_parser("schema", help="print the manifest's JSON Schema")

    _add_diff_parser(sub)

    _add_run_parsers(sub)
    _add_pick_parser(sub)
    _add_review_parser(sub)

    for choice in action._choices_actions:  # the one-line help of each command
        command = action.choices[choice.dest]
        command.formatter_class = _HelpFormatter
        summary = choice.help or ""
        command.description = command.description or summary[:1].upper() + summary[1:]
        examples = EXAMPLES.get(choice.dest, ())
        if examples:
            command.epilog = (f"example{'s' if len(examples) > 1 else ''}:\n  "
                              + "\n  ".join(examples))
    return parser


def _add_diff_parser(sub: _Commands) -> None:
    """diff."""
    p = sub.add_parser("diff", help="what a manifest change does to the plan (added, removed, "
                                    "changed jobs, cost, stale picks); send nothing")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.add_argument("--against", metavar="REV|FILE",
                   help="a git revision (branch, tag, commit) or another manifest file "
                        "(default: the merge base of HEAD with origin/HEAD, else main, else "
                        "master)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="the diff as JSON")
    form.add_argument("--markdown", action="store_true",
                      help="the diff as Markdown, for a pull request or a CI step summary")
    p.add_argument("--price", metavar="AMOUNT",
                   help="the price of one image (e.g. 0.08), for the cost (default "
                        "$IMAGEBATCH_PRICE; without either the cost is unknown)")
    _add_out(p)
    _add_cache(p)
    p.add_argument("--local", action="store_true",
                   help="judge what is done against the embedded server, as `status --local`")
    _add_max_jobs(p)
    _add_env_prefix(p, pool=True)


def _rating(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number from 1 to 5") from None
    if not 1 <= value <= 5:
        raise argparse.ArgumentTypeError(f"'{text}' is not from 1 to 5")
    return value


def _add_picks_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--picks", default=None, metavar="FILE",
                   help="the picks file (default: <manifest>.picks.json beside the manifest)")


def _add_pick_parser(sub: _Commands) -> None:
    """pick."""
    p = sub.add_parser("pick", help="pick, reject, rate or clear images in the picks file")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="an image path as `plan` prints it, or the image file's own path")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--reject", action="store_true", help="reject instead of picking")
    what.add_argument("--rating", type=_rating, metavar="N",
                      help="rate 1 to 5 (a pick or reject stays as it is)")
    what.add_argument("--clear", action="store_true", help="remove the entries")
    _add_picks_option(p)
    p.add_argument("--out", default="outputs", metavar="DIR",
                   help="output root image files are found under (default outputs)")
    _add_max_jobs(p)
    _add_env_prefix(p)


def _add_review_parser(sub: _Commands) -> None:
    """review."""
    p = sub.add_parser("review", help="a local web page to pick, reject and rate the images")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--out", default="outputs", metavar="DIR", help="output root (default outputs)")
    p.add_argument("--picks", default=None, metavar="FILE",
                   help="the picks file (default: MANIFEST's name with .picks.json, beside it)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; the token is needed anyway)")
    p.add_argument("--port", type=_port, default=0, help="port (default: a free one)")
    p.add_argument("--no-open", action="store_true", help="do not open a browser")
    _add_selection(p)
    _add_max_jobs(p)
    _add_env_prefix(p)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"'{text}' must be more than 0")
    return value


def _rpm(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else _positive_float(text)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be 0 or more")
    return value


def _add_run_parsers(sub: _Commands) -> None:
    """run, status, show."""
    p = sub.add_parser("run", help="generate what is not done yet, post-process, summarise")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    _add_out(p)
    p.add_argument("--concurrency", type=_positive_int, default=default("concurrency"),
                   metavar="N",
                   help=f"requests in flight at most (default {default('concurrency')})")
    p.add_argument("--rpm", type=_rpm, default=default("rpm"), metavar="N",
                   help="start at most N requests a minute to each backend, evenly spaced; "
                        "0 for no pacing of "
                        f"our own (default: none for the local server; {REMOTE_DEFAULT_RPM:g}, or "
                        "the service's advertised per-minute limit, for a URL)")
    p.add_argument("--retries", type=_count, default=default("retries"), metavar="N",
                   help=f"retries per job after the first attempt (default {default('retries')})")
    p.add_argument("--timeout", type=_positive_float, default=default("timeout"), metavar="S",
                   help="seconds per request, whole response included "
                        f"(default {default('timeout'):g})")
    p.add_argument("--force", action="store_true", help="regenerate even what is done")
    p.add_argument("--retry-failed", action="store_true",
                   help="send again the failed jobs whose answer a retry cannot change "
                        "(content filtered, refused as asked), which runs otherwise leave alone")
    p.add_argument("--verify", action="store_true",
                   help="hash every image to tell what is done (default: only those whose "
                        "size or time changed)")
    p.add_argument("--shard", type=_shard, metavar="K/N", help="run only shard K of N")
    _add_selection(p)
    _add_price(p)
    p.add_argument("--budget", type=_positive_int, default=None, metavar="N",
                   help="send at most N image requests in this run, retries included; the "
                        "rest stays pending (exit 3)")
    p.add_argument("--budget-cost", default=None, metavar="AMOUNT",
                   help="the same in money: at most AMOUNT's worth of requests at --price")
    _add_max_jobs(p)
    p.add_argument("--local", action="store_true",
                   help="use the embedded local server even when a URL is set")
    p.add_argument("--no-post", action="store_true",
                   help="skip thumbnails, contact sheets and index.html")
    p.add_argument("--json", action="store_true",
                   help="the summary as JSON on stdout; everything else on stderr")
    _add_env_prefix(p, pool=True)
    _add_cache(p)
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="say more on stderr (temp files an interrupted run left and were removed)")

    p = sub.add_parser("status", help="count done, failed and pending jobs; send nothing")
    # required; optional here only so that `status --cache M` parses (see _status_manifest)
    p.add_argument("manifest", metavar="MANIFEST", nargs="?")
    _add_out(p)
    p.add_argument("--local", action="store_true", help="judge against the embedded server")
    p.add_argument("--shard", type=_shard, metavar="K/N", help="only the jobs of shard K of N")
    _add_selection(p)
    p.add_argument("--json", action="store_true", help="counts as JSON (jobs too with -v)")
    p.add_argument("--verify", action="store_true",
                   help="hash every image (default: only those whose size or time changed)")
    _add_max_jobs(p)
    _add_env_prefix(p, pool=True)
    p.add_argument("-v", "--verbose", action="count", default=0, help="one line per job")
    _add_picks_option(p)
    p.add_argument("--cache", nargs="?", const="", default=None, metavar="URL",
                   help="also count the pending jobs the shared cache can fill, by listing it "
                        "(URL, or $IMAGEBATCH_CACHE when none is given: `status M --cache` "
                        "and `status --cache M` alike); downloads nothing")
    p.usage = p.format_usage().removeprefix("usage: ").replace("[MANIFEST]", "MANIFEST").strip()

    for command, what in (("pull", "restore a plan's images from the shared cache, then "
                                    "rebuild sheets and index; send nothing"),
                          ("push", "upload a plan's done images to the shared cache; send "
                                   "nothing")):
        p = sub.add_parser(command, help=what)
        p.add_argument("manifest", metavar="MANIFEST")
        _add_out(p)
        _add_cache(p)
        p.add_argument("--local", action="store_true",
                       help="the embedded server's images (as `status --local` counts them)")
        p.add_argument("--shard", type=_shard, metavar="K/N", help="only the jobs of shard K of N")
        if command == "pull":
            p.add_argument("--no-post", action="store_true",
                           help="skip thumbnails, contact sheets and index.html")
            _add_picks_option(p)
        _add_max_jobs(p)
        _add_env_prefix(p, pool=True)

    p = sub.add_parser("export", help="write the exports of a manifest (sizes, formats, "
                                      "assets.json) from images on disk; send nothing")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--out", default="outputs", metavar="DIR", help="output root (default outputs)")
    p.add_argument("--assets", default="assets", metavar="DIR",
                   help="export root; files go to DIR/<name>/ (default assets)")
    p.add_argument("--picks", default=None, metavar="FILE",
                   help="the picks file (default: the manifest's, MANIFEST.picks.json)")
    p.add_argument("--local", action="store_true",
                   help="judge what is done against the embedded server even when a URL is set")
    _add_max_jobs(p)
    p.add_argument("--check", action="store_true",
                   help="write nothing; check that every file of assets.json carries the AI "
                        "marker and Content Credentials that validate (exit 1 if one does "
                        "not)")
    _add_env_prefix(p)

    p = sub.add_parser("expand", help="ask the chat model for the prompts of each brief "
                                      "and write them to the prompts lock")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--again", action="append", default=[], metavar="JOB",
                   help="write this job's prompts afresh even when its brief is unchanged "
                        "(repeatable)")
    p.add_argument("--env-prefix", default="INFERENCE", metavar="PREFIX",
                   help="the chat model's variables: PREFIX_URL, PREFIX_KEY, PREFIX_MODEL_ID "
                        "(default INFERENCE; no PREFIX_URL: the embedded server)")

    p = sub.add_parser("show", help="print the request embedded in an image")
    p.add_argument("image", metavar="IMAGE")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--compact", dest="pretty", action="store_false", default=None,
                       help="one line of JSON (the default when the output is not a terminal)")
    shape.add_argument("--pretty", dest="pretty", action="store_true",
                       help="indented JSON (the default on a terminal)")
    p.add_argument("--credentials", action="store_true",
                   help="print the image's provenance instead: the AI marker (IPTC digital "
                        "source type), its Content Credentials and the request")

    p = sub.add_parser("sheet", help="rebuild thumbnails, contact sheets and index.html")
    p.add_argument("manifest", metavar="MANIFEST")
    _add_out(p)
    p.add_argument("--local", action="store_true",
                   help="show as done what the embedded server made, as `status --local` counts")
    _add_selection(p)
    _add_picks_option(p)
    _add_max_jobs(p)
    _add_env_prefix(p)

    p = sub.add_parser("merge", help="combine the outputs of shard runs into one folder")
    p.add_argument("sources", nargs="+", metavar="OUT", help="--out folders of the shard runs")
    p.add_argument("--out", required=True, metavar="DIR", help="where the merged outputs go")
    p.add_argument("--manifest", action="append", default=[], metavar="MANIFEST",
                   help="the manifest (default: the one named in the shards' summary.json)")
    p.add_argument("--no-post", action="store_true", help="skip thumbnails, sheets and index")
    p.add_argument("--pending-ok", action="store_true",
                   help="jobs in no shard's outputs are not an error (exit 0 with a note): for "
                        "shards run with a budget, which leave the rest for the next run")
    _add_max_jobs(p)
    _add_env_prefix(p)

    p = sub.add_parser("serve", help="run the embedded API server in the foreground")
    p.add_argument("--host", default="127.0.0.1", metavar="H",
                   help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, metavar="P",
                   help="port (default 8000; 0 picks one)")
    p.add_argument("--key", default=None, metavar="K",
                   help="require this bearer token (default: any)")
    p.add_argument("--aws-access-key-id", default=None, metavar="ID",
                   help="the Bedrock path also takes a SigV4 header naming this access key "
                        "id (its signature is not checked)")
    p.add_argument("--sign", action="store_true",
                   help="sign every image served with Content Credentials, as a provider that "
                        "signs its output does: the identity IMAGEBATCH_C2PA_CERT and "
                        "IMAGEBATCH_C2PA_KEY name (needs imagebatch[c2pa])")
    p.add_argument("--latency", type=_nonneg_float, default=0.0, metavar="MS",
                   help="add MS milliseconds to every response")
    p.add_argument("--rpm", type=_positive_int, default=None, metavar="N",
                   help="allow N requests per window, answer 429 beyond (default: no limit)")
    p.add_argument("--window", type=_positive_float, default=60.0, metavar="S",
                   help="the rate limit's sliding window in seconds (default 60)")
    p.add_argument("--no-retry-after", action="store_true", help="send 429s without Retry-After")
    p.add_argument("--fail-rate", type=_fraction, default=0.0, metavar="F",
                   help="answer this fraction of requests with an injected fault (0..1)")
    p.add_argument("--faults", type=_faults, default=None, metavar="KINDS",
                   help="comma-separated fault kinds to draw from (default: all)")
    p.add_argument("--fault-seed", type=int, default=0, metavar="S",
                   help="seed of the fault draw (same seed, same faults)")
    p.add_argument("--fault-at", type=_script, default={}, metavar="N:KIND,...",
                   help="answer request number N with fault KIND, e.g. 2:500,5:reset")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="render processes (default: one per core)")
    p.add_argument("--flat", action="store_true",
                   help="plain one-colour pictures, made without render processes (a tenth "
                        "of the cost or less, for load tests where the pictures do not matter)")
    p.add_argument("--stability-limit", type=_positive_int, default=None, metavar="N",
                   help="the Stability path's limit: N requests per 10 s, then a lockout "
                        "(default: no limit; Stability's own is 150)")
    p.add_argument("--stability-lockout", type=_nonneg_float, default=60.0, metavar="S",
                   help="seconds every Stability request is refused once over the limit "
                        "(default 60)")
    p.add_argument("--stability-retry-after", action="store_true",
                   help="send Retry-After on the Stability path's 429s (Stability documents "
                        "none, so by default there is none)")


def _add_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", default=None, metavar="URL",
                   help="the shared image cache: s3://BUCKET/PREFIX, file:///PATH or a folder "
                        "(default $IMAGEBATCH_CACHE; none when unset)")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not between 0 and 65535")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' must be 0 or more")
    return value


def _fraction(text: str) -> float:
    value = _nonneg_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be between 0 and 1")
    return value


def _faults(text: str) -> tuple[str, ...]:
    from .service.faults import KNOWN_FAULTS as known

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in known]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault kind(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {','.join(known)}")
    return kinds


def _script(text: str) -> dict[int, str]:
    """Parse N:KIND[,N:KIND...] (request numbers from 1) for `serve --fault-at`."""
    script: dict[int, str] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        number, _, kind = item.partition(":")
        try:
            n = int(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{item}' is not N:KIND, e.g. 2:500") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"'{item}': requests are numbered from 1")
        script[n] = _faults(kind)[0]
    return script


def _cmd_sheet(args: argparse.Namespace) -> int:
    from .commands.status import sheet_command

    return sheet_command(args.manifest, out_dir=Path(args.out), env_prefixes=_prefixes(args),
                         max_jobs=args.max_jobs, local=args.local,
                         picks_file=args.picks, selection=_selection(args))


def _cmd_merge(args: argparse.Namespace) -> int:
    from .commands.merge import merge_command
    from .running.summary import merge_text

    report = merge_command(args.sources, args.out, manifests=args.manifest,
                           max_jobs=args.max_jobs, env_prefixes=_prefixes(args),
                           post=not args.no_post)
    print(merge_text(report), file=sys.stdout)
    for plan in report.plans:
        if plan.pending:
            what = ("left for the next run (--pending-ok)" if args.pending_ok else
                    "run the missing shard(s) and merge again")
            print(f"note: {plan.pending} job(s) of {plan.name} are in no shard's outputs; "
                  f"{what}", file=sys.stderr)
    return 1 if report.failed or (report.pending and not args.pending_ok) else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .service.server import FAULT_KINDS, ServerOptions, serve
    from .storage.credentials import ENV_CERT, signer_from_env

    signer = signer_from_env() if args.sign else None
    if args.sign and signer is None:
        raise UsageError(f"--sign: set {ENV_CERT} and its key (see docs/credentials.md)")
    serve(ServerOptions(
        signer=signer,
        key=args.key, aws_access_key_id=args.aws_access_key_id, latency_ms=args.latency,
        rpm=args.rpm, window=args.window,
        retry_after=not args.no_retry_after, fail_rate=args.fail_rate,
        faults=args.faults or FAULT_KINDS, fault_seed=args.fault_seed, script=args.fault_at,
        workers=args.workers, flat=args.flat, stability_limit=args.stability_limit,
        stability_lockout=args.stability_lockout,
        stability_retry_after=args.stability_retry_after,
    ), host=args.host, port=args.port)
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .assets.review import ReviewOptions, review_command

    return review_command(ReviewOptions(
        manifest=args.manifest, out=Path(args.out),
        picks=Path(args.picks) if args.picks else None, host=args.host, port=args.port,
        open_browser=not args.no_open, env_prefixes=_prefixes(args), max_jobs=args.max_jobs,
        selection=_selection(args),
    ))


def _cmd_validate(args: argparse.Namespace) -> int:
    from .commands.preview import validate_command

    return validate_command(args.manifests, max_jobs=args.max_jobs,
                            env_prefixes=_prefixes(args))


def _cmd_plan(args: argparse.Namespace) -> int:
    from .commands.preview import plan_command

    return plan_command(args.manifest, as_json=args.json, shard=args.shard,
                        max_jobs=args.max_jobs, env_prefixes=_prefixes(args),
                        counts_json=args.counts_json, selection=_selection(args),
                        price=args.price, out_dir=Path(args.out), local=args.local,
                        cache=args.cache)


def _cmd_init(args: argparse.Namespace) -> int:
    from .commands.scaffold import init_command

    return init_command(args.directory, force=args.force, requirement=args.requirement,
                        diff=args.diff, print_file=args.print_file,
                        vendor_wheel=args.vendor_wheel)


def _cmd_schema(args: argparse.Namespace) -> int:
    from .commands.preview import schema_command

    return schema_command()


def _cmd_run(args: argparse.Namespace) -> int:
    from .running.run import run

    report = run(RunOptions(
        manifests=tuple(args.manifests), out=Path(args.out), concurrency=args.concurrency,
        rpm=args.rpm, retries=args.retries, timeout=args.timeout, force=args.force,
        verify=args.verify, shard=args.shard, max_jobs=args.max_jobs, local=args.local,
        post=not args.no_post, env_prefixes=_prefixes(args), verbose=args.verbose,
        price=args.price, budget=args.budget, budget_cost=args.budget_cost,
        selection=_selection(args), retry_failed=args.retry_failed,
        cache=args.cache,
    ))
    return report_run(report, as_json=args.json, out=sys.stdout, err=sys.stderr)


def report_run(report: RunReport, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Print a run's summary (JSON on `out` with --json, the text on `err` then) and return
    its exit code: 2 when the service cannot be used as set up, 130 when stopped, 1 when a
    job failed, 3 when the budget left jobs pending, else 0. A write that failed is raised
    after the summary is printed."""
    from .planning.budget import BUDGET_EXIT
    from .running.summary import run_json, text

    if as_json:
        print(run_json(report), file=out)
        print(text(report), file=err)
    else:
        print(text(report), file=out)
    if report.store_error is not None:
        raise report.store_error
    if report.config_error is not None:
        print(f"imagebatch: {report.config_error.message}", file=err)
        return report.config_error.exit_code
    if report.interrupted:
        print("imagebatch: interrupted; run the same command again to finish", file=err)
        return 130
    if report.failed or report.held:
        # failures first: a run both short of budget and failing must show red; jobs held
        # back are failed too, until their request changes or --retry-failed
        return 1
    if report.stopped_by_budget:
        print(f"imagebatch: the budget is spent; {report.pending} job(s) left pending "
              "(exit 3); run the same command again to go on", file=err)
        return BUDGET_EXIT
    return 0


def _status_manifest(args: argparse.Namespace) -> tuple[str, str | None]:
    """status's (MANIFEST, --cache). `--cache` takes the next word when it can, so
    `status --cache M` leaves M in --cache and no MANIFEST: since a MANIFEST is required,
    that word is the manifest and the cache is $IMAGEBATCH_CACHE, as in `status M --cache`."""
    if args.manifest is not None:
        return args.manifest, args.cache
    if args.cache and "://" not in args.cache:  # a cache URL alone: the manifest is missing
        return args.cache, ""
    raise UsageError("imagebatch status: the following arguments are required: MANIFEST")


def _cmd_status(args: argparse.Namespace) -> int:
    from .commands.status import status_command

    manifest, cache = _status_manifest(args)
    return status_command(
        manifest, out_dir=Path(args.out), local=args.local, env_prefixes=_prefixes(args),
        verbose=args.verbose, as_json=args.json, shard=args.shard, max_jobs=args.max_jobs,
        verify=args.verify, picks_file=args.picks, selection=_selection(args), cache=cache,
    )


def _cmd_share(args: argparse.Namespace) -> int:
    from .commands.share import Share, pull_command, push_command

    share = Share(manifest=args.manifest, out_dir=Path(args.out), cache=args.cache,
                  env_prefixes=_prefixes(args), local=args.local, shard=args.shard,
                  max_jobs=args.max_jobs, post=not getattr(args, "no_post", False),
                  picks_file=getattr(args, "picks", None))
    return (pull_command if args.command == "pull" else push_command)(share)


def _cmd_pick(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .assets.pick import pick_command

    action = "clear" if args.clear else "reject" if args.reject else \
        "rate" if args.rating is not None else "pick"
    return pick_command(args.manifest, args.paths, action=action, rating=args.rating,
                        picks_file=args.picks, out_dir=Path(args.out), max_jobs=args.max_jobs,
                        env_prefixes=_prefixes(args))


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .assets.export import export_command

    return export_command(args.manifest, out_dir=Path(args.out), assets_dir=Path(args.assets),
                          picks_file=args.picks, local=args.local, env_prefixes=_prefixes(args),
                          max_jobs=args.max_jobs, check=args.check)


def _cmd_diff(args: argparse.Namespace) -> int:
    from .commands.diff import diff_command

    return diff_command(args.manifests, against=args.against, as_json=args.json,
                        as_markdown=args.markdown, price=args.price, out_dir=Path(args.out),
                        local=args.local, env_prefixes=_prefixes(args), max_jobs=args.max_jobs,
                        cache=args.cache)


def _cmd_show(args: argparse.Namespace) -> int:
    from .commands.status import show_command

    return show_command(args.image, pretty=args.pretty, credentials=args.credentials)


def _cmd_expand(args: argparse.Namespace) -> int:
    from .commands.expand import expand

    return expand(args.manifest, again=args.again, env_prefix=args.env_prefix)


COMMANDS = {
    "init": _cmd_init,
    "validate": _cmd_validate,
    "plan": _cmd_plan,
    "schema": _cmd_schema,
    "expand": _cmd_expand,
    "run": _cmd_run,
    "status": _cmd_status,
    "show": _cmd_show,
    "export": _cmd_export,
    "sheet": _cmd_sheet,
    "merge": _cmd_merge,
    "pick": _cmd_pick,
    "serve": _cmd_serve,
    "review": _cmd_review,
    "diff": _cmd_diff,
    "pull": _cmd_share,
    "push": _cmd_share,
}


def _output_closed() -> bool:
    """Whether standard output or error is a pipe (or socket) whose reader has gone.

    Such a descriptor polls as an error; a file or terminal, or a pipe still read, does not.
    Where poll() is missing, any broken pipe is taken to be the output's, as before."""
    import select  # noqa: PLC0415 - only on this rare path

    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(ValueError, OSError):  # closed or replaced: not a pipe
            poller.register(stream.fileno(), select.POLLOUT)
    return any(mask & (select.POLLERR | select.POLLHUP) for _fd, mask in poller.poll(0))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `imagebatch` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # a known command first: that command alone is defined. Anything else (an option of
        # the top level, --help or --version, or an unknown command) gets the whole command
        # line, whose help lists every command and whose error suggests the nearest one.
        parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
        if not argv:  # `imagebatch` alone: what it is and what it can do, as --help says
            parser.print_help()
            return 0
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit as exc:  # --help and --version print, then "exit" here
            return exc.code if isinstance(exc.code, int) else 0
        if extra:
            raise UsageError(unrecognized(parser, args.command, extra))
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a write error surfaces here, not as noise at interpreter exit
        return code
    except BrokenPipeError:
        if not _output_closed():
            raise  # another pipe (a worker's, a child's): a fault to report, not a reader gone
        # `imagebatch plan M | head`: the reader has all it wants. Quiet, as `cat` would be;
        # stdout goes to /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a program the pipe stopped
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _OUTPUT_ERRNOS:
            raise  # not standard output: errors of files are reported where they happen
        # Standard output itself failed (a full disk, /dev/full): say so in one line.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"imagebatch: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ManifestError as exc:
        from .commands.preview import problem_report

        print(problem_report(exc), file=sys.stderr)
        return exc.exit_code
    except ImagebatchError as exc:
        if getattr(exc, "problems", None):  # located problems: each line starts FILE:LINE:COL
            print(str(exc), file=sys.stderr)
            return exc.exit_code
        print(f"imagebatch: {exc}" if not str(exc).startswith("imagebatch") else str(exc),
              file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # Ctrl-C ended the command. The ones after it are ignored: the interpreter still
        # waits for threads on its way out, and a late one there would turn exit 130 into a
        # traceback and death by SIGINT (Ctrl-C held down does this).
        with contextlib.suppress(ValueError):  # not the main thread: nothing to ignore
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return 130


def console() -> NoReturn:
    """The `imagebatch` command and `python -m imagebatch`: main() on sys.argv, then exit."""
    try:
        code = main()
    finally:
        # What is alive now lives until the process ends. Frozen, it is left out of the
        # garbage collections the interpreter makes on its way out, which would otherwise
        # walk every object every imported module made: a tenth to a fifth of a second of
        # CPU at the end of each command (more in a forked child, whose walk copies pages).
        # Exit handlers, thread joins and the flushing of files run as before.
        gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console()
