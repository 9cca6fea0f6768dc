"""The narrow-stem option of small_cnn and what `pretrain.amp: auto` resolves to."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import backbone_config, train_config
from sslops.ml import device, train
from sslops.ml.methods import SimCLR, SimCLRConfig
from sslops.ml.models import BackboneConfig, Encoder, build_backbone


def test_stem_width_narrows_only_the_first_conv():
    default = build_backbone(backbone_config(width=8, pool=2))
    narrow = build_backbone(backbone_config(width=8, pool=2, stem_width=4))
    convs = lambda net: [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]  # noqa: E731
    assert [c.out_channels for c in convs(default)] == [8, 16, 32, 64]
    assert [(c.in_channels, c.out_channels) for c in convs(narrow)][:2] == [(1, 4), (4, 16)]
    assert [c.out_channels for c in convs(narrow)][1:] == [16, 32, 64]
    assert narrow.feature_dim == default.feature_dim == 256
    assert narrow(torch.zeros(2, 1, 12, 12)).shape == (2, 256)
    assert BackboneConfig(**backbone_config(stem_width=4).to_dict()).stem_width == 4  # round-trips through encoder.json


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_amp_auto_on_cpu_is_bf16_only_with_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert device.amp_dtype("auto", cpu) is expected
    assert device.amp_dtype("off", cpu) is None and device.amp_dtype("bf16", cpu) is torch.bfloat16
    assert device.amp_dtype("auto", torch.device("mps")) is None
    with pytest.raises(ValueError, match="unknown amp setting 'fp8'"):
        device.amp_dtype("fp8", cpu)


def test_a_bf16_autocast_step_on_cpu_trains_the_encoder(tmp_path):
    torch.manual_seed(0)
    method = SimCLR(
        Encoder(backbone_config(width=4, stem_width=2), [0.5], [0.3]), (1, 12, 12), SimCLRConfig(16, 8, 0.2)
    )
    before = [p.detach().clone() for p in method.encoder.parameters()]
    views = [torch.randint(0, 256, (8, 1, 12, 12), dtype=torch.uint8) for _ in range(2)]
    cfg = train_config(epochs=1, batch_size=8, warmup_epochs=0, amp="bf16")
    batches = lambda epoch: itertools.repeat(views, 2)  # noqa: E731
    conv = next(m for m in method.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    computed: list[torch.dtype] = []
    conv.register_forward_hook(lambda module, inputs, output: computed.append(output.dtype))
    history = train.pretrain(method, batches, 2, cfg, torch.device("cpu"), tmp_path / "c.pt", "f", progress=False)
    assert torch.isfinite(torch.tensor(history[-1].loss))
    assert computed and set(computed) == {torch.bfloat16}  # every training forward ran under bf16 autocast
    assert all(p.dtype == torch.float32 for p in method.parameters())  # autocast: fp32 weights, bf16 compute
    assert all(not torch.equal(b, p) for b, p in zip(before, method.encoder.parameters(), strict=True) if b.ndim > 1)
