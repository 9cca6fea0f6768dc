"""The ML core: augmentations, models, SSL methods, losses, optimisers, training loop, evaluation.

Depends on torch, torchvision and numpy only (docs/architecture.md): no MLflow, DVC, GX or Prefect.
"""
