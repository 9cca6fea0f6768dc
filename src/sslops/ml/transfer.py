"""Transfer to the labelled task: label subsets, linear probe, kNN and fine-tuning.

The three standard protocols of SSL evaluation, each run from the pretrained encoder and from the same
architecture at random initialisation, so the gain from pretraining is a measured difference:

- linear probe: a logistic-regression head on frozen, standardised features, its L2 penalty picked on
  a held-out part of the labelled subset (the labels are all we may use);
- kNN: the weighted kNN of `sslops.ml.knn`, the labelled subset as the memory bank;
- fine-tuning: the whole network trains with augmentation under a recipe (optimiser, learning rates, epochs,
  augmentation strength, head start) chosen per label budget and init on held-out labels. With `head: probe` it is
  LP-FT (Kumar et al., 2022, arXiv:2202.10054): the head starts from the linear probe and the backbone trains at
  a lower learning rate, so the first steps do not wreck good features through gradients from a random head;
  with `head: fresh` it is the plain supervised recipe (a new linear head, one learning rate).

And one semi-supervised protocol on top of fine-tuning, for the budgets that ask for it:

- distillation (the third step of SimCLRv2, Chen et al., 2020, arXiv:2006.10029): the fine-tuned network is the
  teacher; a student of the same architecture, from the same init, trains on all of the task's train images (the
  pool, its labels unused beyond the budget's subset) against the teacher's predicted class probabilities (the
  true label where the image is in the subset), augmented as in fine-tuning, so what the few labels taught spreads
  over the images the budget leaves unlabelled. (A task's `unlabeled/` folder is not part of the pool.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslops.errors import SslopsError
from sslops.ml.augment import AugmentConfig, BatchAugment
from sslops.ml.device import FP32, Precision
from sslops.ml.models import Encoder
from sslops.outputs.progress import progress_bar


def balanced_subset(labels: np.ndarray, fraction: float | None, per_class: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced subset of `labels`: `per_class` labels per class, or a `fraction` of all
    labels spread evenly over the classes (at least one each); exactly one of the two is given.

    Balanced, not stratified: with 1 % of Fashion-MNIST every class gets 60 labels, so a result at a small
    budget measures representation quality rather than luck in the class mix (a class with fewer members
    gives all it has). Nested across budgets for a seed (the 1 % subset lies inside the 10 % one) because
    each class's order is one fixed permutation. A fraction of 1 is the whole labelled set.
    """
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction and per_class")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return np.arange(len(labels))  # 100 % means every label, whatever the class balance
    classes = np.unique(labels)
    count = per_class if per_class is not None else max(1, round(fraction * len(labels) / len(classes)))
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        picked.append(members[rng.permutation(len(members))][:count])
    return np.sort(np.concatenate(picked))


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held, fit) positions into a labelled subset of `n`: a seeded `fraction` (at least one) held out to score a
    recipe on, never on test; the rest (at least one) to fit it with. The recipe search's split, in the stage and in
    bench/."""
    if n < 2:
        raise SslopsError(
            f"a labelled subset of {n} image(s) cannot be split to search fine-tuning recipes (finetune.search): "
            "it needs at least one label to fit on and one to score on; raise the task's budget"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_held = min(n - 1, max(1, round(fraction * n)))
    return order[:n_held], order[n_held:]


@torch.no_grad()
def _apply(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int) -> torch.Tensor:
    """`model` outputs for uint8 NHWC `images`, batch by batch in eval mode, gathered on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)  # a copy: mmaps are read-only
        out.append(model(batch.permute(0, 3, 1, 2).float()).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def features(encoder: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """Raw (not normalised) encoder features of uint8 NHWC `images`, in eval mode, on the CPU."""
    return _apply(encoder, images, device, batch_size)


class LinearProbe(nn.Module):
    """Feature standardisation (BatchNorm without affine, as in MAE's linear probe) + one linear layer.

    While probing, the norm is frozen at the labelled subset's statistics. While fine-tuning it normalises
    with batch statistics, so the head stays well-scaled as the features move: a fixed standardisation of a
    random-init encoder's near-constant features (std ~1e-3) would blow the first fine-tuning steps up.
    """

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.linear = nn.Linear(dim, n_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(feats))


def _fit_linear(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor, weight_decay: float, iterations: int) -> None:
    """Full-batch L-BFGS on cross-entropy + L2: deterministic, no learning rate to tune (as scikit-learn)."""
    probe.norm.running_mean.copy_(x.mean(0))
    probe.norm.running_var.copy_(x.var(0))
    probe.eval()
    with torch.no_grad():
        z = probe.norm(x)
    optimizer = torch.optim.LBFGS(
        probe.linear.parameters(),
        lr=1,
        max_iter=iterations,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe.linear(z), y) + weight_decay * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)


# Share of a labelled subset held out to choose the probe's L2 penalty (params.yaml finetune.probe says so): part of
# the protocol's definition, like the candidate penalties' selection rule, not a knob.
PROBE_HOLDOUT = 0.2


def fit_linear_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    weight_decays: list[float],
    seed: int,
    iterations: int,
) -> tuple[LinearProbe, float]:
    """Pick the L2 penalty on a held-out share (`PROBE_HOLDOUT`) of the labelled subset, refit on all of it.

    Returns the probe and the chosen penalty. The test split is never looked at: with a 1 % budget the
    right penalty is much larger than with 100 %, and choosing it on test would overstate both.
    """
    torch.manual_seed(seed)
    probe = LinearProbe(x.shape[1], n_classes)
    chosen = weight_decays[0]
    n_val = max(n_classes, int(PROBE_HOLDOUT * len(x)))
    if len(weight_decays) > 1 and len(x) - n_val >= 2 * n_classes:  # else too few labels to hold any out
        order = np.random.default_rng(seed).permutation(len(x))
        val, fit = torch.as_tensor(order[:n_val]), torch.as_tensor(order[n_val:])
        best = -1.0
        for wd in weight_decays:
            trial = LinearProbe(x.shape[1], n_classes)
            _fit_linear(trial, x[fit], y[fit], wd, iterations)
            with torch.no_grad():
                acc = (trial(x[val]).argmax(1) == y[val]).float().mean().item()
            if acc > best:
                best, chosen = acc, wd
    _fit_linear(probe, x, y, chosen, iterations)
    return probe, chosen


