"""Create a virtual environment with pip in it: `python tools/make_venv.py DIR` (what `make` runs).

`python -m venv DIR` installs pip from Python's bundled wheel, byte-compiling every one of
its files: 5 to 9 CPU-seconds, the larger part of a fresh clone's first `make run`. When
the Python running this script has a pip of its own that carries its libraries inside it
(a pip installed by ensurepip or pip, not a Linux distribution's, which reads its libraries
from elsewhere), the files that pip installed are copied into DIR instead: they were
compiled for this same interpreter, so the copy takes a fraction of a second. The copy is
then run (`DIR/bin/python -m pip --version`); if it does not run, or there is no such pip,
DIR is made the standard way. A copy holds what `python -m venv` makes on Python 3.12 and
later: pip alone (ensurepip on 3.10 and 3.11 adds setuptools, which no target uses: builds
are isolated), with its `pip`, `pip3` and `pip3.X` commands.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

#: What `python -m venv` itself uses on this system.
SYMLINKS = os.name != "nt"

#: The command pip's installer writes for each of pip's console scripts.
SCRIPT = """#!{python}
import re
import sys
from pip._internal.cli.main import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""


def own_pip() -> tuple[Path, Path] | None:
    """The folders of this interpreter's pip and its dist-info, when they can be copied."""
    try:
        import pip
        import pip._vendor
    except ImportError:
        return None
    if getattr(pip._vendor, "DEBUNDLED", False):  # a distribution's pip: libraries elsewhere
        return None
    package = Path(pip.__file__).parent
    infos = [d for d in package.parent.glob("pip-*.dist-info") if (d / "RECORD").is_file()]
    return (package, infos[0]) if len(infos) == 1 else None


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def copied(target: Path) -> bool:
    """Make `target` without pip, then copy this interpreter's pip into it; whether it runs."""
    found = own_pip()
    if found is None:
        return False
    venv.EnvBuilder(symlinks=SYMLINKS, with_pip=False).create(target)
    python = target / ("Scripts" if os.name == "nt" else "bin") / "python"
    where = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    if where.returncode != 0:
        return False
    site = Path(where.stdout.strip())
    for folder in found:
        shutil.copytree(folder, site / folder.name, symlinks=True)
    major, minor = sys.version_info[:2]
    for name in ("pip", f"pip{major}", f"pip{major}.{minor}"):
        script = python.parent / name
        script.write_text(SCRIPT.format(python=python), encoding="utf-8")
        script.chmod(0o755)
    return _run([str(python), "-m", "pip", "--version"]).returncode == 0


def main(argv: list[str]) -> int:
    """Create the environment named by the one argument."""
    if len(argv) != 1:
        print("usage: python tools/make_venv.py DIR", file=sys.stderr)
        return 2
    target = Path(argv[0])
    if not target.exists():  # a folder already there is only ever added to, as venv does
        try:
            if copied(target):
                return 0
        except OSError:
            pass
        shutil.rmtree(target, ignore_errors=True)  # a copy that failed: the standard way
    try:
        venv.EnvBuilder(symlinks=SYMLINKS, with_pip=True).create(target)
    except subprocess.CalledProcessError as exc:  # ensurepip failed; it said why above
        print(f"could not install pip into {target}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
