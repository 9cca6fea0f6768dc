"""register: put the pretrained encoder into the MLflow model registry and decide on promotion.

Logs the encoder as an MLflow PyTorch model (signature + input example) and as a plain state_dict, registers
a new version of `<register.model_name>-<dataset>` (one registered model per pretraining dataset, e.g.
`sslops-encoder-fashion-mnist`), points alias `candidate` at it, and moves alias `champion` only when the new
version beats the current champion on `register.metric` by more than `register.min_improvement` (a tie keeps the
old champion). The metric is the pretrain run's score on its validation split, so two versions are compared only
when that split is the same data (tag `monitor.val_digest`); otherwise nothing is comparable: the stage says so
and the champion stays (no score is evidence against it, and an override of the split must not be a way to take
the alias); move it by hand if the new data supersedes the old. Aliases only: MLflow's registry stages are
deprecated.

Besides metrics/register.json (in git), the stage records what it registered in `register.record_path`, a DVC
output kept where the registry's scope is: beside a local store, in its own folder (mlflow/), so a fresh clone or a
reset store makes DVC register again rather than skip; with a team's tracking server, a path in git, so a teammate's
clone of the same registry is up to date after `git pull` + `dvc pull`.

The pretrain run is found by the sha256 of the encoder weights it logged, so the chain data -> pretrain run
-> model version holds even when DVC restored artifacts/pretrain from its cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sslops.adapters import tracking
from sslops.adapters.provenance import file_digest
from sslops.config import Project
from sslops.config.schema import RegisterParams
from sslops.errors import SslopsError
from sslops.outputs.atomic import write_json

CANDIDATE, CHAMPION = tracking.CANDIDATE, tracking.CHAMPION
# Lineage copied from the pretrain run onto the model version, so a version answers for itself.
LINEAGE_TAGS = (
    "data.dvc_md5",
    "data.md5",
    "data.path",
    "data.manifest_digest",
    "git.commit",
    "git.dirty",
    "params.hash",
    "dvc.dep.artifacts/augment",
    "monitor.val_digest",
)


def registry_record(project: Project) -> Path:
    """`register.record_path`: beside a local MLflow store it lives and dies with the store."""
    return project.root / project.config("register").record_path


def decide(new_value: float, champion_value: float | None, min_improvement: float) -> tuple[bool, str]:
    """(promote?, reason): strictly better than the champion by more than `min_improvement`; ties keep it.

    The margin is rounded to 9 decimals before the comparison: in floats 0.8 - 0.7 is 0.10000000000000009, so a
    model better by exactly `min_improvement` (a tie at that margin) would otherwise be promoted."""
    if champion_value is None:
        return True, "no champion yet"
    if round(new_value - champion_value, 9) > min_improvement:
        return True, f"{new_value:.5f} beats champion's {champion_value:.5f} (by more than {min_improvement})"
    return False, f"{new_value:.5f} does not beat champion's {champion_value:.5f} by more than {min_improvement}"


def run(project: Project) -> dict[str, Any]:
    cfg: RegisterParams = project.config("register")
    name = project.model_name
    encoder_dir = project.root / "artifacts" / "pretrain"
    sha, pretrain_run, value = _pretrain_run(project, encoder_dir, cfg.metric)
    spec_sha = file_digest(encoder_dir / "encoder.json")
    with tracking.stage_run(project, "register", cfg.record()) as run:
        lineage = {k: v for k, v in pretrain_run.data.tags.items() if k in LINEAGE_TAGS}
        tags = {"pretrain.run_id": pretrain_run.info.run_id, "encoder.sha256": sha}
        tracking.set_tags({**tags, **{f"pretrain.{k}": v for k, v in lineage.items()}})
        champion, champion_value, incomparable = _champion(cfg, name, lineage.get("monitor.val_digest"))
        version = tracking.version_with_sha(name, sha, spec_sha)
        if version is None:
            info = tracking.log_encoder(*_load_encoder(encoder_dir, sha), encoder_dir, pretrain_run.info.run_id)
            version_tags = {
                **lineage,
                **tags,
                "register.run_id": run.info.run_id,
                "encoder.spec_sha256": spec_sha,
                tracking.FORMAT_TAG: tracking.MODEL_FORMAT,
            }
            promotion = {"promotion.metric": cfg.metric, "promotion.value": value}
            version = tracking.register_version(info.model_uri, name, {**version_tags, **promotion})
        else:  # a rerun (e.g. after a kill between registering and setting the aliases): same weights, same version
            print(f"{name} version {version.version} already holds these weights (sha256 {sha[:12]}...)")
        is_champion = champion is not None and champion.version == version.version
        if is_champion:
            promote, reason = False, "already champion"
        elif incomparable:  # no evidence either way: the champion stays, and the reason says how to move it
            promote, reason = False, incomparable
        else:
            promote, reason = decide(value, champion_value, cfg.min_improvement)
        tracking.set_alias(name, CANDIDATE, version.version)
        if promote:
            tracking.set_alias(name, CHAMPION, version.version)
        champion_version = version.version if promote or is_champion else champion.version
        decision = {"promotion.decision": "promoted" if promote else "kept", "promotion.reason": reason}
        tracking.set_version_tags(name, version.version, decision)
        summary = {
            "model_name": name,
            "version": int(version.version),
            "model_uri": f"models:/{name}/{version.version}",
            "encoder_sha256": sha,
            "encoder_spec_sha256": spec_sha,
            "run_id": run.info.run_id,
            "pretrain_run_id": pretrain_run.info.run_id,
            "metric": cfg.metric,
            "value": value,
            "champion_version": int(champion_version),
            "champion_value": value if promote or is_champion else champion_value,
            "promoted": promote,
            "reason": reason,
        }
        tracking.set_tags({"model.name": name, "model.version": version.version, "promotion.decision": promote})
        spec, data = json.loads((encoder_dir / "encoder.json").read_text()), project.config("prepare").root
        # The card tells the version's own lineage: the pretrain run that first produced these weights (a rerun
        # that trained them again bit for bit finds the version, whose tags name that first run).
        trained = tracking.client().get_run(version.tags.get("pretrain.run_id") or pretrain_run.info.run_id)
        card = model_card(name, version.version, spec, trained, summary, data)
        tracking.describe_version(name, version.version, card, model_summary(data))
        write_json(project.metrics_dir / "register.json", summary)
        # A record kept beside the store it describes: a fresh clone or a deleted mlflow/ has no record,
        # so DVC reruns this stage instead of trusting metrics/register.json about a registry that is gone.
        write_json(
            registry_record(project), {**summary, "tracking_uri": tracking.shown_uri(tracking.tracking_uri(project))}
        )
    print(
        f"registered {name} version {version.version} ({cfg.metric} {value:.4f}); alias {CANDIDATE} -> "
        f"{version.version}; {CHAMPION} -> {champion_version}: {reason}"
    )
    return summary


def model_summary(data_root: str) -> str:
    """The registered model's description: what it is and how its versions are chosen."""
    return (
        f"Encoders pretrained self-supervised by sslops on `{data_root}`, one version per `register` run. Alias "
        f"`{CHAMPION}`: the best on the pretraining validation split; `{CANDIDATE}`: the newest. Each version's "
        "description is its model card (data, method, backbone, metrics, lineage)."
    )


