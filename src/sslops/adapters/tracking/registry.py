"""The MLflow model registry: the pickle-free encoder model, versions and aliases, and the registered encoder's files
checked against the sha256s recorded at registration."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sslops.adapters.tracking.connection import client, shown_uri
from sslops.errors import SslopsError

if TYPE_CHECKING:
    import mlflow

CANDIDATE, CHAMPION = "candidate", "champion"  # registry aliases: the version register wrote last, the best one

FORMAT_TAG, MODEL_FORMAT = "model.format", "pt2"  # how the version's MLflow model is serialized: pickle-free

STATE_DICT = "state_dict"  # artifact folder of the register run: encoder.pt (weights) + encoder.json (how to rebuild)


def log_encoder(model: Any, input_example: Any, state_dir: Path, trained_by: str) -> mlflow.models.model.ModelInfo:
    """Log an encoder as a pickle-free MLflow model plus its plain state_dict files (`state_dict/`).

    The logged model belongs to the run that trained it (`trained_by`, the pretrain run): MLflow links it to that
    run and to the run's final metrics (`final.*`, logged at step 0), so the UI's model page shows where the weights
    came from. The state_dict files go to the active (register) run, which the version's `register.run_id` names.

    The model is exported with torch.export (MLflow's `pt2` format; dynamic batch dimension, from an example of
    two images), so users and `mlflow models serve` load it with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false and
    without sslops installed. sslops' own consumers train the encoder, which needs the real `Encoder`, so they
    rebuild it from `state_dict/encoder.json` and load `state_dict/encoder.pt` with weights_only
    (`registered_encoder` + `sslops.ml.models.load_encoder_dir`).
    Requirements are pinned explicitly (MLflow would otherwise load the model in a subprocess to infer them).
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.as_tensor(input_example)).numpy()
    signature = infer_signature(input_example, output)
    mlflow.log_artifacts(str(state_dir), STATE_DICT)
    return mlflow.pytorch.log_model(
        model,
        name="encoder",
        signature=signature,
        input_example=input_example,
        serialization_format=MODEL_FORMAT,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        run_id=trained_by,
    )


def register_version(model_uri: str, name: str, tags: dict[str, Any]) -> mlflow.entities.model_registry.ModelVersion:
    import mlflow

    return mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})


def version_by_alias(name: str, alias: str) -> mlflow.entities.model_registry.ModelVersion | None:
    """The version an alias points to, or None when the model or the alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def model_ref(ref: str | int, record: dict[str, Any], name: str) -> str:
    """The version number or alias a stage loads for `finetune.model` = `ref`. `candidate` means the version this
    project's register stage wrote to its record (`record`, metrics/register.json), by number, never the alias looked
    up again: on a shared server another register may have moved the alias since."""
    if str(ref) != CANDIDATE:
        return str(ref)
    if record.get("model_name") != name or "version" not in record:
        raise SslopsError(
            f"finetune.model 'candidate' means the version in metrics/register.json, which names no version of "
            f"{name}: run the register stage first (dvc repro register)."
        )
    return str(record["version"])


def resolve_version(name: str, ref: str) -> mlflow.entities.model_registry.ModelVersion:
    """A model version from an alias (`champion`) or a version number (`3`); a clear error otherwise."""
    from mlflow.exceptions import MlflowException

    try:
        if str(ref).isdigit():
            return client().get_model_version(name, str(ref))
        return client().get_model_version_by_alias(name, str(ref))
    except MlflowException as exc:
        store = shown_uri(os.environ.get("MLFLOW_TRACKING_URI") or "") or "the project store"
        raise SslopsError(
            f"model '{name}' has no version or alias '{ref}' in {store}: "
            "run the register stage first (dvc repro register; `dvc repro -f register` if DVC thinks it is up to date, "
            f"e.g. after pointing MLFLOW_TRACKING_URI at another store). ({exc.message})"
        ) from None


def describe_version(name: str, version: str, card: str, model_summary: str) -> None:
    """The model card as the version's description, and a one-paragraph summary as the registered model's."""
    registry = client()
    registry.update_model_version(name, version, description=card)
    registry.update_registered_model(name, description=model_summary)


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, str(version))


def set_version_tags(name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client().set_model_version_tag(name, str(version), key, str(value))


def version_with_sha(name: str, sha256: str, spec_sha256: str) -> mlflow.entities.model_registry.ModelVersion | None:
    """The version of `name` already registered with these exact weights (tag encoder.sha256), if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    # Reused only when everything about it can be checked: pt2 (not a pickle, as before that format) and a
    # recorded encoder.json digest equal to this one. Otherwise the same weights are registered anew.
    matches = [
        v
        for v in versions
        if v.tags.get("encoder.sha256") == sha256
        and v.tags.get("encoder.spec_sha256") == spec_sha256
        and v.tags.get(FORMAT_TAG) == MODEL_FORMAT
    ]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def search_versions(filter_string: str) -> list[mlflow.entities.model_registry.ModelVersion]:
    return list(client().search_model_versions(filter_string))


class EncoderDigests(NamedTuple):
    """sha256 of a registered encoder's files: the weights (always) and encoder.json (versions since it was added)."""

    weights: str
    spec: str | None


@contextlib.contextmanager
def registered_encoder(name: str, ref: str, recorded: dict[str, Any] | None = None) -> Iterator[tuple[Path, Any, Any]]:
    """(folder, model version, digests) of a registered version's plain state_dict files, for the block's duration.

    `ref` is a version number or an alias. The folder holds encoder.pt and encoder.json; rebuild the encoder with
    `sslops.ml.models.load_encoder_dir(folder, digests.weights, digests.spec)`, which checks both files against the
    sha256s register recorded on the version. When `recorded` (the project's own record, metrics/register.json:
    model_name, version, encoder_sha256, encoder_spec_sha256) names this version, the tags must match it too: a tag
    edited together with the files on a shared server is caught by the record in git. No pickle is loaded. Works for
    every version sslops registered, also those logged as pickles before: all carry `state_dict/` in their run.
    """
    import tempfile

    import mlflow

    version = resolve_version(name, ref)
    run_id = version.tags.get("register.run_id")
    digests = EncoderDigests(version.tags.get("encoder.sha256", ""), version.tags.get("encoder.spec_sha256"))
    if not run_id or not digests.weights:
        raise SslopsError(
            f"{name} version {version.version} was not registered by sslops (no register.run_id or encoder.sha256 "
            "tag): its weights cannot be checked, so it is not loaded."
        )
    recorded = recorded or {}
    if recorded.get("model_name") == name and str(recorded.get("version")) == str(version.version):
        for key, tagged in (("encoder_sha256", digests.weights), ("encoder_spec_sha256", digests.spec)):
            if recorded.get(key) and tagged and recorded[key] != tagged:
                raise SslopsError(
                    f"{name} version {version.version} carries {key} {str(tagged)[:12]}... but the project recorded "
                    f"{recorded[key][:12]}... for it (metrics/register.json): the registry and the project disagree."
                )
        # A tag deleted on the server does not switch the check off: the record in git still names the file.
        digests = EncoderDigests(digests.weights, digests.spec or recorded.get("encoder_spec_sha256"))
    with tempfile.TemporaryDirectory(prefix="sslops-encoder-") as tmp:
        folder = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=STATE_DICT, dst_path=tmp)
        yield Path(folder), version, digests