def probe_accuracy(
    train: torch.Tensor,
    train_labels: np.ndarray,
    test: torch.Tensor,
    test_labels: np.ndarray,
    weight_decay: float,
    iterations: int,
    seed: int,
) -> float:
    """Test accuracy of a linear probe with a fixed L2 penalty (the cheap end-of-pretraining monitor)."""
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    probe, _ = fit_linear_probe(
        train, torch.as_tensor(train_labels, dtype=torch.long), n_classes, [weight_decay], seed, iterations
    )
    with torch.no_grad():
        return float((probe(test).argmax(1).numpy() == test_labels).mean())


class Classifier(nn.Module):
    """Encoder + linear head on raw pixels: what full fine-tuning trains and evaluate scores."""

    def __init__(self, encoder: Encoder, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = LinearProbe(encoder.feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning recipe. The pretrained and the random-init encoder each get the recipe chosen for them."""

    optimizer: Literal["sgd", "adamw"]  # sgd: Nesterov momentum 0.9; adamw: decoupled weight decay
    head: Literal["probe", "fresh"]  # probe: start from the linear probe (LP-FT); fresh: a new linear head
    epochs: int
    max_steps: int  # caps large label budgets: full fine-tuning of 60k images is CPU-bound
    batch_size: int
    lr: float  # head LR, cosine to 0
    backbone_lr_scale: float  # pretrained backbone LR = lr * this; a random-init backbone uses lr
    weight_decay: float
    crop_scale: tuple[float, float]  # augmentation while fine-tuning: random resized crop and flip
    flip_p: float
    seed: int

    def steps(self, n_images: int) -> int:
        return max(1, min(self.epochs * math.ceil(n_images / self.batch_size), self.max_steps))


def _optimizer(groups: list[dict], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups)


def finetune(
    model: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    cfg: FinetuneConfig,
    device: torch.device,
    pretrained: bool,
    progress: bool = False,
    precision: Precision = FP32,
) -> dict[str, float]:
    """Train all of `model` on uint8 NHWC `images`; returns training loss/accuracy of the last epoch and time.

    `labels` are class indices (N,), or class probabilities (N, C) to train against (distillation: cross-entropy
    with soft targets; the training accuracy then counts agreement with the most probable class). `precision`: the
    autocast dtype and memory layout of the steps (the stage's `finetune.amp` and `finetune.channels_last`); the
    weights and the optimiser stay fp32 either way."""
    gen = torch.Generator().manual_seed(cfg.seed)
    augment = BatchAugment(AugmentConfig.crop_flip(cfg.crop_scale, cfg.flip_p))
    backbone_lr = cfg.lr * (cfg.backbone_lr_scale if pretrained else 1.0)
    groups = [
        {
            "params": [p for p in model.encoder.parameters() if p.ndim > 1],
            "lr": backbone_lr,
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for p in model.encoder.parameters() if p.ndim <= 1], "lr": backbone_lr, "weight_decay": 0.0},
        {"params": list(model.head.linear.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay},
    ]
    for group in groups:
        group["initial_lr"] = group["lr"]
    optimizer = _optimizer(groups, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.dtype == torch.float16)
    pool = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)
    soft = np.ndim(labels) == 2
    targets = torch.as_tensor(labels, dtype=torch.float32 if soft else torch.long)
    total = cfg.steps(len(pool))
    model.to(device, memory_format=precision.memory_format).train()
    started, step, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0, 0.0
    bar = progress_bar(total, "fine-tune", "step", enabled=progress, leave=False)
    while step < total:
        order = torch.randperm(len(pool), generator=gen)
        seen, correct, loss_sum = 0, 0, 0.0  # statistics of the last (possibly partial) epoch
        for start in range(0, len(order), cfg.batch_size):
            if step == total:
                break
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot normalise a batch of one: skip that remainder
                continue
            x = augment(pool[idx], gen).to(device).float().contiguous(memory_format=precision.memory_format)
            y = targets[idx].to(device)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
                logits = model(x).float()
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            bar.update()
            seen += len(idx)
            correct += int((logits.argmax(1) == (y.argmax(1) if soft else y)).sum())
            loss_sum += loss.item() * len(idx)
    bar.close()
    model.eval()
    return {
        "train_loss": loss_sum / max(1, seen),
        "train_acc": correct / max(1, seen),
        "steps": step,
        "seconds": time.perf_counter() - started,
    }


def soft_targets(
    teacher: nn.Module, images: np.ndarray, labelled: np.ndarray, labels: np.ndarray, device: torch.device
) -> np.ndarray:
    """A distillation student's targets for uint8 NHWC `images` (the task's train images): the teacher's class
    probabilities (float32, N x C), one-hot with the true label at the `labelled` positions.

    The teacher sees each image unaugmented, once; the student sees it augmented at every visit (as in Noisy
    Student, Xie et al., 2020), so it must agree with the teacher over the augmentations. The teacher's plain softmax
    (temperature 1): one knob fewer, and the paper's loss with tau = 1."""
    probs = _apply(teacher, images, device, 1024).softmax(1).numpy().astype(np.float32)
    probs[labelled] = np.eye(probs.shape[1], dtype=np.float32)[labels]
    return probs


def predict(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    """Class predictions of a `Classifier` for uint8 NHWC images."""
    return _apply(model, images, device, batch_size).argmax(1).numpy()
