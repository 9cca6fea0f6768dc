"""params.yaml → one typed, validated config per section: types, ranges and unknown keys named before any work,
profiles resolved once, defaults in params.yaml only, and what a run records is what ran."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TASK
from sslops.config import Project
from sslops.config.schema import SECTIONS
from sslops.config.validation import method_knobs, parse_section, resolve_profile
from sslops.errors import SslopsError
from sslops.ml.methods import METHODS

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def section(name: str, **changes) -> dict:
    """The repository's params.yaml section `name` with dotted-key `changes` applied."""
    values = copy.deepcopy(PARAMS[name])
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = values
        for key in path:
            node = node[key]
        node[last] = value
    return values


def test_the_repository_params_validate() -> None:
    project = Project(REPO)
    assert set(PARAMS) == set(SECTIONS)
    for name in SECTIONS:
        assert project.config(name) is project.config(name)  # validated once per process


def test_a_declared_headline_protocol_is_one_that_finetune_runs() -> None:
    from typing import get_args

    from sslops.config.schema import Protocol
    from sslops.ml.results import PROTOCOLS

    assert set(get_args(Protocol)) == set(PROTOCOLS)


def test_the_schema_offers_what_the_core_implements() -> None:
    """The config layer lists formats and backbones as Literals for its error messages; the core has its own tuples:
    a value one side adds and the other lacks would pass validation and fail deep in a stage, or never be offered."""
    from typing import get_args

    from sslops.config.schema import BackboneKnobs, Format
    from sslops.data.formats import FORMATS
    from sslops.ml.models import BACKBONES

    assert set(get_args(Format)) == set(FORMATS)
    assert set(get_args(BackboneKnobs.model_fields["name"].annotation)) == {"auto", *BACKBONES}
    assert list(parse_section("pretrain", PARAMS["pretrain"]).knobs) == list(METHODS)  # params.yaml: every method


