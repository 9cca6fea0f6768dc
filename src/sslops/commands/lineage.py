"""`sslops lineage`: walk the chain from a model version back to its data, and from data to its models.

Everything is read from MLflow (runs, tags, model versions), so it answers the same against the project's
SQLite store and a tracking server (MLFLOW_TRACKING_URI). Backward, for a model version or alias: the
data.dvc md5 and manifest digest, the validation result for that manifest, the augmentation cache hash,
the pretrain run (params, git commit, dirty flag), and the finetune/evaluate runs that used the version
with their headline metrics. Forward, for a data.dvc md5: every model version built on it.
"""

from __future__ import annotations

from typing import Any

from sslops.adapters import tracking
from sslops.config import Project
from sslops.errors import SslopsError


def parse_ref(ref: str, default_name: str) -> tuple[str, str]:
    """`name@alias`, `name/3`, `@alias`, `3` or `alias` (each optionally `models:/`...) -> (model name, alias or
    version)."""
    if ref.startswith("models:/") and "@" not in ref and "/" not in ref.removeprefix("models:/"):
        raise SslopsError(f"{ref!r} names no version or alias: use models:/<name>@<alias> or models:/<name>/<version>.")
    if "@" in ref:
        name, _, which = ref.removeprefix("models:/").partition("@")
    elif "/" in ref:
        name, _, which = ref.rpartition("/")
    else:
        name, which = "", ref
    if not which:
        example = f"{default_name}@champion" if default_name else "models:/<name>@champion"
        raise SslopsError(f"{ref!r} names no version or alias after its '@' or '/': e.g. {example}.")
    return name.removeprefix("models:/") or default_name, which


def _run_summary(run: Any, metric_prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "git_commit": run.data.tags.get("git.commit"),
        "git_dirty": run.data.tags.get("git.dirty"),
        "metrics": {k: v for k, v in sorted(run.data.metrics.items()) if k.startswith(metric_prefixes)}
        if metric_prefixes
        else {},
    }


def model_chain(project: Project, ref: str) -> dict[str, Any]:
    """The full backward chain of one model version, plus the downstream runs that used it."""
    name, which = parse_ref(ref, project.model_name)
    version = tracking.resolve_version(name, which)
    tags = version.tags
    run_id = tags.get("pretrain.run_id")
    if not run_id:
        raise SslopsError(
            f"{name} version {version.version} carries no pretrain.run_id tag: it was not registered by sslops."
        )
    try:
        pretrain = tracking.client().get_run(run_id)
    except Exception as exc:  # MlflowException: a deleted run, or a store that no longer holds it
        raise SslopsError(
            f"{name} version {version.version} names pretrain run {run_id}, which this store cannot return: {exc}"
        ) from None
    ptags = pretrain.data.tags
    digest = ptags.get("data.manifest_digest")
    validated = tracking.search_runs(
        project,
        f"attributes.status = 'FINISHED' and tags.`sslops.stage` = 'validate' and tags.`data.manifest_digest` = "
        f"'{digest}'",
    )  # a task's own validation of the same folder has the same digest, but is not the pretraining data's
    validation = next((r for r in validated if "sslops.task" not in r.data.tags), None)
    used_by = tracking.search_runs(
        project, f"tags.`model.name` = '{name}' and tags.`model.version` = '{version.version}'"
    )
    downstream = []
    for run in used_by:
        stage = run.data.tags.get("sslops.stage")
        if stage in ("finetune", "evaluate"):  # child runs of finetune carry the tags too; list the stage runs
            task = {k: run.data.tags.get(t) for k, t in (("task", "sslops.task"), ("data_md5", "data.md5"))}
            summary = _run_summary(run, ("headline.",) if stage == "evaluate" else ())
            downstream.append({"stage": stage, **task, **summary})
    return {
        "model": {
            "name": name,
            "version": int(version.version),
            "aliases": sorted(version.aliases or []),
            "register_run_id": tags.get("register.run_id"),
            "encoder_sha256": tags.get("encoder.sha256"),
            "promotion": {k.removeprefix("promotion."): v for k, v in tags.items() if k.startswith("promotion.")},
        },
        "data": {
            "path": ptags.get("data.path"),
            "md5": ptags.get("data.md5"),
            "dvc_md5": ptags.get("data.dvc_md5"),
            "manifest_digest": digest,
            "val_digest": ptags.get("monitor.val_digest"),
        },
        "validation": None
        if validation is None
        else {
            "run_id": validation.info.run_id,
            "success": validation.data.tags.get("validation.success"),
            "evaluated": validation.data.metrics.get("evaluated"),
            "failed": validation.data.metrics.get("failed"),
        },
        "augment_cache": {"md5": ptags.get("dvc.dep.artifacts/augment"), "views": ptags.get("augment.cache_views")},
        "pretrain": {**_run_summary(pretrain, ("final.",)), "params": dict(sorted(pretrain.data.params.items()))},
        "downstream": downstream,
    }


