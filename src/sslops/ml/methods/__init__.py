"""Self-supervised methods behind one small interface, so the training loop never changes per method.

A method owns the trainable modules (encoder + heads) and turns the two augmented views of a batch into a
loss; methods with momentum targets override `after_step`. Each lives in one file of this package with its knobs
(a dataclass whose field types carry their ranges) and its checks; this module is the registry: a new method is a
new file, one entry in `METHODS` below, and its knobs under `pretrain:` in params.yaml (docs/methods.md).
"""

from __future__ import annotations

from sslops.ml.methods.barlow import BarlowConfig, BarlowTwins
from sslops.ml.methods.base import Method
from sslops.ml.methods.byol import BYOL, BYOLConfig
from sslops.ml.methods.dae import DAEConfig, DenoisingAutoencoder
from sslops.ml.methods.dino import DINO, DINOConfig
from sslops.ml.methods.jigsaw import Jigsaw, JigsawConfig, jigsaw_permutations, shuffle_tiles, to_tiles
from sslops.ml.methods.mim import MaskedReconstruction, MIMConfig
from sslops.ml.methods.moco import MoCo, MoCoConfig
from sslops.ml.methods.rotation import RotationConfig, RotationPrediction
from sslops.ml.methods.simclr import SimCLR, SimCLRConfig
from sslops.ml.methods.simsiam import SimSiam, SimSiamConfig
from sslops.ml.methods.vicreg import VICReg, VICRegConfig
from sslops.ml.models import Encoder

# params.yaml `pretrain.method` -> the class; each class names its knobs' dataclass (`Config`).
METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        SimCLR,
        MoCo,
        BYOL,
        MaskedReconstruction,
        RotationPrediction,
        SimSiam,
        BarlowTwins,
        VICReg,
        DINO,
        DenoisingAutoencoder,
        Jigsaw,
    )
}
METHOD_CONFIGS: dict[str, type] = {name: cls.Config for name, cls in METHODS.items()}
_BY_CONFIG = {cls.Config: cls for cls in METHODS.values()}


def build_method(cfg: object, encoder: Encoder, image_shape: tuple[int, int, int]) -> Method:
    """The method whose knobs `cfg` holds (one of METHOD_CONFIGS' dataclasses), around `encoder`."""
    if type(cfg) not in _BY_CONFIG:
        raise TypeError(
            f"not a method config: {type(cfg).__name__} (one of {', '.join(c.__name__ for c in _BY_CONFIG)})"
        )
    return _BY_CONFIG[type(cfg)](encoder, image_shape, cfg)


__all__ = [
    "BYOL",
    "DINO",
    "METHODS",
    "METHOD_CONFIGS",
    "BYOLConfig",
    "BarlowConfig",
    "BarlowTwins",
    "DAEConfig",
    "DINOConfig",
    "DenoisingAutoencoder",
    "Jigsaw",
    "JigsawConfig",
    "MIMConfig",
    "MaskedReconstruction",
    "Method",
    "MoCo",
    "MoCoConfig",
    "RotationConfig",
    "RotationPrediction",
    "SimCLR",
    "SimCLRConfig",
    "SimSiam",
    "SimSiamConfig",
    "VICReg",
    "VICRegConfig",
    "build_method",
    "jigsaw_permutations",
    "shuffle_tiles",
    "to_tiles",
]
