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
from typing import TYPE_CHECKING

from sslops.errors import SslopsError

if TYPE_CHECKING:
    from sslops.config import Project

STAGES = ("prepare", "validate", "augment", "pretrain", "register", "finetune", "evaluate")


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


def _connect() -> Project:
    from sslops import tracking
    from sslops.config import Project

    project = Project.discover()
    tracking.connect(project)
    return project


def _lineage(args: argparse.Namespace) -> int:
    from sslops import lineage

    project = _connect()
    if args.data:
        chain = lineage.data_chain(project, args.data)
        text = lineage.format_data_chain(chain)
    else:
        chain = lineage.model_chain(project, args.model)
        text = lineage.format_model_chain(chain)
    print(json.dumps(chain, indent=2, default=str) if args.json else text)
    return 0


def _embed(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sslops.embed import embed_folder

    _connect()
    print(json.dumps(embed_folder(args.model, Path(args.images), Path(args.out)), indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    from sslops.config import Project
    from sslops.report import print_report

    print(print_report(Project.discover(), update_readme=args.readme))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        sub.add_parser(stage, help=f"run the {stage} stage (as dvc.yaml does)").set_defaults(func=_run_stage)
    fetch = sub.add_parser("fetch-data", help="put the verified Fashion-MNIST IDX files into data/")
    fetch.add_argument("--target", default="data/fashion-mnist", help="folder to fill (default: %(default)s)")
    fetch.set_defaults(func=_fetch_data)
    lin = sub.add_parser("lineage", help="trace a model version back to its data, or data forward to its models")
    lin.add_argument("model", nargs="?", default="champion",
                     help="model ref: alias or version of register.model_name, name@alias or name/version (default: %(default)s)")
    lin.add_argument("--data", metavar="MD5", help="list every model version built on this data.dvc md5 instead")
    lin.add_argument("--json", action="store_true", help="machine-readable output")
    lin.set_defaults(func=_lineage)
    emb = sub.add_parser("embed", help="write embeddings of a folder of images from a registered encoder")
    emb.add_argument("images", help="folder of images (searched recursively)")
    emb.add_argument("--model", default="models:/sslops-encoder@champion", help="MLflow model URI (default: %(default)s)")
    emb.add_argument("--out", default="embeddings.npz", help="output .npz with `paths` and `embeddings` (default: %(default)s)")
    emb.set_defaults(func=_embed)
    rep = sub.add_parser("report", help="print the results table of the last evaluate run")
    rep.add_argument("--readme", action="store_true", help="also rewrite the results section of README.md")
    rep.set_defaults(func=_report)
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
