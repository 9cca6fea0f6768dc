"""`sslops embed`: features of a folder of images from a registered encoder (inference for downstream use).

The encoder is loaded through the registry (`models:/<name>@<alias>` or `models:/<name>/<version>`) with
`mlflow.pytorch.load_model`, exactly as any MLflow user would. Images are converted to the encoder's
channel count and size (from the model signature), and the result is written atomically as .npz with
`paths` (relative to the folder) and `embeddings` (N x feature_dim, float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sslops.atomic import atomic_file
from sslops.errors import SslopsError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_images(folder: Path, channels: int, height: int, width: int) -> tuple[list[str], np.ndarray]:
    """Every image under `folder` (recursively, sorted) as uint8 NHWC, converted and resized to the model input."""
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise SslopsError(f"{folder} is not a folder of images.")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SslopsError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    out = np.empty((len(paths), height, width, channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                out[i] = np.asarray(img).reshape(height, width, channels)
        except (UnidentifiedImageError, OSError) as exc:
            raise SslopsError(f"{path} is not a readable image: {exc}") from None
    return [str(p.relative_to(folder)) for p in paths], out


def embed_folder(model_uri: str, folder: Path, out: Path, batch_size: int = 512) -> dict:
    import mlflow
    import torch

    from sslops.ml.transfer import features

    try:
        info = mlflow.models.get_model_info(model_uri)
        encoder = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except mlflow.exceptions.MlflowException as exc:
        raise SslopsError(f"cannot load {model_uri}: {exc.message}") from None
    if info.signature is None:
        raise SslopsError(f"{model_uri} has no signature, so the input size is unknown: register it with `sslops register`.")
    _, channels, height, width = info.signature.inputs.inputs[0].shape
    paths, images = load_images(folder, channels, height, width)
    feats = features(encoder, images, torch.device("cpu"), batch_size).numpy().astype(np.float32)
    with atomic_file(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, paths=np.asarray(paths), embeddings=feats)
    return {"model": model_uri, "images": len(paths), "dim": int(feats.shape[1]), "out": str(out)}