# The bad values an audit found (issue 11), one per kind, and the message each now gives.
BAD = [
    ("pretrain", {"images": 0}, "pretrain.images in params.yaml: must be greater than 0, got 0"),
    ("pretrain", {"batch_size": 0}, "pretrain.batch_size in params.yaml: must be greater than 0, got 0"),
    ("pretrain", {"batch_size": -256}, "pretrain.batch_size in params.yaml: must be greater than 0, got -256"),
    ("pretrain", {"images": 2.5}, "pretrain.images in params.yaml: must be a valid integer, got 2.5"),
    ("pretrain", {"val_fraction": 1.0}, "pretrain.val_fraction in params.yaml: must be less than 1, got 1.0"),
    ("pretrain", {"backbone__name": "vit"}, "pretrain.backbone.name in params.yaml: must be 'auto', 'small_cnn',"),
    ("prepare", {"resize__mode": "stretch"}, "prepare.resize.mode in params.yaml: must be 'crop' or 'pad', got"),
    ("prepare", {"resize__side": 0}, "prepare.resize.side in params.yaml: must be greater than 0, got 0"),
    ("pretrain", {"amp": "fp8"}, "pretrain.amp in params.yaml: must be 'auto', 'bf16', 'fp16' or 'off', got 'fp8'"),
    ("pretrain", {"backbone__poool": 2}, "pretrain.backbone.poool in params.yaml: unknown key (known: name, width"),
    ("augment", {"shard_size": 0}, "augment.shard_size in params.yaml: must be greater than 0, got 0"),
    ("augment", {"flip_p": 1.5}, "augment.flip_p in params.yaml: must be less than or equal to 1, got 1.5"),
    ("augment", {"views": 1}, "augment in params.yaml: views must be 0 (augment on the fly) or at least 2"),
    ("augment", {"crop_scale": [0.9, 0.2]}, "crop_scale must be [low, high] with low <= high, got [0.9, 0.2]"),
    ("finetune", {"recipe__batch_size": 0}, "finetune.recipe.batch_size in params.yaml: must be greater than 0, got 0"),
    ("finetune", {"knn": {"k": 200}}, "finetune.knn in params.yaml: unknown key (known: model, seed"),
    ("finetune", {"fractions": [0.1]}, "finetune.fractions in params.yaml: unknown key"),  # now tasks.NAME.budgets
    (
        "finetune",
        {"trials__fast": {"lr": -1}},
        "finetune.trials.fast.lr in params.yaml: must be greater than 0, got -1",
    ),
    (
        "finetune",
        {"trials__fast": {"lr_x": 1}},
        "finetune.trials.fast.lr_x in params.yaml: unknown key (known: optimizer,",
    ),
    (
        "finetune",
        {"chosen": {"digits": {"per_class_10": {"scratch": "fast"}}}},
        "finetune in params.yaml: chosen.digits.per_class_10.scratch names trial 'fast', not one of finetune.trials",
    ),
    (
        "finetune",
        {"headline": {"digits": {"per_class_10": {"scratch": "probe"}}}},
        "finetune.headline.digits.per_class_10.scratch in params.yaml: must be 'finetune', 'linear', 'knn' or",
    ),
    (
        "finetune",
        {"headline": {"digits": {"per_class_10": {"pretrained": "distill"}}}},
        "headline.digits.per_class_10.pretrained is 'distill', but finetune.distill.budgets does not list per_class_10",
    ),
    (
        "finetune",
        {"headline": {"digits": {"10/class": {"pretrained": "linear"}}}},
        "finetune.headline.digits.10/class.[key] in params.yaml: must be a budget key as metrics name them",
    ),
    (
        "finetune",
        {"chosen": {"digits": {"frac_0.10": {"pretrained": "base"}}}},
        "finetune.chosen.digits.frac_0.10.[key] in params.yaml: must be written as metrics name it: frac_0.1",
    ),
    (
        "finetune",
        {"headline": {"digits": {"frac_1.0": {"pretrained": "linear"}}}},
        "finetune.headline.digits.frac_1.0.[key] in params.yaml: must be a budget key as metrics name them",
    ),
    ("finetune", {"search__auto": ["fast"]}, "search.auto[0] names trial 'fast', not one of finetune.trials (base,"),
    ("finetune", {"search__holdout": 1}, "finetune.search.holdout in params.yaml: must be less than 1, got 1"),
    ("tasks", {"digits__budgets": [0.0]}, "tasks.digits.budgets.0 in params.yaml: must be a fraction of the labels in"),
    ("tasks", {"digits__budgets": ["10 per class"]}, "such as '10/class', got '10 per class'"),
    (
        "tasks",
        {"digits__root": "/data/digits"},
        "tasks.digits.root in params.yaml: must be a folder inside the project",
    ),
    ("register", {"min_improvement": "a lot"}, "register.min_improvement in params.yaml: must be a valid number"),
    ("register", {"min_improvement": -0.1}, "register.min_improvement in params.yaml: must be greater than or equal"),
    ("prepare", {"classes": "T-shirt, Trouser"}, "prepare.classes in params.yaml: must be a valid list"),
    ("validate", {"min_class_share": 2}, "validate.min_class_share in params.yaml: must be less than or equal to 1"),
    ("validate", {"min_rows": 10, "max_rows": 5}, "min_rows (10) must not exceed max_rows (5)"),
    ("evaluate", {"device": "gpu"}, "evaluate.device in params.yaml: must match pattern"),
    ("prepare", {"root": "../someone-else/data"}, "prepare.root in params.yaml: must be a folder inside the project"),
    ("prepare", {"unlabeled_dir": "../x"}, "prepare.unlabeled_dir in params.yaml: must be the name of a folder inside"),
    ("prepare", {"unlabeled_dir": "test"}, "prepare.unlabeled_dir in params.yaml: must not be a split's folder"),
    ("prepare", {"channels": True}, "prepare.channels in params.yaml: must be a number, not a boolean"),
    ("prepare", {"classes": ["a", "b", "a"]}, "prepare.classes in params.yaml: each class may appear once, a repeats"),
    ("tasks", {"digits__classes": ["0", "0"]}, "tasks.digits.classes in params.yaml: each class may appear once, 0 re"),
    ("augment", {"flip_p": True}, "augment.flip_p in params.yaml: must be a number, not a boolean (YAML reads"),
    ("finetune", {"search__holdout": False}, "finetune.search.holdout in params.yaml: must be a number, not a boolean"),
    ("prepare", {"store__quality": True}, "prepare.store.quality in params.yaml: must be a valid integer, got True"),
    ("prepare", {"mask_ignore": "255"}, "prepare.mask_ignore in params.yaml: must be a valid integer, got '255'"),
]


