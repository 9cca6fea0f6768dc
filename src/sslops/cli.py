"""The `sslops` command line: one sub-command per stage plus helpers.

Imports are deferred to the chosen command, so `sslops --help` is instant and the `dvc repro`
path pays only for what each stage uses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sslops.env import ESTIMATES_ENV, STARTED, TELEMETRY_OFF, TIMINGS_ENV
from sslops.errors import ServiceUnavailable, SslopsError

if TYPE_CHECKING:
    from sslops.commands.estimate import Estimate
    from sslops.config import Project

STAGES = ("prepare", "validate", "augment", "pretrain", "register", "finetune", "evaluate")
TASK_STAGES = ("prepare", "validate", "finetune", "evaluate")  # also run per downstream task (--task NAME)


def _quiet_third_parties() -> None:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def _run_stage(args: argparse.Namespace) -> int:
    """One stage, under the project lock unless whoever started it (`sslops repro`, a flow run) holds it."""
    from sslops.config import Project
    from sslops.pipeline_lock import stage_lock

    checked = Project.discover()
    checked.config(args.command)  # bad params fail before the lock file is touched, as before any other write
    task = getattr(args, "task", None)
    if task is not None:
        checked.outputs(task)  # an unknown task is named before anything runs
    run = _stage_runner(args.command, task is not None and checked.config("tasks")[task].dense)
    timeout = checked.config("flow").lock_timeout_s
    holder = f"sslops {args.command}" + (f" --task {task}" if task else "")
    with stage_lock(checked.root, timeout, holder, on_wait=print):
        project = Project(checked.root)  # params.yaml read again under the lock: a flow may have changed it
        summary = run(project, task) if args.command in TASK_STAGES else run(project)
    if summary:  # torchrun ranks other than 0 return nothing to report
        print(json.dumps(summary, indent=2, default=str))
    if os.environ.get(TIMINGS_ENV) and summary:  # `sslops repro` prints it beside the estimate
        from sslops.adapters.provenance import dvc_stage

        with open(os.environ[TIMINGS_ENV], "a") as timings:
            line = {"stage": dvc_stage(args.command, task), "seconds": round(time.monotonic() - STARTED, 1)}
            timings.write(json.dumps(line) + "\n")
    return 0


def _stage_runner(name: str, dense: bool = False) -> Callable[..., dict[str, Any]]:
    """The chosen stage's `run`, importing that stage only (a stage's imports are its start-up cost); for a detection
    or segmentation task, the dense module's stage of that name."""
    if dense:
        from sslops.stages import dense as stages

        return getattr(stages, name)
    match name:
        case "prepare":
            from sslops.stages import prepare as stage
        case "validate":
            from sslops.stages import validate as stage
        case "augment":
            from sslops.stages import augment as stage
        case "pretrain":
            from sslops.stages import pretrain as stage
        case "register":
            from sslops.stages import register as stage
        case "finetune":
            from sslops.stages import finetune as stage
        case "evaluate":
            from sslops.stages import evaluate as stage
        case _:
            raise SslopsError(f"unknown stage {name!r} (one of {', '.join(STAGES)})")
    return stage.run


def _fetch_data(args: argparse.Namespace) -> int:
    from sslops.commands.digits import export_digits
    from sslops.commands.fetch import fetch_fashion_mnist
    from sslops.config import Project
    from sslops.data.scenes import generate as generate_scenes

    project = Project.discover()
    target = project.path(args.target)
    print(f"Fashion-MNIST in {target}: {fetch_fashion_mnist(target)}")
    digits = project.path(args.digits)
    print(f"scikit-learn digits in {digits}: {export_digits(digits)}")
    scenes = project.path(args.scenes)
    print(f"Fashion-MNIST scenes (boxes and masks) in {scenes}: {generate_scenes(scenes, target)}")
    return 0


def _connect(create: bool = True) -> Project:
    """The project, with MLflow pointed at its store; a command that only reads passes `create` False, so that it
    says there is no store yet instead of creating an empty one."""
    from sslops.adapters import tracking
    from sslops.config import Project

    project = Project.discover()
    tracking.connect(project, create)
    return project