def model_card(
    name: str, version: str, spec: dict[str, Any], pretrain_run: Any, summary: dict[str, Any], data: str
) -> str:
    """A version's model card (markdown, its MLflow description): what a teammate opening it in the UI needs to
    judge and reproduce it, from the pretrain run's params, tags and final metrics, the encoder spec and the
    register summary (metrics/register.json: the promotion decision) and `data`, the pretraining dataset folder."""
    metrics = pretrain_run.data.metrics
    tags = pretrain_run.data.tags

    def tag(key: str) -> str:
        return tags.get(key, "not recorded")

    param = pretrain_run.data.params.get
    backbone = spec["backbone"]
    height, width, channels = spec["image_shape"]

    def pct(key: str) -> str:
        return f"{100 * metrics[key]:.2f} %" if key in metrics else "not logged"

    dirty = " (uncommitted changes)" if tag("git.dirty") == "true" else ""
    method = f"{spec['method']}, {tag('pretrain.epochs')} epochs over {param('pretrain.images')} images"
    run = f"batch {param('pretrain.batch_size')}, seed {param('pretrain.seed')}, {tag('pretrain.amp')} on "
    rows = {
        "Data": f"`{data}` (DVC md5 `{tag('data.md5')}`), manifest `{tag('data.manifest_digest')}`",
        "Method": f"{method}, {run}{tag('pretrain.device')}",
        "Backbone": f"{backbone['name']}, input {height}x{width}x{channels}, {spec['feature_dim']} features",
        "Validation": f"kNN {pct('final.knn_acc')}, linear probe {pct('final.linear_acc')} on "
        f"{tag('monitor.val_images')} held-out labelled train images (split `{tag('monitor.val_digest')}`)",
        "Promotion": f"on `{summary['metric']}`: {summary['reason']}",
        "Lineage": f"pretrain run `{pretrain_run.info.run_id}`, register run `{summary['run_id']}`, git "
        f"`{str(tag('git.commit'))[:12]}`{dirty}, params hash `{tag('params.hash')}`",
    }
    table = "\n".join(f"| {key} | {value} |" for key, value in rows.items())
    return (
        f"### Model card: {name} v{version}\n\n| | |\n|---|---|\n{table}\n\n"
        f"Downstream results (fine-tune, kNN, linear per task and label budget): `sslops lineage {name}/{version}`."
    )