@pytest.mark.parametrize(("name", "changes", "message"), BAD, ids=[f"{n}-{next(iter(c))}" for n, c, _ in BAD])
def test_bad_values_are_named_with_key_value_and_what_is_allowed(name: str, changes: dict, message: str) -> None:
    with pytest.raises(SslopsError) as info:
        parse_section(name, section(name, **changes))
    assert message in str(info.value)


# A method's knobs are declared in its own file (sslops.ml.methods.<name>) and checked where the method is built.
BAD_KNOBS = [
    ({"jigsaw__grid": 1}, "pretrain.jigsaw.grid in params.yaml: must be greater than or equal to 2, got 1"),
    ({"jigsaw__permutations": 25}, "pretrain.jigsaw in params.yaml: permutations 25 must be between 2 and 24"),
    ({"vicreg__proj_dim": 1}, "pretrain.vicreg.proj_dim in params.yaml: must be greater than or equal to 2, got 1"),
    ({"barlow__lambda_offdiag": 0}, "pretrain.barlow.lambda_offdiag in params.yaml: must be greater than 0, got 0"),
    ({"dino__local_fraction": 1.0}, "pretrain.dino.local_fraction in params.yaml: must be less than 1, got 1.0"),
    ({"dino__local_scale": [0.4, 0.05]}, "pretrain.dino in params.yaml: local_scale must be [low, high] with low <="),
    ({"dino__local_scale": [0.0, 0.4]}, "pretrain.dino.local_scale.0 in params.yaml: must be greater than 0, got 0.0"),
    ({"dino__local_crops": -1}, "pretrain.dino.local_crops in params.yaml: must be greater than or equal to 0, got -1"),
    ({"dae__noise_p": 0.0, "dae__noise_std": 0.0}, "pretrain.dae in params.yaml: noise_p and noise_std are both 0"),
    ({"simclr__proj_dim": "128"}, "pretrain.simclr.proj_dim in params.yaml: must be a valid integer, got '128'"),
    ({"simclr__proj_dim": 12.5}, "pretrain.simclr.proj_dim in params.yaml: must be a valid integer, got 12.5"),
    ({"simclr__temperature": "2e-1"}, "must be a valid number (YAML reads a number in e-notation without a dot as"),
    ({"simclr__temperature": float("nan")}, "pretrain.simclr.temperature in params.yaml: must be a finite number"),
    ({"moco__queue": 5}, "pretrain.moco.queue in params.yaml: unknown key (known: proj_hidden, proj_dim, temperatur"),
    ({"moco": {"proj_dim": 8}}, "pretrain.moco.proj_hidden in params.yaml: missing"),
    ({"simclr2": {"proj_dim": 8}}, "pretrain.simclr2 in params.yaml: unknown key (known: profile, method,"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_KNOBS, ids=[next(iter(c)) for c, _ in BAD_KNOBS])
def test_bad_method_knobs_are_named_whichever_method_runs(changes: dict, message: str) -> None:
    """Every method's knobs are checked, not only those of the method that runs: a wrong value waits for no one."""
    from sslops.ml.methods import METHOD_CONFIGS

    cfg = parse_section("pretrain", section("pretrain", **changes))
    with pytest.raises(SslopsError) as info:
        method_knobs(cfg, METHOD_CONFIGS)
    assert message in str(info.value)


def test_the_method_must_be_registered_and_have_its_knobs() -> None:
    from sslops.ml.methods import METHOD_CONFIGS

    with pytest.raises(SslopsError, match="pretrain.method in params.yaml: 'swav' is not a method"):
        method_knobs(parse_section("pretrain", section("pretrain", method="swav", swav={"k": 1})), METHOD_CONFIGS)
    with pytest.raises(SslopsError, match="pretrain.method in params.yaml: no pretrain.swav mapping holds its knobs"):
        parse_section("pretrain", section("pretrain", method="swav"))
    with pytest.raises(SslopsError, match=r"batchsize in params.yaml: unknown key \(known: profile, method, backbone,"):
        parse_section("pretrain", section("pretrain", batchsize=512))  # not a mapping: not a method's knobs


def test_every_problem_with_the_knobs_is_reported_at_once() -> None:
    from sslops.ml.methods import METHOD_CONFIGS

    cfg = parse_section("pretrain", section("pretrain", vicreg__proj_dim=1, jigsaw__grid=1, jigsaw__hidden=0))
    with pytest.raises(SslopsError) as info:
        method_knobs(cfg, METHOD_CONFIGS)
    assert [line.split(" in ")[0] for line in str(info.value).splitlines()] == [
        "pretrain.vicreg.proj_dim",
        "pretrain.jigsaw.grid",
        "pretrain.jigsaw.hidden",
    ]


def test_a_missing_key_is_named_and_there_is_no_default_to_fall_back_on() -> None:
    values = section("pretrain")
    del values["images"]
    with pytest.raises(SslopsError, match=r"pretrain.images in params.yaml: missing; every knob needs a value"):
        parse_section("pretrain", values)


def test_every_problem_of_a_section_is_reported_at_once() -> None:
    with pytest.raises(SslopsError) as info:
        parse_section("pretrain", section("pretrain", images=0, batch_size=0, optimizer="adam"))
    assert [line.split(" in ")[0] for line in str(info.value).splitlines()] == [
        "pretrain.images",
        "pretrain.batch_size",
        "pretrain.optimizer",
    ]


def test_an_error_in_a_profile_that_is_not_selected_is_still_found() -> None:
    values = section("pretrain")
    values["profiles"]["gpu"]["images"] = 0
    with pytest.raises(SslopsError, match=r"pretrain.images .*got 0 \(with pretrain.profiles.gpu merged in\)"):
        parse_section("pretrain", values)


def test_tasks_name_their_budgets_as_fractions_or_labels_per_class() -> None:
    from sslops.ml.results import budget_key, budget_name

    tasks = Project(REPO).config("tasks")
    assert tasks.names() == ["fashion-mnist", "digits"]
    assert tasks["digits"].budgets == ["10/class", "50/class", 1.0]
    assert [budget_key(b) for b in tasks["digits"].budgets] == ["per_class_10", "per_class_50", "frac_1"]
    assert [budget_name(b) for b in tasks["fashion-mnist"].budgets] == ["1 %", "10 %", "100 %"]
    with pytest.raises(SslopsError, match="tasks in params.yaml: .*at least 1 item"):
        parse_section("tasks", {})
    with pytest.raises(SslopsError, match="tasks.My Task"):
        parse_section("tasks", {"My Task": PARAMS["tasks"]["digits"]})  # names are folder names and DVC keys


def test_an_unknown_profile_is_named() -> None:
    with pytest.raises(SslopsError, match="'tpu' is not one of pretrain.profiles: cpu, gpu"):
        parse_section("pretrain", section("pretrain", profile="tpu"))


def test_the_profile_is_resolved_once_and_the_record_is_what_runs() -> None:
    cfg = parse_section("pretrain", section("pretrain", profile="gpu"))
    gpu = PARAMS["pretrain"]["profiles"]["gpu"]
    assert (cfg.images, cfg.batch_size, cfg.backbone.name, cfg.amp) == (12_000_000, 512, "resnet18", "bf16")
    assert cfg.backbone.pool == gpu["backbone"]["pool"]
    assert cfg.backbone.width == PARAMS["pretrain"]["backbone"]["width"]  # one-level merge keeps the other keys
    record = cfg.record()
    assert record["images"] == 12_000_000 and record["backbone"]["name"] == "resnet18" and record["profile"] == "gpu"
    assert "profiles" not in record
    others = set(METHODS) - {cfg.method}
    assert cfg.method in record and not others & set(record)  # only the knobs that ran


def test_resolve_profile_merges_mappings_one_level_deep() -> None:
    raw = {"profile": "p", "a": 1, "m": {"x": 1, "y": 2}, "profiles": {"p": {"a": 5, "m": {"y": 3}}}}
    assert resolve_profile(raw) == {"profile": "p", "a": 5, "m": {"x": 1, "y": 3}}


def test_core_dataclasses_are_filled_from_params_only() -> None:
    """Every field of the ML core's configs comes from a params.yaml key of the same name (no hidden default)."""
    from sslops.ml.augment import AugmentConfig
    from sslops.ml.methods import METHOD_CONFIGS
    from sslops.ml.models import BackboneConfig
    from sslops.ml.train import TrainConfig
    from sslops.ml.transfer import FinetuneConfig

    project = Project(REPO)
    pretrain, finetune = project.config("pretrain"), project.config("finetune")
    assert project.config("augment").to_core(AugmentConfig).crop_scale == tuple(PARAMS["augment"]["crop_scale"])
    assert pretrain.to_core(TrainConfig, epochs=1, warmup_epochs=0).base_lr == PARAMS["pretrain"]["base_lr"]
    assert pretrain.backbone.to_core(BackboneConfig, in_channels=1).stem_width == 16
    assert (
        finetune.recipe.to_core(FinetuneConfig, seed=finetune.seed).max_steps
        == PARAMS["finetune"]["recipe"]["max_steps"]
    )
    for name, cls in METHOD_CONFIGS.items():
        chosen = parse_section("pretrain", section("pretrain", method=name))
        assert method_knobs(chosen, METHOD_CONFIGS) == cls(**PARAMS["pretrain"][name])


def test_the_cli_defaults_agree_with_params() -> None:
    """The two defaults code must have (command-line options) name what params.yaml names."""
    from sslops.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["fetch-data"]).target == PARAMS["prepare"]["root"]
    assert parser.parse_args(["fetch-data"]).digits == PARAMS["tasks"]["digits"]["root"]


