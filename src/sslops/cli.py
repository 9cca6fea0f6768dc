"""The `sslops` command line: one sub-command per stage plus helpers.

Imports are deferred to the chosen command, so `sslops --help` is instant and the `dvc repro`
path pays only for what each stage uses.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence

from sslops.errors import SslopsError

STAGES = ("prepare", "validate", "augment", "pretrain")


# No telemetry from the tools we drive (the Makefile and .ci/run export the same).
TELEMETRY_OFF = {
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def _quiet_third_parties() -> None:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def _run_stage(args: argparse.Namespace) -> int:
    from sslops.config import Project

    module = importlib.import_module(f"sslops.stages.{args.command}")
    summary = module.run(Project.discover())
    if summary:  # torchrun ranks other than 0 return nothing to report
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _fetch_data(args: argparse.Namespace) -> int:
    from sslops.config import Project
    from sslops.fetch import fetch_fashion_mnist

    target = Project.discover().path(args.target)
    print(f"Fashion-MNIST in {target}: {fetch_fashion_mnist(target)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        sub.add_parser(stage, help=f"run the {stage} stage (as dvc.yaml does)").set_defaults(func=_run_stage)
    fetch = sub.add_parser("fetch-data", help="put the verified Fashion-MNIST IDX files into data/")
    fetch.add_argument("--target", default="data/fashion-mnist", help="folder to fill (default: %(default)s)")
    fetch.set_defaults(func=_fetch_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_third_parties()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SslopsError as exc:
        print(f"sslops {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"sslops {args.command}: interrupted; outputs were left as they were before the run.", file=sys.stderr)
        return 130
