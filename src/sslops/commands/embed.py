"""`sslops embed`: features of a folder of images from a registered encoder (inference for downstream use).

The encoder is found through the registry (`models:/<name>@<alias>` or `models:/<name>/<version>`) and rebuilt
from the version's plain state_dict, its sha256 checked against the version's tag: no pickle is loaded. Images
are converted to the encoder's channel count and brought to its input size by prepare's own resize rule (aspect kept:
`prepare.resize.mode` crop or pad, bicubic; `sslops.data.resize`), the way every task's images reach it; the result
is written atomically as .npz with `paths` (relative to the folder) and `embeddings` (N x feature_dim, float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sslops.adapters import tracking
from sslops.commands.lineage import parse_ref
from sslops.data import images, resize
from sslops.errors import SslopsError
from sslops.outputs.atomic import atomic_file


def load_images(folder: Path, fit: resize.Fit, max_pixels: int) -> tuple[list[str], np.ndarray, dict[str, list[str]]]:
    """Every image under `folder` (recursively, sorted) as uint8 NHWC fitted to `fit`, and what was skipped.

    Files are read by the same rules as prepare's ImageFolder reader (`sslops.data.images`) and resized by its
    resize rule (`sslops.data.resize.fit_image`); a file those rules refuse is skipped, not fatal, and reported by
    reason (the third value: reason kind -> paths).
    """
    if not folder.is_dir():
        raise SslopsError(f"{folder} is not a folder of images.")
    candidates = sorted(p for p in folder.rglob("*") if p.suffix.lower() in images.IMAGE_SUFFIXES and not p.is_dir())
    kept: list[str] = []
    pixels: list[np.ndarray] = []
    skipped: dict[str, list[str]] = {}
    for path in candidates:
        try:
            images.check_path(path, folder)
            pixels.append(resize.fit_image(images.read(path, fit.channels, max_pixels), fit))
            kept.append(str(path.relative_to(folder)))
        except images.ImageRejected as exc:
            skipped.setdefault(exc.kind, []).append(f"{path.relative_to(folder)}: {exc.reason}")
    if not kept:
        reasons = "; ".join(f"{len(v)} {k}" for k, v in skipped.items())
        raise SslopsError(
            f"{folder} holds no readable images ({', '.join(sorted(images.IMAGE_SUFFIXES))})"
            + (f": skipped {reasons}." if skipped else ".")
        )
    return kept, np.stack(pixels), skipped


def embed_folder(
    model_uri: str, folder: Path, out: Path, max_pixels: int, mode: str, recorded: dict, batch_size: int = 512
) -> dict:
    """Embeddings of every readable image under `folder` from the registered encoder `model_uri`, written to `out`.

    `mode` is `prepare.resize.mode` (crop or pad); `recorded` is the project's metrics/register.json: when it names
    the version, the registry must agree with it.
    """
    import torch

    from sslops.ml.models import load_encoder_dir
    from sslops.ml.transfer import features

    if not model_uri.startswith("models:/"):
        raise SslopsError(
            f"{model_uri!r} is not a registry URI: use models:/<name>@<alias> or models:/<name>/<version>."
        )
    if out.is_dir():  # said before the embedding work, which the atomic write would otherwise fail after
        raise SslopsError(f"--out {out} is a folder; give a file to write, such as {out / 'embeddings.npz'}")
    name, ref = parse_ref(model_uri, "")
    with tracking.registered_encoder(name, ref, recorded) as (state_dict, _, digests):
        encoder, spec = load_encoder_dir(state_dict, *digests)
    height, width, channels = spec["image_shape"]
    paths, batch, skipped = load_images(folder, resize.Fit(height, width, channels, mode), max_pixels)
    for kind, files in skipped.items():
        print(f"skipped {len(files)} file(s), {kind}: " + "; ".join(files[:3]) + (" ..." if len(files) > 3 else ""))
    feats = features(encoder, batch, torch.device("cpu"), batch_size).numpy().astype(np.float32)
    with atomic_file(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, paths=np.asarray(paths), embeddings=feats)
    return {
        "model": model_uri,
        "images": len(paths),
        "skipped": {kind: len(files) for kind, files in skipped.items()},
        "dim": int(feats.shape[1]),
        "out": str(out),
    }