def test_an_unknown_section_is_refused(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "pretrian": {"images": 1}}))
    with pytest.raises(SslopsError, match="unknown section.*pretrian"):
        Project(tmp_path).config("pretrain")


def test_a_key_given_twice_is_refused_naming_it_and_its_line(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a section pasted twice would run with values nobody reads first."""
    text = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text + "\naugment:\n  views: 2\n")
    with pytest.raises(SslopsError, match=r"key 'augment' is given twice in one mapping; the second time\n.*line"):
        Project(tmp_path).check()
    (tmp_path / "params.yaml").write_text(text.replace("  views: 8", "  views: 8\n  views: 4", 1))
    with pytest.raises(SslopsError, match=r"key 'views' is given twice(.|\n)*params\.yaml\", line 53"):
        Project(tmp_path).check()
    shared = text.replace("    base: {}", "    base: &base {lr: 1.0e-3}").replace(
        "    lr3e-4: {lr: 3.0e-4}", "    lr3e-4:\n      <<: *base\n      lr: 3.0e-4"
    )
    (tmp_path / "params.yaml").write_text(shared)  # a merge key shares a mapping: no key is given twice
    assert Project(tmp_path).params["finetune"]["trials"]["lr3e-4"] == {"lr": 3.0e-4}


def test_check_names_every_bad_section_at_once(tmp_path: Path) -> None:
    """What `sslops repro` and `sslops docs` run first: a bad value in evaluate is found before prepare would run."""
    params = copy.deepcopy(PARAMS)
    params["evaluate"]["perplexity"], params["augment"]["flip_p"] = -1, "often"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SslopsError) as info:
        Project(tmp_path).check()
    said = str(info.value)
    assert "augment.flip_p in params.yaml" in said and "evaluate.perplexity in params.yaml" in said
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    Project(tmp_path).check()  # the repository's params pass
    (tmp_path / "params.yaml").unlink()
    with pytest.raises(SslopsError) as info:
        Project(tmp_path).check()
    assert str(info.value).count("is missing") == 1  # said once, not once per section


def _sslops(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "SSLOPS_ROOT": str(root), "HOME": str(root)}
    env |= {"DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sslops", *args], cwd=root, capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("evaluate", "perplexity", 0, "evaluate.perplexity in params.yaml: must be greater than 0, got 0"),
        ("pretrain", "rotation", {"hidden": -5}, "pretrain.rotation.hidden in params.yaml: must be greater than"),
    ],
)
def test_repro_checks_every_section_and_the_knobs_before_any_stage_runs(
    tmp_path: Path, section: str, key: str, value: object, message: str
) -> None:
    """A bad value in the last stage's section, or in a method's knobs, stops `sslops repro` before prepare runs:
    it used to be a warning of the estimate, and the run went on for minutes until the stage that reads it."""
    params = copy.deepcopy(PARAMS)
    params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    done = _sslops(tmp_path, "repro")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr and "running anyway" not in done.stderr
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "mlflow").exists()


def test_commands_that_only_read_say_there_is_no_store_instead_of_creating_one(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    for command in (["lineage"], ["embed", str(tmp_path), "--out", str(tmp_path / "e.npz")]):
        done = _sslops(tmp_path, *command)
        assert done.returncode == 2 and "no MLflow store yet" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "mlflow").exists()


def test_docs_and_search_name_a_missing_params_file_or_task_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    done = _sslops(tmp_path, "docs", "--check")
    assert done.returncode == 2 and "params.yaml is missing" in done.stderr and "Traceback" not in done.stderr
    params = copy.deepcopy(PARAMS)
    params["augment"]["flip_p"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = _sslops(tmp_path, "docs")  # would publish 3 as the default
    assert done.returncode == 2 and "augment.flip_p in params.yaml" in done.stderr and not (tmp_path / "docs").exists()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    done = _sslops(tmp_path, "search-recipes", "--task", "nope")
    assert done.returncode == 2 and "unknown task 'nope'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("stage", "key", "value", "message"),
    [
        ("pretrain", "images", 0, "pretrain.images in params.yaml: must be greater than 0, got 0"),  # range
        ("prepare", "classes", "T-shirt", "prepare.classes in params.yaml: must be a valid list"),  # type
        ("augment", "colour", 0.4, "augment.colour in params.yaml: unknown key"),  # unknown key
    ],
)
def test_a_stage_with_a_bad_value_exits_2_without_traceback_and_writes_nothing(
    tmp_path: Path, stage: str, key: str, value: object, message: str
) -> None:
    params = copy.deepcopy(PARAMS)
    params[stage][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "sslops", stage],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SSLOPS_ROOT": str(tmp_path), "HOME": str(tmp_path)},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mlflow/, artifacts/ or metrics/


@pytest.mark.integration
def test_a_gpu_profile_run_records_and_shows_what_ran(project) -> None:
    """The audit's case: a `pretrain.profile=gpu` run logged the CPU backbone, batch size and epochs of the raw
    section. The equivalent of `dvc exp run -S pretrain.profile=gpu -S pretrain.device=cpu` on tiny data (the
    profile made small enough for 80 images): the MLflow run and `sslops lineage` show the resolved values."""
    from conftest import mlflow_runs
    from sslops.cli import main
    from sslops.commands.lineage import format_model_chain, model_chain

    params = yaml.safe_load(project.params_file.read_text())
    params["pretrain"]["profile"] = "gpu"
    params["pretrain"]["profiles"]["gpu"] = {
        "backbone": {"name": "resnet18", "small_stem": True, "pool": 1},
        "images": 2 * 64,  # 2 epochs of the 80 images at batch 32 (2 steps of 32 each)
        "batch_size": 32,
        "amp": "off",
    }
    params["pretrain"]["device"] = "cpu"
    project.params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("prepare", "validate", "augment", "pretrain", "register"):
        assert main([stage]) == 0, stage
    run = next(r for r in mlflow_runs(project.root) if r.info.run_name == "pretrain")
    logged = run.data.params
    assert (logged["pretrain.backbone.name"], logged["pretrain.batch_size"], logged["pretrain.images"]) == (
        "resnet18",
        "32",
        "128",
    )
    assert run.data.tags["pretrain.epochs"] == "2"
    assert logged["pretrain.profile"] == "gpu" and logged["pretrain.amp"] == "off"
    assert not [k for k in logged if k.startswith(("pretrain.profiles", "pretrain.moco", "pretrain.byol"))]
    from sslops.adapters import tracking

    tracking.connect(project)
    chain = model_chain(project, "champion")
    assert chain["pretrain"]["params"]["pretrain.backbone.name"] == "resnet18"
    text = format_model_chain(chain)
    assert (
        "pretrain.backbone.name=resnet18" in text and "pretrain.images=128" in text and "pretrain.batch_size=32" in text
    )


def test_outputs_of_a_task_removed_from_params_are_found(project) -> None:
    """DVC forgets a removed task's stages but not their files: `sslops repro` names them for removal."""
    for top in ("metrics", "plots"):
        (project.root / top / "tasks" / "gone").mkdir(parents=True)
    (project.root / "metrics" / "tasks" / TASK).mkdir(parents=True)  # a task params.yaml lists
    assert project.orphaned_outputs() == [project.root / "metrics/tasks/gone", project.root / "plots/tasks/gone"]
