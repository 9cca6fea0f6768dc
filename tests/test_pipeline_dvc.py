"""Integration: the real `dvc repro` of the whole pipeline, in a temporary git + DVC repository.

Nothing is faked: a git repo, `dvc init`, `dvc add data`, `dvc repro`, a real MLflow SQLite store and a
real Great Expectations run; only the data is small and synthetic.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, TASK, mlflow_runs, small_params, synthetic_images, write_idx_dataset
from sslops.commands.estimate import FIXED_S
from sslops.data.idx import read_idx, write_idx

pytestmark = pytest.mark.integration
PRETRAIN_STAGES = ["prepare", "validate", "augment", "pretrain", "register"]
TASK_STAGES = ["task_prepare", "task_validate", "finetune", "evaluate"]


def task_stages(task: str) -> list[str]:
    return [f"{s}@{task}" for s in TASK_STAGES]


def run_names(task: str) -> list[str]:
    """MLflow run names of a task's stages: `prepare/<task>`, ... (task_prepare runs the prepare stage's code)."""
    return [f"{s.removeprefix('task_')}/{task}" for s in TASK_STAGES]


STAGES = PRETRAIN_STAGES + task_stages(TASK)
RUNS = PRETRAIN_STAGES + run_names(TASK)


def stage_runs(root: Path):
    """Stage runs only (finetune's nested child runs left out)."""
    return [r for r in mlflow_runs(root) if "sslops.stage" in r.data.tags]


def sh(*cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SSLOPS_ROOT", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


GIT = ("git", "-c", "user.name=sslops-test", "-c", "user.email=test@sslops.invalid")


def make_repo(root: Path, noise: int = 40) -> Path:
    """A copy of this project (pipeline, code, DVC config) with tiny data, committed to a fresh git repo."""
    root.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "vendor/datadocs/package-lock.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(small_params((REPO / "params.yaml").read_text()))
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    write_idx_dataset(root / "data" / "fashion-mnist", n_train=120, n_test=40, noise=noise)
    sh("dvc", "add", "-q", "data", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh(*GIT, "commit", "-qm", "tiny project", cwd=root)
    return root


def test_dvc_repro_end_to_end(tmp_path: Path):
    root = make_repo(tmp_path / "proj")
    first = sh(sys.executable, "-m", "sslops", "repro", cwd=root).stdout  # make run's command: dvc repro, timed
    estimated, timed = first.split("sslops: estimate", 1)[1], first.split("sslops: time per stage", 1)[1]
    assert all(f"  {stage} " in estimated and f"  {stage} " in timed for stage in STAGES), first

    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(STAGES)
    prepared_md5 = next(o["md5"] for o in lock["prepare"]["outs"] if o["path"] == "artifacts/prepared")
    assert json.loads((root / "metrics" / "validate.json").read_text())["success"] is True
    assert json.loads((root / "metrics" / "prepare.json").read_text())["images"] == 160
    assert json.loads((root / "metrics" / "tasks" / TASK / "validate.json").read_text())["success"] is True
    data_md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    own_md5 = next(d["md5"] for d in lock["prepare"]["deps"] if d["path"] == "data/fashion-mnist")

    runs = {r.info.run_name: r for r in stage_runs(root)}
    assert set(runs) == set(RUNS)
    commit = sh("git", "rev-parse", "HEAD", cwd=root).stdout.strip()
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["git.commit"] == commit and run.data.tags["git.dirty"] == "false"
        assert run.data.tags["data.dvc_md5"] == data_md5
        assert len(run.data.tags["params.hash"]) == 16
    # Each run names the dataset folder it read by DVC's own md5 of that folder (dvc.lock), not only data.dvc's.
    assert {runs[n].data.tags["data.md5"] for n in ("validate", "pretrain", f"finetune/{TASK}")} == {own_md5}
    assert runs[f"evaluate/{TASK}"].data.tags["sslops.task"] == TASK
    assert runs["validate"].data.tags["dvc.dep.artifacts/prepared"] == prepared_md5
    # Every stage run declares the folders it read as MLflow datasets, by DVC md5 (the UI's Datasets column);
    # prepare also its manifest, row by row.
    declared = {n: {d.dataset.name: d.dataset.digest for d in r.inputs.dataset_inputs} for n, r in runs.items()}
    assert "manifest" in declared["prepare"]
    assert declared["prepare"]["data"] == data_md5.removesuffix(".dir")
    assert declared["validate"] == {
        "artifacts/prepared": prepared_md5.removesuffix(".dir"),
        "data/fashion-mnist": own_md5.removesuffix(".dir"),
    }
    assert {"artifacts/augment", "artifacts/prepared"} <= set(declared["pretrain"])
    assert all(declared[n] for n in RUNS), declared
    assert runs["validate"].data.tags["data.manifest_digest"] == runs["prepare"].data.tags["data.manifest_digest"]

    again = sh(sys.executable, "-m", "sslops", "repro", cwd=root)
    assert "every stage is up to date (dvc status): nothing to run." in again.stdout
    assert "Data and pipelines are up to date" in again.stdout
    assert len(stage_runs(root)) == len(STAGES)  # nothing ran, nothing logged

    # Only a pretrain param changed: DVC reuses the augmentation cache and reruns pretrain and what follows.
    sh("dvc", "exp", "run", "-S", "pretrain.seed=1", cwd=root)
    runs_after = [r.info.run_name for r in stage_runs(root)]
    assert sorted(runs_after) == sorted(RUNS + ["pretrain", "register", f"finetune/{TASK}", f"evaluate/{TASK}"])

    # A second downstream task, its own data folder of another size (8x8, prepared to the encoder's 12x12): only
    # its own four stages run; pretraining and the first task are untouched.
    write_idx_dataset(root / "data" / "small", n_train=40, n_test=20, size=8, seed=3)
    sh("dvc", "add", "-q", "data", cwd=root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tasks"]["small"] = {**params["tasks"][TASK], "root": "data/small", "budgets": ["2/class", 1.0]}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = len(stage_runs(root))
    added = sh(sys.executable, "-m", "sslops", "repro", cwd=root).stdout
    runs_now = stage_runs(root)  # newest first
    new = {r.info.run_name: r for r in runs_now[: len(runs_now) - before]}
    assert sorted(new) == sorted(run_names("small")), added
    # the estimate named exactly the stages that ran; each run records it (where sizes were known) and its wall time
    planned = added.split("sslops: estimate", 1)[1].split("\n  total", 1)[0]
    assert [line.split()[0] for line in planned.splitlines()[1:]] == task_stages("small"), added
    assert new["prepare/small"].data.metrics["estimate.seconds"] == FIXED_S["task_prepare"]
    assert all(r.data.metrics["wall.seconds"] > 0 for r in new.values())
    small = json.loads((root / "metrics" / "tasks" / "small" / "prepare.json").read_text())
    assert small["shape"] == [12, 12, 1] and small["resized"] == 60
    assert "gain_vs_pixels" in (root / "metrics" / "tasks" / "small" / "evaluate.json").read_text()
    report = sh(sys.executable, "-m", "sslops", "report", cwd=root).stdout
    assert f"**Task `{TASK}`**" in report and "**Task `small`**" in report and "2/class (8 labels, 3 draws)" in report

    # Leak test images into train: validate fails, names the expectation, and the pipeline stops.
    d = root / "data" / "fashion-mnist"
    test = read_idx(d / "t10k-images-idx3-ubyte").copy()
    test[:2] = read_idx(d / "train-images-idx3-ubyte")[:2]
    write_idx(d / "t10k-images-idx3-ubyte", test)
    sh("dvc", "add", "data", cwd=root)
    failed = sh("dvc", "repro", cwd=root, check=False)
    assert failed.returncode != 0
    assert "expect_column_values_to_be_in_set(test_in_train) unexpected=2" in failed.stderr
    assert "Traceback" not in failed.stderr
    status = sh("dvc", "status", "validate", cwd=root).stdout
    assert "changed deps" in status  # validate's lock entry still describes the last good data

    # A fresh MLflow store (a fresh clone, a deleted mlflow/): DVC must register again, not trust the old record.
    shutil.rmtree(root / "mlflow")
    status = sh("dvc", "status", "register", cwd=root).stdout
    assert "mlflow/registered.json" in status and "deleted" in status


def write_photos(root: Path, per_class: int = 16, n_test: int = 6, unlabeled: int = 20) -> None:
    """A folder of "photos" as a user brings them: RGB and grayscale, JPEG and PNG, 40 to 90 px on a side, landscape
    and portrait, plus a flat unlabeled/ folder; the class is a colour pattern that survives resizing."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base, _ = synthetic_images(4, 8, channels=3, noise=0)  # one 8x8 colour pattern per class
    for split, count in (("train", per_class), ("test", n_test), ("unlabeled", unlabeled)):
        for k in range(count * (4 if split != "unlabeled" else 1)):
            label = k % 4
            height, width = (int(v) for v in rng.integers(40, 91, size=2))
            pattern = Image.fromarray(base[label]).resize((width, height), Image.Resampling.NEAREST)
            noisy = np.clip(np.asarray(pattern, np.int16) + rng.integers(-30, 31, (height, width, 3)), 0, 255)
            img = Image.fromarray(noisy.astype(np.uint8))
            folder = root / split if split == "unlabeled" else root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            if k % 5 == 0:
                img.convert("L").save(folder / f"{k}.png")  # a few grayscale scans among the colour photos
            elif k % 2:
                img.save(folder / f"{k}.jpg", quality=90)
            else:
                img.save(folder / f"{k}.png")


TUTORIAL = REPO / "docs" / "tutorial-own-images.md"


def tutorial_commands() -> list[str]:
    """The command lines of the tutorial's ```bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", TUTORIAL.read_text(), re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def quoted_output(command: str) -> list[str]:
    """The output the tutorial quotes for `command`: the first plain ``` block after the command's block (past the
    block's closing fence and the quote's opening one)."""
    after = TUTORIAL.read_text().split(command, 1)[1]
    return after.split("```\n", 2)[2].split("```", 1)[0].splitlines()


def test_the_own_images_tutorial_runs_as_written(tmp_path: Path):
    """docs/tutorial-own-images.md, command by command, on a folder of mixed sizes and modes, JPEG and PNG, with an
    unlabeled folder: `sslops init` surveys it as quoted, writes params and `dvc add`s it, and the real `dvc repro`
    runs every stage on it (at 55 px the `auto` backbone is a ResNet-18 with the standard stem)."""
    root = make_repo(tmp_path / "proj")
    shutil.rmtree(root / "data" / "fashion-mnist")
    write_photos(root / "data" / "my-photos")
    params = yaml.safe_load((root / "params.yaml").read_text())  # the test's budget: seconds, not minutes
    params["pretrain"].update(backbone={**params["pretrain"]["backbone"], "name": "auto"}, images=64, batch_size=32)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@sslops.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@sslops.invalid",
    }
    env.pop("SSLOPS_ROOT", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    commands = tutorial_commands()
    assert commands[0] == "sslops init data/my-photos --dry-run" and commands[-1] == "make run", commands
    for command in commands:
        before = (root / "params.yaml").read_text()
        line = "sslops repro && sslops report" if command == "make run" else command  # make run, less its setup
        out = subprocess.run(["bash", "-c", line], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{command}:\n{out.stdout}\n{out.stderr}"
        if command.endswith("--dry-run"):
            assert (root / "params.yaml").read_text() == before  # nothing written
            printed, quoted = (
                [x for x in lines if not x.startswith("  pretraining")]  # the minutes: this machine's
                for lines in (out.stdout.splitlines(), quoted_output(command))
            )
            assert len(printed) == len(quoted), out.stdout
            for want, got in zip(quoted, printed, strict=True):  # "(...)" in the quote stands for any text
                assert re.fullmatch(re.escape(want).replace(r"\(\.\.\.\)", ".*"), got), (want, got)
    written = yaml.safe_load((root / "params.yaml").read_text())
    assert written["prepare"]["root"] == "data/my-photos" and written["prepare"]["resize"]["side"] == 55
    assert list(written["tasks"]) == ["my-photos"] and written["tasks"]["my-photos"]["budgets"] == ["8/class", 1.0]

    prepared = json.loads((root / "metrics" / "prepare.json").read_text())
    assert prepared["shape"] == [55, 55, 3] and prepared["images_unlabeled"] == 20
    manifest = pd.read_parquet(root / "artifacts" / "prepared" / "manifest.parquet")
    assert manifest["source_height"].between(40, 90).all() and (manifest["height"] == 55).all()
    assert prepared["resized"] == int(((manifest["source_height"] != 55) | (manifest["source_width"] != 55)).sum())
    spec = json.loads((root / "artifacts" / "pretrain" / "encoder.json").read_text())
    assert spec["backbone"]["name"] == "resnet18" and spec["backbone"]["small_stem"] is False
    results = json.loads((root / "artifacts" / "tasks" / "my-photos" / "evaluate" / "results.json").read_text())
    assert {r["init"] for r in results["results"]} == {"pretrained", "scratch", "pixels"}
    assert sh("dvc", "status", cwd=root).stdout.strip() == "Data and pipelines are up to date."