def data_chain(project: Project, md5: str) -> dict[str, Any]:
    """Every registered model version (of any sslops model) whose pretraining used data.dvc md5 `md5`, or the
    dataset folder with DVC md5 `md5` (`data/fashion-mnist`'s own hash in dvc.lock)."""
    tracking.connect(project)
    versions = []
    for model in tracking.client().search_registered_models():
        for v in tracking.search_versions(f"name = '{model.name}'"):
            if md5 in (v.tags.get("data.dvc_md5"), v.tags.get("data.md5")):  # data.dvc's, or the dataset's own
                versions.append(
                    {
                        "name": v.name,
                        "version": int(v.version),
                        "aliases": sorted(v.aliases or []),
                        "pretrain_run_id": v.tags.get("pretrain.run_id"),
                        "promotion": {
                            k.removeprefix("promotion."): t for k, t in v.tags.items() if k.startswith("promotion.")
                        },
                    }
                )
    return {"data": {"dvc_md5": md5}, "model_versions": sorted(versions, key=lambda v: (v["name"], v["version"]))}


def format_model_chain(chain: dict[str, Any]) -> str:
    m, d, v, a, p = chain["model"], chain["data"], chain["validation"], chain["augment_cache"], chain["pretrain"]
    promo = m["promotion"]
    lines = [
        f"model {m['name']} version {m['version']}"
        + (f"  (aliases: {', '.join(m['aliases'])})" if m["aliases"] else ""),
        (
            f"  promotion: {promo.get('decision', '?')} on {promo.get('metric', '?')} = {promo.get('value', '?')}: "
            f"{promo.get('reason', '')}"
        ),
        f"  registered by run {m['register_run_id']}; encoder sha256 {str(m['encoder_sha256'])[:16]}",
        f"  data: {d['path']} md5 {d['md5']} (data.dvc md5 {d['dvc_md5']}), manifest digest {d['manifest_digest']}",
        f"  promotion metric scored on the validation split with digest {d['val_digest']}",
        "  validation: "
        + (
            "no validate run found for this manifest"
            if v is None
            else f"success={v['success']} ({v['evaluated']:.0f} expectations, {v['failed']:.0f} failed), "
            f"run {v['run_id']}"
        ),
        f"  augmentation cache: md5 {a['md5']} ({a['views']} views per image)",
        f"  pretrain run {p['run_id']}: git {p['git_commit']} (dirty: {p['git_dirty']})",
        "    params: " + ", ".join(f"{k}={val}" for k, val in p["params"].items()),
        "    metrics: " + ", ".join(f"{k.removeprefix('final.')}={val:.4g}" for k, val in p["metrics"].items()),
        f"  used by {len(chain['downstream'])} run(s):",
    ]
    for run in chain["downstream"]:
        head = ", ".join(
            f"{k.removeprefix('headline.')}={val:.4f}"
            for k, val in run["metrics"].items()
            if k.endswith(("best_pretrained", "gain_vs_best_scratch"))
        )
        task = f"task {run['task']} (data md5 {run['data_md5']})"
        lines.append(
            f"    {run['stage']:<9} {task} run {run['run_id']} ({run['status']})" + (f": {head}" if head else "")
        )
    return "\n".join(lines)


def format_data_chain(chain: dict[str, Any]) -> str:
    versions = chain["model_versions"]
    lines = [f"data.dvc md5 {chain['data']['dvc_md5']}: {len(versions)} model version(s)"]
    for v in versions:
        aliases = f" (aliases: {', '.join(v['aliases'])})" if v["aliases"] else ""
        lines.append(
            f"  {v['name']} version {v['version']}{aliases}: pretrain run {v['pretrain_run_id']}, "
            f"{v['promotion'].get('metric', '?')} = {v['promotion'].get('value', '?')} "
            f"({v['promotion'].get('decision', '?')})"
        )
    return "\n".join(lines)