def _lineage(args: argparse.Namespace) -> int:
    from sslops.commands import lineage

    project = _connect(create=False)
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

    from sslops.commands.embed import embed_folder

    project = _connect(create=False)
    prepare, recorded = project.config("prepare"), project.register_record()
    model = args.model or f"models:/{project.model_name}@champion"
    found = embed_folder(model, Path(args.images), Path(args.out), prepare.max_pixels, prepare.resize.mode, recorded)
    print(json.dumps(found, indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    from sslops.commands.report import print_report
    from sslops.config import Project

    print(print_report(Project.discover(), update_readme=args.readme))
    return 0


def _search(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sslops.commands.search import search_recipes
    from sslops.outputs.atomic import write_json

    project = _connect()
    found = search_recipes(project, args.task, args.trials.split(",") if args.trials else None)
    if args.json:
        write_json(Path(args.json), found)
    for trial, scores in found["scores"].items():
        held = {k.removeprefix("holdout.acc."): v for k, v in scores.items() if k.startswith("holdout.acc.")}
        print(f"{trial}: " + ", ".join(f"{key} {100 * acc:.2f} %" for key, acc in held.items()))
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from sslops.commands.estimate import estimate, format_estimate
    from sslops.config import Project
    from sslops.orchestration.pipeline import stage_order, stages_to_run

    project = Project.discover()
    stages = stage_order(project.root) if args.all else stages_to_run(project.root)
    est = estimate(project, stages)
    print(json.dumps(est.to_dict(), indent=2) if args.json else format_estimate(est))
    return 0


def _init(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from sslops.commands.estimate import pretrain_estimate
    from sslops.commands.init import data_folder, describe, fit_budget, propose
    from sslops.config import Project
    from sslops.data.survey import survey
    from sslops.ml.models import BackboneConfig, resolve_backbone
    from sslops.orchestration import project_lock
    from sslops.orchestration.overrides import write_params
    from sslops.orchestration.runner import run_dvc, stage_env

    if args.side is not None and args.side < 1:
        raise SslopsError(f"--side {args.side}: the side must be a positive number of pixels")
    project = Project.discover()
    root = data_folder(project, Path(args.path))
    prepare, pretrain = project.config("prepare"), project.config("pretrain")
    here = Path(os.path.relpath(project.root / root))  # what a person typed, in every message about a file
    found = survey(here, prepare.unlabeled_dir, prepare.max_pixels)
    proposal = propose(project, found, root, args.replace_tasks, args.side)
    height, width = (proposal.side, proposal.side) if proposal.side else found.sizes[0]
    backbone = resolve_backbone(
        pretrain.backbone.to_core(BackboneConfig, in_channels=proposal.channels), min(height, width)
    )
    images = found.labelled + found.unlabeled
    cost = pretrain_estimate(project, (height, width, proposal.channels), images, found.labelled)
    pretraining = fit_budget(proposal, pretrain.images, cost.seconds, pretrain.batch_size, pretrain.min_steps)
    pretraining += f" ({cost.work} at the full budget)"
    name = backbone.name + (
        " (standard stem)" if backbone.name.startswith("resnet") and not backbone.small_stem else ""
    )
    print(describe(found, proposal, name, pretraining), flush=True)
    if args.dry_run:
        print("dry run: nothing written.")
        return 0
    holder = f"sslops init (pid {os.getpid()})"
    with project_lock(project.root, project.config("flow").lock_timeout_s, holder, on_wait=print):
        write_params(project.params_file, proposal.updates, proposal.deletions)
        for task in proposal.removed_tasks:  # the outputs of tasks that are gone, so no table shows them again
            for folder in ("artifacts", "metrics", "plots"):
                shutil.rmtree(project.root / folder / "tasks" / task, ignore_errors=True)
        sections = dict.fromkeys(key.split(".")[0] for key in [*proposal.updates, *proposal.deletions])
        print(f"written: params.yaml ({', '.join(sections)})")
        code, tail = run_dvc(project.root, ["add", "-q", "data"], stage_env(project.root, None), lambda _: None)
        if code != 0:
            raise SslopsError(
                "params.yaml is written, but `dvc add data` failed (run it again once fixed):\n" + "\n".join(tail[-10:])
            )
    print("dvc add data: data.dvc updated")
    print(f"next: git add data.dvc params.yaml && git commit -m 'Add {proposal.task}', then make run")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from sslops.commands.docs import CLI, CONFIGURATION, cli_markdown, configuration_markdown, write_or_check
    from sslops.config import Project

    project = Project.discover()
    project.check()  # the reference shows params.yaml's values as the defaults: never an invalid one
    pages = {CONFIGURATION: configuration_markdown(project), CLI: cli_markdown(build_parser())}
    stale = write_or_check(project.root, pages, check=args.check)
    for path in stale:
        print(f"{path}: {'stale: run `sslops docs`' if args.check else 'written'}")
    return 1 if stale and args.check else 0


def _repro(args: argparse.Namespace) -> int:
    """`dvc repro` under the project lock that flow runs take, so `make run` and a Prefect run never interleave;
    a plain `sslops repro` first says what each stage that will run costs here, and after it what each one took."""
    import subprocess
    import tempfile
    from pathlib import Path

    from sslops.commands.estimate import format_actuals, format_estimate
    from sslops.config import Project
    from sslops.orchestration import overridden_params, project_lock, stage_env
    from sslops.orchestration.pipeline import stages_to_run

    project = Project.discover()
    timeout = project.config("flow").lock_timeout_s
    holder = f"sslops repro (pid {os.getpid()})"
    if orphans := project.orphaned_outputs():
        shown = " ".join(str(path.relative_to(project.root)) for path in orphans)
        print(f"sslops repro: note: outputs of tasks no longer in params.yaml stay until removed: rm -rf {shown}")
    with project_lock(project.root, timeout, holder, on_wait=print), overridden_params(project.root, {}, warn=print):
        # no overrides: this only restores params.yaml if a killed flow run left it overridden
        project = Project(project.root)  # params.yaml as restored above, not as read before it
        env = stage_env(project.root, None)
        stages = None if args.dvc_args else stages_to_run(project.root)
        _check_params(project, stages)
        planned = None if stages is None else _advisory_estimate(project, stages)
        if planned is not None:
            print(format_estimate(planned), flush=True)
            env[ESTIMATES_ENV] = json.dumps(planned.seconds())
        with tempfile.TemporaryDirectory() as tmp:
            env[TIMINGS_ENV] = str(Path(tmp) / "timings.jsonl")
            code = subprocess.call(["dvc", "repro", *args.dvc_args], cwd=project.root, env=env)
            timings = Path(env[TIMINGS_ENV])
            lines = timings.read_text().splitlines() if timings.is_file() else []
    if planned is not None and lines:
        print(format_actuals(planned, {(t := json.loads(line))["stage"]: t["seconds"] for line in lines}))
    return code


def _check_params(project: Project, stages: list[str] | None) -> None:
    """Every section of params.yaml, and the method's knobs where pretrain will run (`stages`; None: unknown), checked
    before `dvc repro` starts: a bad value in a later stage's section fails now, not after the earlier stages ran."""
    project.check()
    if stages is None or "pretrain" in stages:
        from sslops.config.validation import method_knobs
        from sslops.ml.methods import METHOD_CONFIGS  # torch: only where pretraining is about to import it anyway

        method_knobs(project.config("pretrain"), METHOD_CONFIGS)


def _advisory_estimate(project: Project, stages: list[str]) -> Estimate | None:
    """The estimate `sslops repro` prints, or None with a warning when it cannot be made: it advises, so a failure to
    estimate (say, a calibration the machine cannot run) never stops the run itself."""
    from sslops.commands.estimate import estimate

    try:
        return estimate(project, stages)
    except Exception as exc:  # noqa: BLE001 - advisory: any failure is reported and the run goes on
        print(f"sslops repro: warning: no estimate ({type(exc).__name__}: {exc}); running anyway.", file=sys.stderr)
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        parser_ = sub.add_parser(stage, help=f"run the {stage} stage (as dvc.yaml does)")
        if stage in TASK_STAGES:
            required = stage in ("finetune", "evaluate")
            what = "the downstream task (a key of tasks: in params.yaml)" + (
                "" if required else "; none: pretraining data"
            )
            parser_.add_argument("--task", required=required, metavar="NAME", help=what)
        parser_.set_defaults(func=_run_stage)
    fetch = sub.add_parser(
        "fetch-data", help="put the verified Fashion-MNIST, scikit-learn digits and scenes made of them into data/"
    )
    fetch.add_argument("--target", default="data/fashion-mnist", help="Fashion-MNIST's folder (default: %(default)s)")
    fetch.add_argument("--digits", default="data/digits", help="the digits' folder (default: %(default)s)")
    fetch.add_argument(
        "--scenes", default="data/fashion-scenes", help="the dense task's scenes' folder (default: %(default)s)"
    )
    fetch.set_defaults(func=_fetch_data)
    lin = sub.add_parser("lineage", help="trace a model version back to its data, or data forward to its models")
    lin.add_argument(
        "model",
        nargs="?",
        default="champion",
        help="model ref: alias or version of <register.model_name>-<dataset>, name@alias or name/version "
        "(default: %(default)s)",
    )
    lin.add_argument(
        "--data", metavar="MD5", help="list every model version built on this data.dvc or dataset-folder md5 instead"
    )
    lin.add_argument("--json", action="store_true", help="machine-readable output")
    lin.set_defaults(func=_lineage)
    emb = sub.add_parser("embed", help="write embeddings of a folder of images from a registered encoder")
    emb.add_argument("images", help="folder of images (searched recursively)")
    emb.add_argument("--model", help="MLflow model URI (default: the champion of this project's registered model)")
    emb.add_argument(
        "--out", default="embeddings.npz", help="output .npz with `paths` and `embeddings` (default: %(default)s)"
    )
    emb.set_defaults(func=_embed)
    est = sub.add_parser("estimate", help="the minutes each stage that `sslops repro` would run takes on this machine")
    est.add_argument("--all", action="store_true", help="every stage, as on a fresh clone, not only the stale ones")
    est.add_argument("--json", action="store_true", help="machine-readable: seconds per stage and in total")
    est.set_defaults(func=_estimate)
    sea = sub.add_parser("search-recipes", help="score fine-tuning recipes on a task's held-out labels (never test)")
    sea.add_argument("--task", required=True, metavar="NAME", help="the downstream task (a key of tasks:)")
    sea.add_argument("--trials", help="comma-separated trials of finetune.trials (default: all)")
    sea.add_argument("--json", metavar="FILE", help="also write the scores, the encoder and the machine there")
    sea.set_defaults(func=_search)
    rep_ = sub.add_parser("repro", help="dvc repro under the project lock that Prefect flow runs take (make run)")
    rep_.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed on to `dvc repro`")
    rep_.set_defaults(func=_repro)
    ini = sub.add_parser("init", help="survey a folder of your images under data/, write params for it, dvc add")
    ini.add_argument("path", help="the folder, inside data/ (train/<class>/, test/<class>/, optional unlabeled/)")
    ini.add_argument("--replace-tasks", action="store_true", help="make its task the only one (default: add it)")
    ini.add_argument("--side", type=int, metavar="PX", help="resize every image to PX x PX (default: the median side)")
    ini.add_argument("--dry-run", action="store_true", help="print the survey and the proposal; write nothing")
    ini.set_defaults(func=_init)
    doc = sub.add_parser("docs", help="write docs/configuration.md and docs/cli.md from params.yaml, schema, parser")
    doc.add_argument("--check", action="store_true", help="write nothing; exit 1 if either page is stale")
    doc.set_defaults(func=_docs)
    rep = sub.add_parser("report", help="print one results table per downstream task (their last evaluate runs)")
    rep.add_argument("--readme", action="store_true", help="also rewrite the results section of README.md")
    rep.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_third_parties()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ServiceUnavailable as exc:
        print(f"sslops {args.command}: unavailable: {exc}", file=sys.stderr)
        return exc.exit_code
    except SslopsError as exc:
        print(f"sslops {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"sslops {args.command}: interrupted; outputs were left as they were before the run.", file=sys.stderr)
        return 130
