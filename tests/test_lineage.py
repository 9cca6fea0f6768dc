"""`sslops lineage`: how a model reference is read, and the lineage of two datasets' chains through the real
`dvc repro` of the tiny project of tests/test_pipeline_dvc.py (also: tests/test_stage_finetune_evaluate.py)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY_EPOCH, write_idx_dataset
from sslops.commands.lineage import parse_ref
from sslops.errors import SslopsError
from sslops.ml.device import cpu_has_native_bf16
from test_pipeline_dvc import GIT, make_repo, sh


def test_model_refs():
    assert parse_ref("models:/enc@champion", "d") == ("enc", "champion")
    assert parse_ref("models:/enc/3", "d") == ("enc", "3")
    assert parse_ref("candidate", "d") == ("d", "candidate") and parse_ref("@champion", "d") == ("d", "champion")
    for bad in ("models:/enc", "models:/enc@", "enc/", ""):
        with pytest.raises(SslopsError, match="names no version or alias"):
            parse_ref(bad, "d")


def lineage(monkeypatch: pytest.MonkeyPatch, root: Path, *args: str) -> dict:
    """`sslops lineage <args> --json` in this process, through the CLI's own entry point: a process of its own would
    import MLflow and open the store again for each of the test's seven queries (seconds each); the command's
    own process is exercised once, by the text query below."""
    from sslops.cli import main

    monkeypatch.delenv("SSLOPS_ROOT", raising=False)
    monkeypatch.chdir(root)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["lineage", *args, "--json"]) == 0
    return json.loads(out.getvalue())


@pytest.mark.integration
def test_two_datasets_give_two_complete_chains_and_champion_moves_only_on_improvement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The issue's must-show: `dvc repro` on a hard and then an easy tiny dataset, in one repository."""
    root = make_repo(tmp_path / "proj", noise=160)  # dataset A: heavy noise, classes overlap
    sh("dvc", "repro", cwd=root)
    reg_a = json.loads((root / "metrics" / "register.json").read_text())
    md5_a = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]

    shutil.rmtree(root / "data")  # dataset B: the same classes with little noise, a new data version
    write_idx_dataset(root / "data" / "fashion-mnist", n_train=120, n_test=40, noise=10, seed=1)
    sh("dvc", "add", "-q", "data", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh(*GIT, "commit", "-qm", "dataset B", cwd=root)
    sh("dvc", "repro", cwd=root)
    reg_b = json.loads((root / "metrics" / "register.json").read_text())
    md5_b = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]

    assert md5_a != md5_b and (reg_a["version"], reg_b["version"]) == (1, 2)
    # Version 1 was scored on dataset A's validation split: not compared, whatever the scores, and the champion
    # stays (issue 13); the reason says how to move it by hand, which a person who wants B's encoder does.
    assert reg_a["promoted"] and not reg_b["promoted"] and reg_b["champion_version"] == 1
    assert reg_b["reason"].startswith("not compared: champion version 1 was scored on other validation data")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    client.set_registered_model_alias(reg_b["model_name"], "champion", "2")

    chains = {v: lineage(monkeypatch, root, str(v)) for v in (1, 2)}
    for v, md5, reg in ((1, md5_a, reg_a), (2, md5_b, reg_b)):
        chain = chains[v]
        assert chain["data"]["dvc_md5"] == md5
        assert chain["data"]["path"] == "data/fashion-mnist" and chain["data"]["md5"]  # the folder's own md5
        assert chain["pretrain"]["run_id"] == reg["pretrain_run_id"]
        assert chain["validation"]["success"] == "True"
        validated = client.get_run(chain["validation"]["run_id"])
        assert validated.info.run_name == "validate"  # the pretraining data's, not the task's of the same folder
        assert (
            chain["augment_cache"]["md5"]
            and chain["pretrain"]["git_commit"]
            and chain["pretrain"]["git_dirty"] == "false"
        )
        assert chain["pretrain"]["params"]["pretrain.images"] == str(TINY_EPOCH)
        assert sorted(d["stage"] for d in chain["downstream"]) == ["evaluate", "finetune"]
    assert chains[1]["data"]["manifest_digest"] != chains[2]["data"]["manifest_digest"]
    assert chains[1]["augment_cache"]["md5"] != chains[2]["augment_cache"]["md5"]
    ids = [{d["run_id"] for d in chains[v]["downstream"]} | {chains[v]["pretrain"]["run_id"]} for v in (1, 2)]
    assert not ids[0] & ids[1]  # two separate chains
    assert chains[2]["model"]["aliases"] == ["candidate", "champion"] and chains[1]["model"]["aliases"] == []

    assert [v["version"] for v in lineage(monkeypatch, root, "--data", md5_a)["model_versions"]] == [1]
    assert [v["version"] for v in lineage(monkeypatch, root, "--data", md5_b)["model_versions"]] == [2]
    text = sh(sys.executable, "-m", "sslops", "lineage", "champion", cwd=root).stdout
    assert f"data.dvc md5 {md5_b}" in text and "version 2" in text

    # Another encoder of the same data under a stricter rule: a new candidate, but the champion stays. (The same
    # weights again would reuse their version: register is idempotent, see tests/test_reliability.py.)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pretrain"]["seed"] = 1
    params["register"]["min_improvement"] = 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc", "repro", "register", cwd=root)  # pretrain and register: their params changed
    reg_c = json.loads((root / "metrics" / "register.json").read_text())
    assert reg_c["version"] == 3 and not reg_c["promoted"] and reg_c["champion_version"] == 2
    assert lineage(monkeypatch, root, "champion")["model"]["version"] == 2
    assert lineage(monkeypatch, root, "candidate")["model"]["version"] == 3

    out = sh(sys.executable, "-m", "sslops", "report", cwd=root).stdout
    assert "| protocol | init |" in out and "champion is version 2" in out
    assert f"version 2 (weights first trained by pretrain run `{reg_b['pretrain_run_id']}`)" in out  # evaluated
    assert ("bf16 autocast" in out) == cpu_has_native_bf16()
