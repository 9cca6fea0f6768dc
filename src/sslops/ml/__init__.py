"""The ML core: augmentations, models, SSL methods, losses, optimisers, training loop, evaluation.

Depends on torch, torchvision and numpy only (DESIGN.md, Boundaries): no MLflow, DVC, GX or Prefect.
"""
