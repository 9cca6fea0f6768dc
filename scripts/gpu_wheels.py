"""The wheels an offline GPU node lacks to run sslops, fetched here into .whl/ for `make gpu-check` to install there.

    python scripts/gpu_wheels.py [--have FILE] [--python 3.12] [--out .whl]

A cluster node with CUDA usually has PyTorch, numpy, pandas and more in its own Python, but not MLflow, DVC, Great
Expectations or Prefect, and cannot download. This walks sslops's requirements as this environment resolved them
(importlib.metadata: the versions `make test` ran with), for the node's Python on Linux x86-64, skips every package
the node already has (`--have`: its `python3 -m pip list --format=freeze`, or a list of names; the default is the
list of the CUDA image sslops's own GPU checks ran on), and downloads the rest at the same versions: the node's own
numpy, torch and friends are used as they are. A package published only as a source archive is built into a wheel
here (they are pure Python). Prints each wheel's size and the total: what travels to the node.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
HAVE = Path(__file__).with_name("gpu_node_packages.txt")
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64"]


def needed(python: str, without: set[str]) -> dict[str, str]:
    """Every distribution sslops needs on a Linux x86-64 CPython `python` (e.g. 3.12), with the version installed
    here: the closure of its requirements but those `without` (and what only they need), markers evaluated for that
    Python, extras followed where asked."""
    env = default_environment() | {"python_version": python, "python_full_version": f"{python}.0"}
    env |= {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    found: dict[str, str] = {}
    absent: set[str] = set()
    extras: dict[str, set[str]] = {}
    todo = [(Requirement("sslops"), "")]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate(env | {"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in without:
            continue
        dist = installed.get(name)
        if dist is None:  # needed on that Python only: no version was tested here
            absent.add(name)
            continue
        if name not in found:
            found[name] = dist.version
            todo += [(Requirement(r), "") for r in dist.requires or []]
        for wanted in req.extras - extras.get(name, set()):  # an extra asked for the first time: its requirements
            extras.setdefault(name, set()).add(wanted)
            todo += [(Requirement(r), wanted) for r in dist.requires or [] if "extra" in r]
    if absent:
        raise SystemExit(
            f"On Python {python} sslops also needs {', '.join(sorted(absent))}, which this environment (Python "
            f"{sys.version_info.major}.{sys.version_info.minor}) does not have, so no tested version is known: run "
            "this from an environment of the node's Python, or fetch those by hand."
        )
    found.pop("sslops")
    return found


def have(path: Path) -> set[str]:
    """The package names in `path`: `pip list --format=freeze` lines or bare names; '#' starts a comment."""
    names = (re.split(r"[=<>~! \[]", line.split("#")[0].strip())[0] for line in path.read_text().splitlines())
    return {canonicalize_name(n) for n in names if n}


def download(packages: dict[str, str], python: str, out: Path) -> None:
    """Each package's wheel for that Python and Linux x86-64 into `out`; a source-only one built into a wheel."""
    out.mkdir(exist_ok=True)
    target = ["--python-version", python, "--implementation", "cp", "--only-binary=:all:"]
    target += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    for name, version in sorted(packages.items()):
        pin = f"{name}=={version}"
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *target, "-d", str(out), pin],
            capture_output=True,
            text=True,
        )
        if got.returncode != 0:  # no wheel published: build one (pure Python; a compiled one would fail here)
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(
                    [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp, pin], check=True, text=True
                )
                for wheel in Path(tmp).glob("*-none-any.whl"):
                    wheel.rename(out / wheel.name)
        print(f"  {pin}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--have", type=Path, default=HAVE, help="the node's packages (pip list --format=freeze)")
    parser.add_argument("--python", default="3.12", help="the node's Python, major.minor")
    parser.add_argument("--out", type=Path, default=ROOT / ".whl")
    parser.add_argument(
        "--without", nargs="*", default=["prefect"], help="requirements a stage never imports (default: the scheduler)"
    )
    args = parser.parse_args()
    without = {canonicalize_name(n) for n in args.without}
    missing = {n: v for n, v in needed(args.python, without).items() if n not in have(args.have)}
    print(f"{len(missing)} packages the node lacks:", flush=True)
    download(missing, args.python, args.out)
    wheels = sorted(args.out.glob("*.whl"), key=lambda w: -w.stat().st_size)
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels[:10]:
        print(f"{wheel.stat().st_size / 2**20:8.1f} MiB  {wheel.name}")
    print(f"{total / 2**20:8.1f} MiB in {len(wheels)} wheels under {args.out}")


if __name__ == "__main__":
    main()
