"""finetune: label-efficient transfer of the registered encoder to one downstream task (`--task NAME`).

The encoder comes from the MLflow registry (`finetune.model`: `candidate`, the version this project's register stage
wrote to metrics/register.json; or an alias or version number), never from a file path, so every result below names
the model version it used; its files are checked against the sha256s recorded at registration. The task's images
were prepared to the encoder's input (task_prepare). For each of the task's label budgets (`tasks.NAME.budgets`:
fractions or labels per class; class-balanced subsets of train, nested) and each initialisation (pretrained;
scratch = the same architecture at random init; pixels = the prepared pixels themselves) it fits the protocols of
`sslops.ml.transfer`: linear probe, kNN and fine-tuning (not for pixels), and at the budgets of `finetune.distill`
distillation of the fine-tuned network into a student over all the task's train images. A budget below 100 % is drawn
`finetune.draws` times (seeds seed, seed + 1, ...), so every result has a spread. Fine-tuning uses, per task, budget
and init, the recipe trial that bench/finetune_search.py chose on held-out labels (`finetune.chosen`); the same
search declares which protocol stands for each init in the headline (`finetune.headline`, fine-tuning unless the
linear probe did better on the held-out labels), and every entry says whether it is that one. A task with no
committed choices (a user's own) is not left to an unsearched recipe, which can leave one side far from its best
and the gain meaningless: its stage first searches the trials of `finetune.search.auto` on held-out labels of each
subset, alike for both inits, and chooses by the same rule (`results.choose_recipe`); the choices and their scores go
to index.json, metrics/tasks/NAME/finetune.json (`search`) and the parent run's tags. One parent
MLflow run per task, one child run per (budget, draw, init, protocol). The trained heads and networks go to
artifacts/tasks/NAME/finetune for `evaluate`.

The same search for any task and trials, without training anything evaluate scores: `sslops search-recipes`
(bench/finetune_search.py commits its choices).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sslops.adapters import tracking
from sslops.config import Project
from sslops.config.schema import Budget, FinetuneParams, Recipe, TasksParams
from sslops.data.store import ImageStore
from sslops.errors import SslopsError
from sslops.outputs.atomic import atomic_dir, write_json

if TYPE_CHECKING:
    import torch

    from sslops.ml.device import Precision
    from sslops.ml.models import Encoder
    from sslops.ml.transfer import Classifier, LinearProbe


def run(project: Project, task: str | None = None) -> dict[str, Any]:
    import torch

    from sslops.ml.device import Precision, machine, pick_device

    if task is None:
        raise SslopsError("finetune runs per downstream task: sslops finetune --task NAME (dvc.yaml: finetune@NAME).")
    cfg: FinetuneParams = project.config("finetune")
    budgets = project.config("tasks")[task].budgets
    _check_distill(cfg, project.config("tasks"))
    _warn_undeclarable(cfg, task, budgets)
    name, out = project.model_name, project.outputs(task)
    device = pick_device(cfg.device)
    precision = Precision.resolve(cfg.amp, cfg.channels_last, device)
    store = ImageStore.open(out.prepared)
    train = store.labelled("train")
    with tracking.stage_run(project, "finetune", {**cfg.record(), "budgets": budgets}, task=task) as parent:
        encoders, version, digests, model_tags = load_encoders(project, cfg, task, store)
        tracking.set_tags({**model_tags, "finetune.amp": precision.amp})
        print(
            f"fine-tuning {name} version {version.version} (ref '{cfg.model}') on task {task}, {device}, "
            f"precision {precision.amp}"
        )
        started = time.perf_counter()
        with atomic_dir(out.finetune) as tmp:
            torch.save(encoders["scratch"].state_dict(), tmp / "scratch-encoder.pt")
            fit = Fit(tmp, cfg, task, store, budgets, model_tags, device, precision)
            if fit.auto:
                models = len(fit.auto) * len(fit.subsets) * 2
                print(
                    f"task {task} has no recipe choices in finetune.chosen: searching {', '.join(fit.auto)} on "
                    f"{cfg.search.holdout:.0%} held-out labels of each subset, alike for both inits ({models} "
                    "extra fine-tunes, the test split unread)"
                )
            entries = [
                entry for init, encoder in encoders.items() for entry in fit.init(train, init, encoder.to(device))
            ]
            model = {"name": name, "version": int(version.version), "run_id": version.run_id}
            model |= {"pretrain_run_id": model_tags["pretrain.run_id"], "encoder_sha256": digests.weights}
            model |= {"encoder_spec_sha256": digests.spec}
            index = {"model": model, "task": task, "parent_run_id": parent.info.run_id, "seed": cfg.seed}
            index |= {"n_classes": int(train[1].max()) + 1, "entries": entries}
            index |= {"task_search": fit.searched} if fit.auto else {}
            (tmp / "index.json").write_text(json.dumps(index, indent=2))
        metrics: dict[str, Any] = {"models": len(entries)}
        if fit.auto:
            metrics["search"] = fit.summary()
            tracking.set_tags(
                {
                    f"search.{tag}.{init}": f"{c['trial']}, headline {c['headline']}"
                    for tag, inits in metrics["search"].items()
                    for init, c in inits.items()
                }
            )
        metrics |= {"seconds": round(time.perf_counter() - started, 1), "machine": machine(device)}
        write_json(out.metrics / "finetune.json", {**metrics, "amp": precision.amp})
        tracking.log_metrics({k: v for k, v in metrics.items() if k not in ("machine", "search")})
        tracking.set_tags({"finetune.machine": metrics["machine"]})
        tracking.log_artifacts(out.finetune / "index.json")
    return {"model": f"{name}/{version.version}", "task": task, "models_trained": len(entries), "budgets": budgets}


def load_encoders(
    project: Project, cfg: FinetuneParams, task: str, store: ImageStore
) -> tuple[dict[str, torch.nn.Module], Any, Any, dict[str, Any]]:
    """The encoders a task's protocols start from, inside the caller's MLflow run: the registered version
    (`finetune.model`, its files checked against the recorded sha256s), the same architecture at a seeded random
    init (scratch), and the raw pixels; then the version, its digests and the tags that name it on every run."""
    import torch

    from sslops.ml.models import Pixels, input_shape, load_encoder_dir

    name, record = project.model_name, project.register_record()
    ref = tracking.model_ref(cfg.model, record, name)
    with tracking.registered_encoder(name, ref, record) as (folder, version, digests):
        pretrained, spec = load_encoder_dir(folder, *digests)
    _check_input(spec, store, task)
    tags = {"model.name": name, "model.version": version.version, "model.ref": cfg.model}
    tags |= {"pretrain.run_id": version.tags.get("pretrain.run_id", "unknown"), "task": task}
    torch.manual_seed(cfg.seed)  # the scratch encoder: same architecture and normalisation, seeded init
    encoders = {"pretrained": pretrained, "scratch": pretrained.untrained_copy(), "pixels": Pixels(*input_shape(spec))}
    return encoders, version, digests, tags


def _check_distill(cfg: FinetuneParams, tasks: TasksParams) -> None:
    """Every budget of finetune.distill must be some task's: a misspelt one would silently distill nothing."""
    from sslops.ml.results import budget_key

    known = {budget_key(b) for name in tasks.names() for b in tasks[name].budgets}
    unknown = [b for b in cfg.distill.budgets if b not in known]
    if unknown:
        raise SslopsError(
            f"finetune.distill.budgets names {', '.join(unknown)}, which no task has (their budgets: "
            f"{', '.join(sorted(known))})."
        )


