"""Batched tensor augmentations: shapes, determinism, and that each transform does what it says."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import REPO, augment_config
from sslops.config.validation import parse_section
from sslops.errors import SslopsError
from sslops.ml.augment import AugmentConfig, BatchAugment

IDENTITY = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0}


def batch(n=16, c=1, size=12, seed=0):
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def run(cfg: AugmentConfig, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return BatchAugment(cfg)(x, torch.Generator().manual_seed(seed))


def test_shapes_dtype_and_resize():
    out = run(augment_config(size=8), batch(c=3))
    assert out.shape == (16, 3, 8, 8) and out.dtype == torch.uint8


def test_deterministic_for_a_seed_and_different_across_seeds():
    x = batch()
    assert torch.equal(run(augment_config(), x, 1), run(augment_config(), x, 1))
    assert not torch.equal(run(augment_config(), x, 1), run(augment_config(), x, 2))


def test_identity_settings_leave_images_unchanged():
    x = batch(c=3)
    assert torch.equal(run(augment_config(**IDENTITY, hue=0.0), x), x)


def test_flip_mirrors_every_image():
    x = batch()
    assert torch.equal(run(augment_config(**{**IDENTITY, "flip_p": 1.0}), x), x.flip(-1))


def test_crop_zooms_in():
    x = torch.zeros(4, 1, 16, 16, dtype=torch.uint8)
    x[:, :, 6:10, 6:10] = 255  # a bright square in the middle
    cfg = augment_config(**{**IDENTITY, "crop_scale": (0.25, 0.25)})
    out = run(cfg, x)
    assert (out > 127).float().mean() > (x > 127).float().mean()  # the square covers more of the crop


def test_brightness_jitter_changes_intensity_per_image():
    x = torch.full((32, 1, 8, 8), 100, dtype=torch.uint8)
    cfg = augment_config(**{**IDENTITY, "jitter_p": 1.0, "brightness": 0.5, "contrast": 0.0})
    means = run(cfg, x).float().mean(dim=(1, 2, 3))
    assert means.min() >= 49 and means.max() <= 151 and means.std() > 5


def test_grayscale_makes_channels_equal():
    cfg = augment_config(**{**IDENTITY, "grayscale_p": 1.0})
    out = run(cfg, batch(c=3))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_blur_smooths():
    x = batch(size=16)
    cfg = augment_config(**{**IDENTITY, "blur_p": 1.0, "blur_sigma": (1.5, 1.5)})
    diff = lambda t: (t.float()[..., 1:] - t.float()[..., :-1]).abs().mean()  # noqa: E731
    assert diff(run(cfg, x)) < 0.5 * diff(x)


def test_rotation_rotates():
    x = torch.zeros(2, 1, 15, 15, dtype=torch.uint8)
    x[:, :, 7, :] = 255  # a horizontal line
    cfg = augment_config(**{**IDENTITY, "rotation": 90.0})
    out = run(cfg, x, seed=3)
    assert not torch.equal(out, x)


def test_unknown_param_is_rejected():
    section = yaml.safe_load((REPO / "params.yaml").read_text())["augment"]
    with pytest.raises(SslopsError, match="augment.sharpness in params.yaml: unknown key"):
        parse_section("augment", {**section, "sharpness": 0.3})
    cfg = parse_section("augment", {**section, "crop_scale": [0.3, 1.0], "views": 8})
    assert cfg.to_core(AugmentConfig).crop_scale == (0.3, 1.0)


def test_crop_flip_is_crop_and_flip_only():
    cfg = AugmentConfig.crop_flip((0.6, 1.0), 0.5)
    assert (cfg.crop_scale, cfg.crop_ratio, cfg.flip_p, cfg.size) == ((0.6, 1.0), (3 / 4, 4 / 3), 0.5, None)
    assert cfg.jitter_p == cfg.grayscale_p == cfg.blur_p == cfg.rotation == cfg.hue == 0.0
