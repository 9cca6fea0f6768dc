"""register: put the pretrained encoder into the MLflow model registry and decide on promotion.

Logs the encoder as an MLflow PyTorch model (signature + input example) and as a plain state_dict, registers
a new version of `register.model_name`, points alias `candidate` at it, and moves alias `champion` only when
the new version beats the current champion on `register.metric` by more than `register.min_improvement`
(a tie keeps the old champion). Aliases only: MLflow's registry stages are deprecated.

Besides metrics/register.json (in git), the stage's record mlflow/registered.json lives in the store's own
folder, so a fresh clone or a reset store makes DVC register again rather than skip.

The pretrain run is found by the sha256 of the encoder weights it logged, so the chain data -> pretrain run
-> model version holds even when DVC restored artifacts/pretrain from its cache.
"""

from __future__ import annotations

import json
from typing import Any

from sslops import tracking
from sslops.atomic import write_json
from sslops.config import Project
from sslops.errors import SslopsError
from sslops.provenance import file_digest

CANDIDATE, CHAMPION = "candidate", "champion"
# Lineage copied from the pretrain run onto the model version, so a version answers for itself.
LINEAGE_TAGS = ("data.dvc_md5", "data.manifest_digest", "git.commit", "git.dirty", "params.hash", "dvc.dep.artifacts/augment")


def registry_record(project: Project):
    """mlflow/registered.json: DVC output of this stage that lives and dies with the local MLflow store."""
    return project.root / "mlflow" / "registered.json"


def decide(new_value: float, champion_value: float | None, min_improvement: float) -> tuple[bool, str]:
    """(promote?, reason): strictly better than the champion by more than `min_improvement`; ties keep it."""
    if champion_value is None:
        return True, "no champion yet"
    if new_value > champion_value + min_improvement:
        return True, f"{new_value:.5f} beats champion's {champion_value:.5f} (by more than {min_improvement})"
    return False, f"{new_value:.5f} does not beat champion's {champion_value:.5f} by more than {min_improvement}"


def run(project: Project) -> dict[str, Any]:
    import numpy as np
    import torch

    from sslops.ml.models import BackboneConfig, Encoder

    params = project.section("register")
    name, metric = str(params.get("model_name", "sslops-encoder")), str(params.get("metric", "linear_acc"))
    min_improvement = float(params.get("min_improvement", 0.0))
    encoder_dir = project.root / "artifacts" / "pretrain"
    weights, spec_path = encoder_dir / "encoder.pt", encoder_dir / "encoder.json"
    if not weights.is_file() or not spec_path.is_file():
        raise SslopsError(f"{encoder_dir} has no encoder.pt/encoder.json: run the pretrain stage first (dvc repro pretrain).")
    sha = file_digest(weights)
    pretrain_run = tracking.find_run(project, f"tags.`sslops.stage` = 'pretrain' and tags.`encoder.sha256` = '{sha}'")
    if pretrain_run is None:
        raise SslopsError(f"no finished pretrain run in {tracking.tracking_uri(project)} logged encoder sha256 {sha[:12]}...: "
                          "the store does not hold the run that produced artifacts/pretrain (was mlflow/ reset?). "
                          "Rerun it with `dvc repro -f pretrain`.")
    value = pretrain_run.data.metrics.get(f"final.{metric}")
    if value is None:
        available = sorted(k.removeprefix("final.") for k in pretrain_run.data.metrics if k.startswith("final."))
        raise SslopsError(f"register.metric '{metric}' was not logged by the pretrain run; available: {', '.join(available)}.")

    spec = json.loads(spec_path.read_text())
    encoder = Encoder(BackboneConfig(**spec["backbone"]), spec["mean"], spec["std"])
    encoder.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    encoder.eval()
    height, width, channels = spec["image_shape"]
    example = np.zeros((2, channels, height, width), dtype=np.float32)  # raw pixels 0..255, NCHW

    with tracking.stage_run(project, "register", params) as run:
        lineage = {k: v for k, v in pretrain_run.data.tags.items() if k in LINEAGE_TAGS}
        tracking.set_tags({"pretrain.run_id": pretrain_run.info.run_id, "encoder.sha256": sha, **{f"pretrain.{k}": v for k, v in lineage.items()}})
        info = tracking.log_encoder(encoder, example, encoder_dir)
        champion = tracking.version_by_alias(name, CHAMPION)
        champion_value = None
        if champion is not None and champion.tags.get("promotion.metric") == metric and "promotion.value" in champion.tags:
            champion_value = float(champion.tags["promotion.value"])
        elif champion is not None:
            raise SslopsError(f"champion version {champion.version} of {name} was promoted on "
                              f"'{champion.tags.get('promotion.metric')}', not on register.metric '{metric}': the two "
                              "cannot be compared. Keep the metric, or choose the champion by hand "
                              f"(MlflowClient().set_registered_model_alias('{name}', 'champion', <version>)).")
        promote, reason = decide(float(value), champion_value, min_improvement)
        version = tracking.register_version(info.model_uri, name, {
            **lineage, "pretrain.run_id": pretrain_run.info.run_id, "register.run_id": run.info.run_id,
            "encoder.sha256": sha, "promotion.metric": metric, "promotion.value": value,
        })
        tracking.set_alias(name, CANDIDATE, version.version)
        if promote:
            tracking.set_alias(name, CHAMPION, version.version)
        champion_version = version.version if promote else champion.version
        tracking.set_version_tags(name, version.version, {"promotion.decision": "promoted" if promote else "kept", "promotion.reason": reason})
        summary = {
            "model_name": name, "version": int(version.version), "model_uri": f"models:/{name}/{version.version}",
            "run_id": run.info.run_id, "pretrain_run_id": pretrain_run.info.run_id, "metric": metric, "value": value,
            "champion_version": int(champion_version), "champion_value": value if promote else champion_value,
            "promoted": promote, "reason": reason,
        }
        tracking.set_tags({"model.name": name, "model.version": version.version, "promotion.decision": summary["promoted"]})
        write_json(project.metrics_dir / "register.json", summary)
        # A record kept beside the store it describes: a fresh clone or a deleted mlflow/ has no record,
        # so DVC reruns this stage instead of trusting metrics/register.json about a registry that is gone.
        write_json(registry_record(project), {**summary, "tracking_uri": tracking.tracking_uri(project)})
    print(f"registered {name} version {version.version} ({metric} {value:.4f}); alias {CANDIDATE} -> {version.version}; "
          f"{CHAMPION} -> {champion_version}: {reason}")
    return summary