def _warn_undeclarable(cfg: FinetuneParams, task: str, budgets: list[Budget]) -> None:
    """A recipe or headline protocol declared for a budget this task does not have applies to nothing: a misspelt
    key (`frac_0.001` for `frac_0.01`) would leave its budget on `base` and fine-tuning without a word. A warning, not
    an error: narrowing a task's budgets for one experiment (`-S`) legitimately leaves declarations unused."""
    from sslops.ml.results import budget_key

    have = [budget_key(b) for b in budgets]
    for section, declared in (("chosen", cfg.chosen), ("headline", cfg.headline)):
        unused = sorted(set(declared.get(task, {})) - set(have))
        if unused:
            print(
                f"finetune: warning: finetune.{section}.{task} names {', '.join(unused)}, which task {task} does not "
                f"have (its budgets: {', '.join(have)}): ignored; a budget declared nothing for uses "
                + ("the base recipe." if section == "chosen" else "fine-tuning."),
                file=sys.stderr,
            )


def _check_input(spec: dict[str, Any], store: ImageStore, task: str) -> None:
    """The task's images must be what the encoder takes: task_prepare fits them to the pretraining input."""
    from sslops.ml.models import input_shape

    if tuple(store.images.shape[1:]) != input_shape(spec):
        raise SslopsError(
            f"task {task}'s images are {'x'.join(map(str, store.images.shape[1:]))} but the encoder takes "
            f"{'x'.join(map(str, input_shape(spec)))}: prepare the task again (dvc repro task_prepare@{task})."
        )


