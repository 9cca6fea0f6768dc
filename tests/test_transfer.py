"""Unit tests of the transfer protocols and metrics (pure torch/numpy, no MLOps tools)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import backbone_config, finetune_config, synthetic_images
from sslops.errors import SslopsError
from sslops.ml.device import Precision
from sslops.ml.metrics import confusion_matrix, scores
from sslops.ml.models import Encoder, pixel_statistics
from sslops.ml.transfer import (
    Classifier,
    balanced_subset,
    features,
    finetune,
    fit_linear_probe,
    holdout_split,
    predict,
    soft_targets,
)


def test_holdout_split_is_seeded_disjoint_and_never_empty():
    held, fit = holdout_split(10, 0.2, seed=3)
    assert len(held) == 2 and sorted([*held, *fit]) == list(range(10))
    assert np.array_equal(held, holdout_split(10, 0.2, seed=3)[0])
    assert not np.array_equal(np.sort(held), np.sort(holdout_split(10, 0.2, seed=4)[0]))
    assert len(holdout_split(3, 0.01, seed=0)[0]) == 1  # at least one held-out label, however small the subset
    held, fit = holdout_split(2, 0.8, seed=0)  # 0.8 of 2 rounds to 2: one must stay to fit on
    assert (len(held), len(fit)) == (1, 1)
    with pytest.raises(SslopsError, match="at least one label to fit on"):
        holdout_split(1, 0.2, seed=0)


def test_pixel_statistics_per_channel_from_the_rows_given():
    images = np.zeros((4, 2, 2, 2), dtype=np.uint8)
    images[:2, ..., 0] = 255  # channel 0: white in rows 0-1, black in 2-3; channel 1 black everywhere
    mean, std = pixel_statistics(images, np.arange(4))
    assert mean == [0.5, 0.0] and std == [0.5, 1e-3]  # a constant channel's std is floored
    assert pixel_statistics(images, np.array([0, 1]))[0] == [1.0, 0.0]  # only the rows asked for


def test_balanced_subset_is_balanced_nested_and_seeded():
    labels = np.repeat(np.arange(5), [300, 200, 200, 200, 100])  # imbalanced on purpose
    small, large = balanced_subset(labels, 0.05, None, seed=3), balanced_subset(labels, 0.2, None, seed=3)
    assert np.bincount(labels[small]).tolist() == [10] * 5  # 5 % of 1,000 = 50 = 10 per class
    assert set(small) <= set(large)
    assert np.array_equal(small, balanced_subset(labels, 0.05, None, seed=3))
    assert not np.array_equal(small, balanced_subset(labels, 0.05, None, seed=4))
    assert np.bincount(labels[balanced_subset(labels, 0.5, None, 0)]).tolist() == [100, 100, 100, 100, 100]
    counts = np.bincount(labels[balanced_subset(labels, 0.8, None, 0)]).tolist()
    assert counts == [160, 160, 160, 160, 100]  # a small class gives all
    assert len(balanced_subset(labels, 1.0, None, 0)) == 1000
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(labels, 0.0, None, 0)
    # Labels per class ("10/class"): the same per-class order, so nested with the fractions of the same seed.
    ten = balanced_subset(labels, None, 10, seed=3)
    assert np.bincount(labels[ten]).tolist() == [10] * 5 and set(ten) <= set(small)
    with pytest.raises(ValueError, match="exactly one"):
        balanced_subset(labels, 0.1, 10, 0)


def test_scores_on_a_known_confusion():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    cm = confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    s = scores(labels, preds, 3)
    assert s["acc"] == pytest.approx(4 / 6)
    assert s["per_class_acc"] == pytest.approx([0.5, 1.0, 0.5])
    # F1 per class: c0 p=.5 r=.5 -> .5; c1 p=2/3 r=1 -> .8; c2 p=1 r=.5 -> 2/3
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_linear_probe_picks_penalty_on_heldout_and_separates_features():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 3
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 16, generator=gen)
    probe, wd = fit_linear_probe(x, y, 3, [1e-4, 1e2], seed=0, iterations=50)
    assert wd == 1e-4  # a huge penalty flattens the logits and loses on the held-out share
    with torch.no_grad():
        assert (probe.eval()(x).argmax(1) == y).float().mean() > 0.95


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.05), ("adamw", 3e-3)])
def test_finetune_learns_and_is_deterministic(optimizer, lr):
    images, labels = synthetic_images(96, size=12, seed=1)
    labels = labels.astype(np.int64)

    def train() -> tuple[np.ndarray, dict]:
        torch.manual_seed(0)
        model = Classifier(Encoder(backbone_config(width=4), [0.5], [0.3]), 4)
        stats = finetune(
            model,
            images,
            labels,
            finetune_config(optimizer=optimizer, epochs=15, max_steps=60, batch_size=32, lr=lr),
            torch.device("cpu"),
            pretrained=False,
        )
        return predict(model, images, torch.device("cpu")), stats

    preds, stats = train()
    assert stats["steps"] == 45  # 15 epochs x 3 batches, under the 60-step cap
    assert (preds == labels).mean() > 0.9  # far above the 25 % of chance on 4 balanced classes
    assert np.array_equal(preds, train()[0])


def test_finetune_learns_in_bf16_autocast_and_channels_last_with_fp32_weights():
    """`finetune.amp` and `finetune.channels_last` change how the steps compute, not what is learned or kept: the
    same task is learned, the weights and their saved state stay fp32, and the layout is the one asked for."""
    images, labels = synthetic_images(96, size=12, seed=1)
    torch.manual_seed(0)
    model = Classifier(Encoder(backbone_config(width=4), [0.5], [0.3]), 4)
    cfg = finetune_config(optimizer="adamw", epochs=15, max_steps=60, batch_size=32, lr=3e-3)
    fast = Precision(torch.bfloat16, torch.channels_last)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    computed = set()
    hook = conv.register_forward_hook(lambda _m, _i, out: computed.add(out.dtype))
    finetune(model, images, labels.astype(np.int64), cfg, torch.device("cpu"), pretrained=False, precision=fast)
    hook.remove()
    assert (predict(model, images, torch.device("cpu")) == labels).mean() > 0.9
    assert computed == {torch.bfloat16} and all(p.dtype == torch.float32 for p in model.parameters())
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_finetune_on_one_hot_probabilities_is_finetune_on_labels():
    """Soft targets go through the same loop and loss: one-hot probabilities train the very same network."""
    images, labels = synthetic_images(64, size=12, seed=3)
    labels = labels.astype(np.int64)

    def train(targets: np.ndarray) -> Classifier:
        torch.manual_seed(0)
        model = Classifier(Encoder(backbone_config(width=4), [0.5], [0.3]), 4)
        finetune(model, images, targets, finetune_config(max_steps=8, batch_size=16), torch.device("cpu"), False)
        return model

    hard, soft = train(labels), train(np.eye(4, dtype=np.float32)[labels])
    for a, b in zip(hard.state_dict().values(), soft.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_distillation_spreads_a_teacher_over_unlabeled_images():
    """A teacher that knows the classes, 8 true labels and 152 unlabeled images: the student fits the teacher's
    probabilities (the true label where known) and classifies the pool as well as the teacher does."""
    images, labels = synthetic_images(160, size=12, seed=4)
    labels = labels.astype(np.int64)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    recipe = finetune_config(epochs=15, max_steps=60, batch_size=32, lr=3e-3)
    teacher = Classifier(Encoder(backbone_config(width=4), [0.5], [0.3]), 4)
    finetune(teacher, images, labels, recipe, cpu, False)
    teacher_acc = (predict(teacher, images, cpu) == labels).mean()
    assert teacher_acc > 0.9

    labelled = balanced_subset(labels, None, 2, seed=0)
    wrong = (labels[labelled] + 1) % 4  # labels that contradict the teacher: they must win where given
    targets = soft_targets(teacher, images, labelled, wrong, cpu)
    assert targets.shape == (160, 4) and np.allclose(targets.sum(1), 1, atol=1e-5)
    assert np.array_equal(targets[labelled], np.eye(4, dtype=np.float32)[wrong])
    unlabelled = np.setdiff1d(np.arange(160), labelled)
    assert (targets[unlabelled].argmax(1) == predict(teacher, images[unlabelled], cpu)).all()

    targets[labelled] = np.eye(4, dtype=np.float32)[labels[labelled]]
    torch.manual_seed(1)
    student = Classifier(Encoder(backbone_config(width=4), [0.5], [0.3]), 4)
    stats = finetune(student, images, targets, recipe, cpu, False)
    assert stats["train_acc"] > 0.8  # agreement with the targets' most probable class
    assert (predict(student, images, cpu) == labels).mean() > teacher_acc - 0.05


def test_features_are_raw_and_shaped():
    """The encoder's own output in eval mode (running BatchNorm statistics), batch by batch, not L2-normalised: the
    probe standardises them itself and kNN normalises where it needs to."""
    torch.manual_seed(0)
    encoder = Encoder(backbone_config(width=4, pool=2), [0.5], [0.3])
    images = np.random.default_rng(0).integers(0, 256, (5, 12, 12, 1), dtype=np.uint8)
    encoder(torch.rand(8, 1, 12, 12) * 255)  # training mode: running statistics move away from their initial values
    feats = features(encoder, images, torch.device("cpu"), batch_size=2)
    assert feats.shape == (5, 4 * 8 * 2 * 2) and encoder.feature_dim == 128 and encoder.training
    with torch.no_grad():
        expected = encoder.eval()(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    torch.testing.assert_close(feats, expected)
    assert not torch.allclose(feats.norm(dim=1), torch.ones(5))


def test_finetune_skips_a_last_batch_of_one():
    images, labels = synthetic_images(33, size=12, seed=2)  # 33 = 2 x 16 + 1: the remainder cannot be batch-normalised
    model = Classifier(Encoder(backbone_config(width=4), [0.5], [0.3]), 4)
    stats = finetune(
        model,
        images,
        labels.astype(np.int64),
        finetune_config(epochs=2, max_steps=10, batch_size=16),
        torch.device("cpu"),
        pretrained=True,
    )
    assert stats["steps"] == 6  # the step budget (2 epochs x 3 batches) is spent on full batches only


def _row(budget: str, draw: int, init: str, protocol: str, acc: float, headline: bool = False) -> dict:
    row = {"budget": budget, "budget_name": budget, "labels": 600, "draw": draw, "init": init, "protocol": protocol}
    return {**row, "acc": acc, "macro_f1": acc, "headline": headline}


def test_headline_compares_the_declared_protocols_over_the_draws():
    """Each init's figure is the protocol finetune flagged as its headline (chosen on held-out labels), whatever
    scores best on test; a gain's spread is that of the paired per-draw differences (hand-computed below)."""
    from sslops.ml.results import aggregate, headline

    accs = {  # draws 0, 1, 2; the flag: the init's headline protocol
        ("pretrained", "linear", True): (0.80, 0.82, 0.84),  # mean 0.82
        ("pretrained", "finetune", False): (0.83, 0.79, 0.80),  # mean 0.8067, though best in draw 0
        ("scratch", "linear", False): (0.80, 0.81, 0.82),  # mean 0.81: best on test, but not declared
        ("scratch", "finetune", True): (0.78, 0.78, 0.81),  # mean 0.79
        ("pixels", "linear", True): (0.70, 0.70, 0.70),
        ("pixels", "knn", False): (0.75, 0.75, 0.75),
    }
    rows = [_row("frac_0.01", d, i, p, a[d], flag) for (i, p, flag), a in accs.items() for d in range(3)]
    top = {(r["init"], r["protocol"]): r for r in aggregate(rows)}
    assert top[("pretrained", "linear")]["acc"] == pytest.approx(0.82) and top[("pretrained", "linear")]["headline"]
    assert top[("pretrained", "linear")]["acc_std"] == pytest.approx(0.02)  # sample std of 0.80, 0.82, 0.84
    assert (top[("scratch", "finetune")]["acc_min"], top[("scratch", "finetune")]["acc_max"]) == (0.78, 0.81)
    h = headline(rows)["frac_0.01"]
    assert (h["best_pretrained_protocol"], h["best_scratch_protocol"], h["draws"]) == ("linear", "finetune", 3)
    assert h["best_scratch"] == pytest.approx(0.79)  # not the scratch probe's 0.81: that choice would be on test
    # paired differences linear/pretrained - finetune/scratch: 0.02, 0.04, 0.03 -> mean 0.03, sample std 0.01
    assert h["gain_vs_best_scratch"] == pytest.approx(0.03)
    assert h["gain_vs_best_scratch_std"] == pytest.approx(0.01)
    assert h["gain_vs_scratch_finetune"] == pytest.approx(0.03)  # the declared scratch is the scratch fine-tune here
    assert h["gain_vs_pixels"] == pytest.approx(0.12) and h["gain_vs_pixels_std"] == pytest.approx(0.02)


