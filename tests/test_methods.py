"""The pretext methods behind one interface: each runs in the unchanged training loop, keeps its targets
and queue right (also under DDP), and learns: after a short run on a Fashion-MNIST subset its kNN accuracy
beats the same backbone at random initialisation (best of three seeds) by more than 2 points, a margin
above the spread of those seeds (64.3-66.3 %), with fixed seeds throughout."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import REPO, augment_config, backbone_config, method_config, train_config
from sslops.data.idx import read_idx
from sslops.ml.augment import BatchAugment
from sslops.ml.knn import knn_accuracy
from sslops.ml.methods import (
    BYOL,
    DINO,
    METHOD_CONFIGS,
    METHODS,
    BYOLConfig,
    DAEConfig,
    DenoisingAutoencoder,
    MoCo,
    MoCoConfig,
    build_method,
    jigsaw_permutations,
    shuffle_tiles,
    to_tiles,
)
from sslops.ml.models import Encoder
from sslops.ml.train import pretrain
from sslops.ml.transfer import features
from sslops.ml.views import on_the_fly_pairs

SHAPE = (1, 12, 12)


def encoder(width: int = 4, pool: int = 1, seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(backbone_config(width=width, pool=pool), [0.3], [0.35])


def small(name: str):
    """Method `name` with narrow heads (the other knobs at the fixture values of conftest.METHOD_KNOBS)."""
    return method_config(
        name,
        **{
            "simclr": {"proj_hidden": 16, "proj_dim": 8},
            "moco": {"proj_hidden": 16, "proj_dim": 8, "queue_size": 20},
            "byol": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16},
            "mim": {"patch": 4, "dec_hidden": 16},
            "rotation": {"hidden": 16},
            "simsiam": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 4},
            "barlow": {"proj_hidden": 16, "proj_dim": 8},
            "vicreg": {"proj_hidden": 16, "proj_dim": 8},
            "dino": {"proj_hidden": 16, "bottleneck_dim": 8, "out_dim": 32},
            "dae": {"dec_hidden": 16},
            "jigsaw": {"hidden": 16, "permutations": 6},
        }[name],
    )


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_a_step_and_only_the_encoder_is_registered(name):
    """One optimiser step moves the encoder; the method's heads live beside it, never inside it, so what pretrain
    saves and register publishes (`method.encoder`'s state_dict) is the backbone alone, the same keys whatever the
    method."""
    enc = encoder()
    method = build_method(small(name), enc, SHAPE)
    assert method.encoder is enc and set(enc.state_dict()) == set(encoder().state_dict())
    heads = {id(p) for p in method.parameters()} - {id(p) for p in enc.parameters()}
    assert heads, f"{name} has no parameters of its own"
    before = {k: v.detach().clone() for k, v in enc.named_parameters()}  # weights, not BatchNorm's running stats
    views = [torch.randint(0, 256, (8, *SHAPE)).float() for _ in range(2)]
    loss = method(views)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in method.encoder.parameters())
    torch.optim.SGD(method.parameters(), lr=0.1).step()
    method.after_step(0, 10)
    assert any(not torch.equal(before[k], v) for k, v in enc.named_parameters())


def test_method_configs_and_methods_name_the_same_methods():
    assert list(METHOD_CONFIGS) == list(METHODS)


def test_bad_knobs_are_named():
    """Checks across knobs run whenever a config is built; checks against the data when the method is built (the
    knobs' ranges are checked against params.yaml: tests/test_config.py)."""
    with pytest.raises(TypeError, match="queue"):
        method_config("moco", queue=5)  # an unknown knob: refused when the config is built
    with pytest.raises(ValueError, match=r"local_scale must be \[low, high\]"):
        method_config("dino", local_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="noise_p and noise_std are both 0"):
        method_config("dae", noise_p=0.0, noise_std=0.0)
    with pytest.raises(ValueError, match=r"permutations 25 must be between 2 and 24 \(orderings of 2x2 tiles\)"):
        method_config("jigsaw", permutations=25)
    with pytest.raises(TypeError, match="not a method config: dict"):
        build_method({"queue_size": 5}, encoder(), SHAPE)
    with pytest.raises(ValueError, match="patch 5 must divide"):
        build_method(method_config("mim", patch=5), encoder(), SHAPE)
    with pytest.raises(ValueError, match="square"):
        build_method(method_config("rotation"), encoder(), (1, 12, 16))
    with pytest.raises(ValueError, match=r"jigsaw.grid 5 must divide the image size 12x12"):
        build_method(method_config("jigsaw", grid=5), encoder(), SHAPE)
    with pytest.raises(ValueError, match=r"dino.local_fraction 0.1 gives 1-px local crops of 12x12 views"):
        build_method(method_config("dino", local_fraction=0.1), encoder(), SHAPE)


def test_each_method_is_one_file_that_names_itself_and_its_knobs():
    """The registry is the methods' own declarations: a class per file of sslops.ml.methods, its params.yaml key and
    its knobs' dataclass on it, each knob's type carrying its range (what tests/test_config.py checks params by)."""
    import dataclasses
    import inspect
    import typing

    files = {Path(inspect.getfile(cls)).stem: cls for cls in METHODS.values()}
    assert set(files) == set(METHODS) and all(files[name].name == name for name in METHODS)
    for name, cls in METHODS.items():
        assert METHOD_CONFIGS[name] is cls.Config and inspect.getmodule(cls.Config) is inspect.getmodule(cls)
        hints = typing.get_type_hints(cls.Config, include_extras=True)
        ranged = [
            f.name
            for f in dataclasses.fields(cls.Config)
            if typing.get_origin(hints[f.name]) is typing.Annotated or typing.get_origin(hints[f.name]) is tuple
        ]
        assert ranged == [f.name for f in dataclasses.fields(cls.Config)], f"{name}: a knob without its range"


def test_the_methods_table_lists_each_method_with_its_knobs():
    """docs/methods.md's table names every registered method and exactly the knobs its dataclass declares."""
    import dataclasses
    import re

    rows = re.findall(r"^\| `(\w+)` \|.*\| ([^|]+) \|$", (REPO / "docs" / "methods.md").read_text(), re.M)
    table: dict[str, list[str]] = {}
    for name, knobs in rows:  # the first table; later ones (results) have rows by method too
        table.setdefault(name, re.findall(r"`(\w+)`", knobs))
    assert table == {name: [f.name for f in dataclasses.fields(cls)] for name, cls in METHOD_CONFIGS.items()}


def test_moco_queue_fills_in_order_and_key_encoder_follows_by_momentum():
    method = MoCo(
        encoder(), SHAPE, MoCoConfig(proj_hidden=16, proj_dim=8, temperature=0.2, queue_size=20, momentum=0.9)
    )
    before = [p.clone() for p in method.key_encoder.parameters()]
    views = [torch.randint(0, 256, (6, *SHAPE)).float() for _ in range(2)]
    q0 = method.queue.clone()
    method(views)
    assert int(method.queue_ptr) == 12  # two views x 6 keys entered the queue
    assert not torch.equal(method.queue[:12], q0[:12]) and torch.equal(method.queue[12:], q0[12:])  # in rows 0-11
    q1 = method.queue.clone()
    method(views)
    assert int(method.queue_ptr) == 4  # wrapped around a queue of 20: rows 12-19, then 0-3
    assert not torch.equal(method.queue[12:], q1[12:]) and not torch.equal(method.queue[:4], q1[:4])
    assert torch.equal(method.queue[4:12], q1[4:12])
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    method.after_step(0, 10)
    for b, k, o in zip(before, method.key_encoder.parameters(), method.encoder.parameters(), strict=True):
        torch.testing.assert_close(k, 0.9 * b + 0.1 * o)
    assert not any(p.requires_grad for p in method.key_encoder.parameters())


def test_byol_momentum_schedule_goes_from_base_to_one():
    method = BYOL(encoder(), SHAPE, BYOLConfig(proj_hidden=16, proj_dim=8, pred_hidden=16, base_momentum=0.99))
    assert method.momentum(0, 100) == pytest.approx(0.99)
    assert method.momentum(50, 100) == pytest.approx(0.995)
    assert method.momentum(100, 100) == pytest.approx(1.0)


def test_dino_teacher_sees_the_global_views_and_the_student_the_local_crops_too():
    method = build_method(small("dino"), encoder(), (1, 28, 28))
    assert isinstance(method, DINO)
    seen = {"student": [], "teacher": []}
    method.encoder.register_forward_hook(lambda m, i, o: seen["student"].append(tuple(i[0].shape)))
    method.teacher_encoder.register_forward_hook(lambda m, i, o: seen["teacher"].append(tuple(i[0].shape)))
    views = [torch.randint(0, 256, (6, 1, 28, 28)).float() for _ in range(2)]
    method(views)
    # 2 global views of 6 images; 2 local crops per image, 0.43 of the 28-px side = 12 px
    assert seen == {"student": [(12, 1, 28, 28), (12, 1, 12, 12)], "teacher": [(12, 1, 28, 28)]}
    assert not any(p.requires_grad for p in method.teacher_encoder.parameters())
    assert method.loss.center.abs().sum() > 0  # moved towards the teacher's outputs by the loss
    before = [p.clone() for p in method.teacher_encoder.parameters()]
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    method.after_step(0, 10)  # the teacher follows the student by momentum, 0.99 at step 0
    for b, t, s in zip(before, method.teacher_encoder.parameters(), method.encoder.parameters(), strict=True):
        torch.testing.assert_close(t, 0.99 * b + 0.01 * s)


def test_dae_reconstructs_the_clean_image_from_a_corrupted_one():
    method = DenoisingAutoencoder(encoder(), SHAPE, DAEConfig(noise_p=0.5, noise_std=0.0, dec_hidden=16))
    x = torch.randint(0, 256, (64, *SHAPE)).float()
    torch.manual_seed(0)
    corrupted = method.corrupt(x)
    changed = corrupted != x
    mean = method.encoder.normalize.mean
    assert 0.45 < changed.float().mean() < 0.55 and (corrupted[changed] == mean.flatten()[0]).all()

    class Echo(torch.nn.Module):  # a perfect decoder of `target`, ignoring the features
        def __init__(self, target):
            super().__init__()
            self.target = target

        def forward(self, features):
            return self.target.flatten(1)

    clean = method.encoder.normalize(torch.cat([x, x]))
    method.decoder = Echo(clean)
    assert method([x, x]).item() == 0.0  # the target is the clean image: its reconstruction costs nothing
    method.decoder = Echo(method.encoder.normalize(torch.cat([corrupted, corrupted])))
    assert method([x, x]).item() > 0.1  # rebuilding the corrupted input does


def test_jigsaw_permutations_are_distinct_far_apart_and_fixed():
    orders = jigsaw_permutations(4, 24)
    assert sorted(map(tuple, orders.tolist())) == sorted(__import__("itertools").permutations(range(4)))
    assert (jigsaw_permutations(4, 2)[0] != jigsaw_permutations(4, 2)[1]).all()  # Hamming distance 4 of 4
    nine = jigsaw_permutations(9, 30)
    assert len({tuple(o) for o in nine.tolist()}) == 30 and (np.sort(nine, 1) == np.arange(9)).all()
    assert (jigsaw_permutations.__wrapped__(9, 30) == nine).all()  # seeded: the same set every time
    distance = (nine[:, None] != nine[None]).sum(2)
    # the paper's greedy choice maximises the summed distance: above the 9 * 8/9 = 8 expected of random orderings
    assert distance[~np.eye(30, dtype=bool)].mean() > 8.2


def from_tiles(tiles: torch.Tensor, grid: int) -> torch.Tensor:
    """The inverse of `to_tiles` (the test's own: the method never reassembles an image)."""
    n, _, c, th, tw = tiles.shape
    return tiles.reshape(n, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, grid * th, grid * tw)


def test_jigsaw_tiles_shuffle_and_invert():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    tiles = to_tiles(x, 2)
    assert tiles[0, :, 0].tolist() == [[[0, 1], [4, 5]], [[2, 3], [6, 7]], [[8, 9], [12, 13]], [[10, 11], [14, 15]]]
    swapped = from_tiles(shuffle_tiles(tiles, torch.tensor([[1, 0, 3, 2]])), 2)
    assert swapped[0, 0].tolist() == [[2, 3, 0, 1], [6, 7, 4, 5], [10, 11, 8, 9], [14, 15, 12, 13]]
    images = torch.randn(5, 3, 12, 12)
    orders = torch.from_numpy(jigsaw_permutations(9, 5))
    shuffled = shuffle_tiles(to_tiles(images, 3), orders)
    torch.testing.assert_close(from_tiles(shuffle_tiles(shuffled, orders.argsort(1)), 3), images, rtol=0, atol=0)


def _moco_worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    method = MoCo(
        encoder(), SHAPE, MoCoConfig(proj_hidden=16, proj_dim=8, temperature=0.2, queue_size=64, momentum=0.99)
    )
    gen = torch.Generator().manual_seed(100 + rank)  # each rank sees different images
    views = [torch.randint(0, 256, (4, *SHAPE), generator=gen).float() for _ in range(2)]
    start = method.queue.clone()
    method(views)
    out[rank] = (start, method.queue.clone(), int(method.queue_ptr))
    dist.destroy_process_group()


def test_moco_queue_is_the_same_on_every_rank_under_ddp():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_moco_worker, args=(port, out), nprocs=2, join=True)
    (start, q0, p0), (_, q1, p1) = out[0], out[1]
    assert p0 == p1 == 16  # 2 ranks x 2 views x 4 keys, gathered before enqueueing
    assert not torch.equal(q0[:16], start[:16]) and torch.equal(q0[16:], start[16:])  # the keys went in
    torch.testing.assert_close(q0, q1)


def fashion_subset(n_train: int = 4096, n_test: int = 1000):
    folder = REPO / "data" / "fashion-mnist"
    images = read_idx(folder / "train-images-idx3-ubyte")[..., None]
    labels = read_idx(folder / "train-labels-idx1-ubyte").astype(np.int64)
    pick = np.random.default_rng(0).permutation(len(images))[: n_train + n_test]
    return images[pick[:n_train]], labels[pick[:n_train]], images[pick[n_train:]], labels[pick[n_train:]]


def knn(enc: Encoder, data) -> float:
    xtr, ytr, xte, yte = data
    cpu = torch.device("cpu")
    return knn_accuracy(features(enc, xtr, cpu), ytr, features(enc, xte, cpu), yte, k=20, temperature=0.1)


LARS = {"optimizer": "lars", "base_lr": 1.2, "weight_decay": 1e-5}
SGD = {"optimizer": "sgd", "base_lr": 0.1, "weight_decay": 1e-5}
LEARN = {  # (epochs over 4,096 images, options over conftest.METHOD_KNOBS, optimiser): 10-30 s each on 2 CPU cores
    "simclr": (10, {"proj_hidden": 128, "proj_dim": 64, "temperature": 0.2}, LARS),
    "moco": (10, {"proj_hidden": 128, "proj_dim": 64, "queue_size": 1024, "momentum": 0.9}, LARS),
    "byol": (20, {"proj_hidden": 128, "proj_dim": 64, "pred_hidden": 128, "base_momentum": 0.99}, LARS),  # slow start
    "mim": (10, {"patch": 4, "mask_ratio": 0.5, "dec_hidden": 256}, SGD),
    "rotation": (10, {"hidden": 64}, SGD),
    "simsiam": (10, {"proj_hidden": 128, "proj_dim": 64, "pred_hidden": 16}, {**SGD, "weight_decay": 5e-4}),
    "barlow": (10, {"proj_hidden": 128, "proj_dim": 64, "lambda_offdiag": 1 / 64}, {**SGD, "weight_decay": 5e-4}),
    "vicreg": (10, {"proj_hidden": 128, "proj_dim": 64}, LARS),
    "dino": (
        10,
        {"proj_hidden": 128, "bottleneck_dim": 32, "out_dim": 256, "local_crops": 0},
        {**LARS, "base_lr": 0.3},
    ),
    "dae": (8, {"dec_hidden": 256}, SGD),
    "jigsaw": (10, {"hidden": 64}, SGD),
}


@pytest.fixture(scope="module")
def fashion():
    if not (REPO / "data" / "fashion-mnist" / "train-images-idx3-ubyte").is_file():
        pytest.fail("data/fashion-mnist is missing: run `make data` (make test does it first)")
    data = fashion_subset()
    baseline = max(knn(encoder(width=8, seed=s), data) for s in range(3))  # global pooling: a weak random init
    return data, baseline


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LEARN))
def test_each_method_learns_beyond_random_init(name, fashion, tmp_path: Path):
    data, baseline = fashion
    epochs, options, optimiser = LEARN[name]
    method = build_method(method_config(name, **options), encoder(width=8, seed=0), (1, 28, 28))
    augment = BatchAugment(augment_config())
    images = data[0]
    batches = lambda epoch: on_the_fly_pairs(images, augment, 128, epoch, seed=0)  # noqa: E731
    cfg = train_config(
        epochs=epochs,
        batch_size=128,
        warmup_epochs=1,
        amp="off",
        **optimiser,
    )  # fp32 everywhere: the margins were calibrated in fp32, and `auto` depends on the CPU
    pretrain(method, batches, len(images) // 128, cfg, torch.device("cpu"), tmp_path / "ckpt.pt", name, progress=False)
    learned = knn(method.encoder, data)
    print(f"{name}: kNN {learned:.4f} vs random init (best of 3 seeds) {baseline:.4f}")
    assert learned > baseline + 0.02
