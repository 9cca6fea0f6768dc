"""Classification metrics from predictions (numpy only): accuracy, macro-F1, per-class accuracy, confusion."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    return np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> dict:
    """Accuracy, macro-F1 (unweighted mean over classes) and per-class accuracy (recall) with the confusion matrix."""
    cm = confusion_matrix(np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64), n_classes)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    present = support > 0
    return {
        "acc": float(tp.sum() / max(1, cm.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_acc": recall.tolist(),
        "confusion": cm.tolist(),
    }