def test_headline_refuses_results_without_exactly_one_declared_protocol_per_init():
    from sslops.ml.results import headline

    rows = [
        _row("frac_0.01", 0, i, p, 0.8, headline=p == "finetune")
        for i in ("pretrained", "scratch")
        for p in ("linear", "finetune")
    ]
    assert headline(rows)["frac_0.01"]["best_pretrained_protocol"] == "finetune"
    with pytest.raises(ValueError, match=r"0 protocols are flagged as the headline of scratch at frac_0.01 \(none\)"):
        headline([r for r in rows if r["init"] != "scratch" or r["protocol"] != "finetune"])
    both = [{**r, "headline": True} if r["init"] == "pretrained" else r for r in rows]
    with pytest.raises(
        ValueError,
        match="2 protocols are flagged as the headline of pretrained at frac_0.01 "
        r"\(linear, finetune\)",
    ):
        headline(both)


@pytest.mark.parametrize("k", [3, 6, 11, 22, 46])  # accuracies out of 500 whose float mean of three overshoots
def test_tied_draws_average_to_their_value_and_plot_with_zero_spread(tmp_path, k):
    """Three draws that tie at k/500 aggregate to k/500 itself, spread 0: `statistics.fmean` gave one rounding step
    above the maximum for these k, a negative error bar, and the evaluate stage's plot crashed."""
    from sslops.ml.results import aggregate, headline
    from sslops.outputs.plots import label_efficiency

    acc = k / 500
    rows = [_row("frac_0.01", d, i, "finetune", acc, True) for i in ("pretrained", "scratch") for d in range(3)]
    agg = aggregate(rows)
    assert all(r["acc_min"] <= r["acc"] <= r["acc_max"] and r["acc"] == acc and r["acc_std"] == 0 for r in agg)
    h = headline(rows)["frac_0.01"]
    assert (h["gain_vs_best_scratch"], h["gain_vs_best_scratch_std"]) == (0.0, 0.0)
    label_efficiency(agg, tmp_path / "label_efficiency.png", "Task tied")
    assert (tmp_path / "label_efficiency.png").stat().st_size > 0


def test_a_draw_that_scored_nan_spreads_nan_like_its_mean() -> None:
    from sslops.ml.results import mean, spread

    assert math.isnan(mean([math.nan, 0.8])) and math.isnan(spread([math.nan, 0.8])) and math.isnan(spread([math.inf]))
    assert spread([0.8]) == 0.0 and spread([0.5, 0.5]) == 0.0


def test_a_recipe_is_chosen_on_its_mean_held_out_accuracy_and_the_probe_must_beat_it() -> None:
    from sslops.ml.results import choose_recipe

    assert choose_recipe({"base": [0.5, 0.7], "lr": [0.6, 0.6]}, [0.1]) == ("base", "finetune")  # a tie: the earlier
    assert choose_recipe({"base": [0.5], "lr": [0.61]}, [0.6]) == ("lr", "finetune")
    assert choose_recipe({"base": [0.5], "lr": [0.6]}, [0.6]) == ("lr", "finetune")  # a tie keeps fine-tuning
    assert choose_recipe({"base": [0.5], "lr": [0.6]}, [0.7, 0.6]) == ("lr", "linear")