def _recipe_tags(trial: str, recipe: Recipe) -> dict[str, Any]:
    """A fine-tuning child run's recipe: its trial's name and every value (logged as params, compared in the UI)."""
    return {"trial": trial, **{f"recipe_{k}": v for k, v in recipe.record().items()}}


class Fit:
    """The protocols of one task for every init, budget and draw, each in its own child run; their index entries."""

    def __init__(
        self,
        folder: Path,
        cfg: FinetuneParams,
        task: str,
        store: ImageStore,
        budgets: list[Budget],
        model_tags: dict[str, Any],
        device: torch.device,
        precision: Precision,
    ):
        from sslops.ml.results import parse_budget

        self.folder, self.cfg, self.task, self.store, self.device = folder, cfg, task, store, device
        self.precision = precision
        self.budgets, self.tags = budgets, model_tags
        self.subsets = [  # (budget, draw): 100 % is one subset
            (budget, draw) for budget in budgets for draw in range(1 if parse_budget(budget)[0] == 1 else cfg.draws)
        ]
        self.auto = cfg.searched_in_stage(task)
        self.choices: dict[tuple[str, str], tuple[str, str]] = {}  # (budget key, init) -> (trial, headline protocol)
        self.searched: list[dict[str, Any]] = []  # the held-out scores behind the choices

    def init(self, train: tuple[np.ndarray, np.ndarray], init: str, encoder: Encoder) -> list[dict[str, Any]]:
        """Every budget and draw from one initialisation: the train features once, then `budget` per subset."""
        from sslops.ml.transfer import features

        started = time.perf_counter()
        feats = features(encoder, self.store.take(train[0]), self.device)
        print(f"{init}: features of {len(train[0])} train images in {time.perf_counter() - started:.1f}s")
        if self.auto and init != "pixels":
            self.choose((*train, feats), init, encoder)
        return [
            entry
            for budget, draw in self.subsets
            for entry in self.budget((*train, feats), init, encoder, budget, draw)
        ]

    def _subset(
        self, train_labels: np.ndarray, init: str, budget: Budget, draw: int
    ) -> tuple[dict[str, Any], str, np.ndarray]:
        """(the child runs' params, their name, the subset's positions in train) of draw `draw` of `budget`."""
        from sslops.ml.results import budget_key, budget_name, parse_budget
        from sslops.ml.transfer import balanced_subset

        subset = balanced_subset(train_labels, *parse_budget(budget), self.cfg.seed + draw)
        tag = budget_key(budget)
        base = {"budget": tag, "budget_name": budget_name(budget), "labels": len(subset), "init": init, "draw": draw}
        return base | self.tags, f"{self.task}/{tag}/d{draw}/{init}", subset

    def choose(self, train: tuple[np.ndarray, np.ndarray, torch.Tensor], init: str, encoder: Encoder) -> None:
        """The task's own recipe search for one init: every trial of `finetune.search.auto` on each subset's held-out
        labels, then per budget the trial and the headline protocol by `results.choose_recipe`, as
        bench/finetune_search.py chooses the committed ones."""
        from sslops.ml.results import choose_recipe

        found: dict[str, list[dict[str, Any]]] = {}
        for entry in self.search_subsets(train, init, encoder, self.auto):
            found.setdefault(entry["budget"], []).append(entry)
        for tag, entries in found.items():
            finetuned = {t: [e["holdout_acc"] for e in entries if e.get("trial") == t] for t in self.auto}
            trial, protocol = choose_recipe(finetuned, [e["holdout_acc"] for e in entries if e["protocol"] == "linear"])
            self.choices[(tag, init)] = (trial, protocol)
            self.searched += entries
            print(f"  {init} {tag}: chose '{trial}' on held-out labels; headline {protocol}")

    def search_subsets(
        self, train: tuple[np.ndarray, np.ndarray, torch.Tensor], init: str, encoder: Encoder, trials: list[str]
    ) -> list[dict[str, Any]]:
        """`search` at every budget and draw of the task for one init: the held-out scores of each trial and the
        linear probe (a task's own search here, any trials through `sslops search-recipes`)."""
        rows, labels, feats = train
        entries = []
        for budget, draw in self.subsets:
            base, name, subset = self._subset(labels, init, budget, draw)
            recipes = [(trial, self.cfg.trials[trial]) for trial in trials]
            entries += self.search(base, name, encoder, (rows[subset], labels[subset], feats[subset]), recipes)
        return entries

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """budget key -> init -> the chosen trial, the headline protocol and the mean held-out accuracy of each."""
        from sslops.ml.results import mean

        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (tag, init), (trial, protocol) in self.choices.items():
            scored = [e for e in self.searched if e["budget"] == tag and e["init"] == init]
            held = {e.get("trial", "linear"): [] for e in scored}
            for e in scored:
                held[e.get("trial", "linear")].append(e["holdout_acc"])
            means = {name: round(mean(accs), 5) for name, accs in held.items()}
            out.setdefault(tag, {})[init] = {"trial": trial, "headline": protocol, "holdout_acc": means}
        return out

    def _choice(self, tag: str, init: str) -> tuple[str, Recipe, str]:
        """(trial, recipe, headline protocol) at one budget key and init: the task's own search's where it ran, else
        the committed `finetune.chosen` and `finetune.headline`."""
        if (tag, init) in self.choices:
            trial, protocol = self.choices[(tag, init)]
            return trial, self.cfg.trials[trial], protocol
        return (*self.cfg.recipe_for(self.task, tag, init), self.cfg.headline_for(self.task, tag, init))

    def budget(
        self, train: tuple[np.ndarray, np.ndarray, torch.Tensor], init: str, encoder: Encoder, budget: Budget, draw: int
    ) -> list[dict[str, Any]]:
        """The protocols at one label subset (draw `draw` of `budget`) for one init."""
        import torch

        from sslops.ml.transfer import fit_linear_probe

        cfg, (train_rows, train_labels, train_feats) = self.cfg, train
        n_classes = int(train_labels.max()) + 1
        seed = cfg.seed + draw
        base, name, subset = self._subset(train_labels, init, budget, draw)
        tag = base["budget"]
        x, y = train_feats[subset], torch.as_tensor(train_labels[subset])
        entries, files = [], f"{init}-{tag}-d{draw}"
        trial, recipe, headline = self._choice(tag, init)

        def record(protocol: str, file: str, **extra: Any) -> None:
            entry = {**base, "protocol": protocol, "file": file, "headline": protocol == headline}
            entries.append({**entry, "run_id": tracking.active_run_id(), **extra})

        with tracking.child_run(f"{name}/linear", {**base, "protocol": "linear"}):
            started = time.perf_counter()
            probe, wd = fit_linear_probe(x, y, n_classes, cfg.probe.weight_decays, seed, cfg.probe.iterations)
            torch.save(probe.state_dict(), self.folder / f"linear-{files}.pt")
            tracking.log_metrics({"weight_decay": wd, "seconds": time.perf_counter() - started})
            record("linear", f"linear-{files}.pt")
        with tracking.child_run(f"{name}/knn", {**base, "protocol": "knn"}):
            np.save(self.folder / f"knn-{files}.npy", train_rows[subset])  # a kNN classifier is its memory bank
            record("knn", f"knn-{files}.npy")
        if init == "pixels":  # nothing to fine-tune: the baseline is what a classifier gets from the pixels alone
            print(f"  {init} {tag} draw {draw}: probe wd {wd:g}")
            return entries
        with tracking.child_run(f"{name}/finetune", {**base, "protocol": "finetune", **_recipe_tags(trial, recipe)}):
            labelled = (train_rows[subset], train_labels[subset])
            model, stats = self.finetune(encoder, init, recipe, seed, labelled, n_classes, probe)
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, self.folder / f"finetune-{files}.pt")
            tracking.log_metrics(stats)
            record("finetune", f"finetune-{files}.pt", trial=trial)
        print(
            f"  {init} {tag} draw {draw}: probe wd {wd:g}, fine-tune '{trial}' {stats['steps']} steps in "
            f"{stats['seconds']:.1f}s (train acc {stats['train_acc']:.3f})"
        )
        if tag in cfg.distill.budgets:
            with tracking.child_run(
                f"{name}/distill", {**base, "protocol": "distill", **_recipe_tags("distill", cfg.distill.recipe)}
            ):
                student, stats = self.distill(model, encoder, init, seed, train_rows, subset, train_labels[subset])
                torch.save({k: v.cpu() for k, v in student.state_dict().items()}, self.folder / f"distill-{files}.pt")
                tracking.log_metrics(stats)
                record("distill", f"distill-{files}.pt")
            print(f"  {init} {tag} draw {draw}: distilled over {len(train_rows)} images in {stats['seconds']:.1f}s")
        return entries

    def distill(
        self,
        teacher: Classifier,
        encoder: Encoder,
        init: str,
        seed: int,
        pool: np.ndarray,
        labelled: np.ndarray,
        labels: np.ndarray,
    ) -> tuple[Classifier, dict[str, float]]:
        """A student from `encoder` (the teacher's own start) trained on every `pool` row against the teacher's
        class probabilities, the true `labels` at the `labelled` positions of the pool."""
        from sslops.ml.transfer import soft_targets

        started = time.perf_counter()
        targets = soft_targets(teacher, self.store.take(pool), labelled, labels, self.device)
        n_classes = targets.shape[1]
        student, stats = self.finetune(encoder, init, self.cfg.distill.recipe, seed, (pool, targets), n_classes, None)
        return student, {**stats, "seconds": time.perf_counter() - started}

    def search(
        self,
        base: dict[str, Any],
        name: str,
        encoder: Encoder,
        subset: tuple[np.ndarray, np.ndarray, torch.Tensor],
        trials: list[tuple[str, Recipe]],
    ) -> list[dict[str, Any]]:
        """Fine-tune each trial on part of the subset and fit the linear probe on the same part; their accuracies on
        the held-out rest are the entries (the probe's is what fine-tuning must beat to be the headline protocol; it
        does not depend on the trial, so it is fitted once)."""
        import torch

        from sslops.ml.transfer import fit_linear_probe, holdout_split, predict

        cfg, (rows, labels, feats) = self.cfg, subset
        n_classes, seed = int(labels.max()) + 1, cfg.seed + base["draw"]
        held, fit = holdout_split(len(rows), cfg.search.holdout, seed)
        scored = {**base, "held_out": len(held)}
        with tracking.child_run(f"{name}/search-linear", {**base, "protocol": "linear"}):
            y = torch.as_tensor(labels[fit])  # the L2 penalty is picked on part of `fit`, as in the linear protocol
            probe, wd = fit_linear_probe(feats[fit], y, n_classes, cfg.probe.weight_decays, seed, cfg.probe.iterations)
            with torch.no_grad():
                linear_acc = float((probe(feats[held]).argmax(1).numpy() == labels[held]).mean())
            tracking.log_metrics({"weight_decay": wd, "holdout_acc": linear_acc})
        entries = [{**scored, "protocol": "linear", "holdout_acc": linear_acc}]
        for trial, recipe in trials:
            with tracking.child_run(
                f"{name}/search-{trial}", {**base, "protocol": "finetune", **_recipe_tags(trial, recipe)}
            ):
                lp = probe if recipe.head == "probe" else None  # an LP-FT trial starts from that probe
                fitted = (rows[fit], labels[fit])
                model, stats = self.finetune(encoder, base["init"], recipe, seed, fitted, n_classes, lp)
                acc = float((predict(model, self.store.take(rows[held]), self.device) == labels[held]).mean())
                tracking.log_metrics({**stats, "holdout_acc": acc})
            entries.append({**scored, "protocol": "finetune", "trial": trial, "holdout_acc": acc})
            entries[-1]["seconds"] = round(stats["seconds"], 3)
            print(
                f"  {name} trial '{trial}': held-out acc {acc:.4f}, linear probe {linear_acc:.4f} ({len(held)} "
                f"labels, {stats['seconds']:.1f}s)"
            )
        return entries

    def finetune(
        self,
        encoder: Encoder,
        init: str,
        recipe: Recipe,
        seed: int,
        labelled: tuple[np.ndarray, np.ndarray],
        n_classes: int,
        probe: LinearProbe | None,
    ) -> tuple[Classifier, dict[str, float]]:
        """A copy of `encoder` with a linear head (the probe's for an LP-FT recipe, else a new one) fine-tuned on the
        labelled (rows, labels): class indices, or class probabilities to distill."""
        import torch

        from sslops.ml.transfer import Classifier, FinetuneConfig, finetune

        rows, labels = labelled
        torch.manual_seed(seed)  # a fresh head's init
        model = Classifier(copy.deepcopy(encoder), n_classes)
        if recipe.head == "probe" and probe is not None:
            model.head.load_state_dict(probe.state_dict())  # LP-FT: start from the probe
        stats = finetune(
            model.to(self.device),
            self.store.take(rows),
            labels,
            recipe.to_core(FinetuneConfig, seed=seed),
            self.device,
            pretrained=init == "pretrained",
            progress=True,
            precision=self.precision,
        )
        return model, stats