def _pretrain_run(project: Project, encoder_dir: Path, metric: str) -> tuple[str, Any, float]:
    """(sha256 of encoder.pt, the finished pretrain run that logged it, its final `metric`), or a named error."""
    weights = encoder_dir / "encoder.pt"
    if not weights.is_file() or not (encoder_dir / "encoder.json").is_file():
        raise SslopsError(
            f"{encoder_dir} has no encoder.pt/encoder.json: run the pretrain stage first (dvc repro pretrain)."
        )
    sha = file_digest(weights)
    run = tracking.find_run(project, f"tags.`sslops.stage` = 'pretrain' and tags.`encoder.sha256` = '{sha}'")
    if run is None:
        raise SslopsError(
            f"no finished pretrain run in {tracking.shown_uri(tracking.tracking_uri(project))} logged encoder sha256 "
            f"{sha[:12]}...: the store does not hold the run that produced artifacts/pretrain "
            "(was mlflow/ reset?). Rerun it with `dvc repro -f pretrain`."
        )
    value = run.data.metrics.get(f"final.{metric}")
    if value is None:
        available = sorted(k.removeprefix("final.") for k in run.data.metrics if k.startswith("final."))
        raise SslopsError(
            f"register.metric '{metric}' was not logged by the pretrain run; available: {', '.join(available)}."
        )
    return sha, run, value


def _load_encoder(encoder_dir: Path, sha256: str) -> tuple[Any, Any]:
    """The encoder rebuilt from encoder.json with its weights (weights_only), and an input example for its signature."""
    import numpy as np

    from sslops.ml.models import load_encoder_dir

    encoder, spec = load_encoder_dir(encoder_dir, sha256)
    height, width, channels = spec["image_shape"]
    return encoder, np.zeros((2, channels, height, width), dtype=np.float32)  # raw pixels 0..255, NCHW


def _champion(cfg: RegisterParams, name: str, val_digest: str | None) -> tuple[Any, float | None, str | None]:
    """(champion, its promotion value, why it cannot be compared or None): a champion scored on other validation
    data cannot be compared with this version; one promoted on another metric is an error."""
    champion = tracking.version_by_alias(name, CHAMPION)
    if champion is None:
        return None, None, None
    if champion.tags.get("monitor.val_digest") != val_digest:
        other = champion.tags.get("monitor.val_digest", "not recorded")
        reason = (
            f"not compared: champion version {champion.version} was scored on other validation data (digest "
            f"{other}; this version: {val_digest}), so it stays champion; if this data supersedes it: "
            f"MlflowClient().set_registered_model_alias('{name}', 'champion', <version>)"
        )
        return champion, None, reason
    if champion.tags.get("promotion.metric") == cfg.metric and "promotion.value" in champion.tags:
        return champion, float(champion.tags["promotion.value"]), None
    raise SslopsError(
        f"champion version {champion.version} of {name} was promoted on "
        f"'{champion.tags.get('promotion.metric')}', not on register.metric '{cfg.metric}': the two "
        "cannot be compared. Keep the metric, or choose the champion by hand "
        f"(MlflowClient().set_registered_model_alias('{name}', 'champion', <version>))."
    )
