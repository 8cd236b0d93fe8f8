"""Classification metrics, dataset listing and the confusion-matrix plot shared by
train.py and evaluate.py (numpy + matplotlib only)."""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def list_images(root: str, classes: Sequence[str], limit_per_class: int = 0,
                strict: bool = True) -> List[Tuple[str, int]]:
    """(path, class index) for `root/<class>/<image>`, sorted by class then file name.

    Class folders not in `classes` raise (strict) or are skipped with a warning."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder not found: {root}")
    index = {c: i for i, c in enumerate(classes)}
    items: List[Tuple[str, int]] = []
    for cls in sorted(os.listdir(root)):
        cdir = os.path.join(root, cls)
        if not os.path.isdir(cdir):
            continue
        if cls not in index:
            if strict:
                raise ValueError(f"unknown class folder {cdir!r}; expected one of {list(classes)}")
            print(f"warning: skipping unknown class folder {cdir}", flush=True)
            continue
        files = sorted(f for f in os.listdir(cdir) if f.lower().endswith(IMAGE_EXTS))
        if limit_per_class:
            files = files[:limit_per_class]
        items.extend((os.path.join(cdir, f), index[cls]) for f in files)
    if not items:
        raise ValueError(f"no images found under {root}")
    return items


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        cm[int(t), int(p)] += 1
    return cm


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> Dict:
    n = len(classes)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    pred_count = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1).astype(float)
    per_class = {}
    f1s = []
    for i, c in enumerate(classes):
        p = tp[i] / pred_count[i] if pred_count[i] else 0.0
        r = tp[i] / support[i] if support[i] else 0.0
        f1 = 2 * p * r / (p + r) if (p + r) else 0.0
        per_class[c] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
                        "support": int(support[i])}
        if support[i]:
            f1s.append(f1)
    total = int(cm.sum())
    return {
        "accuracy": round(float(tp.sum() / total), 4) if total else 0.0,
        "correct": int(tp.sum()),
        "total": total,
        "macro_f1": round(float(np.mean(f1s)), 4) if f1s else 0.0,
        "per_class": per_class,
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
    }


def format_report(rep: Dict) -> str:
    lines = [f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for c, m in rep["per_class"].items():
        lines.append(f"{c:<12} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>7.3f} {m['support']:>8d}")
    lines.append(f"accuracy: {rep['accuracy']:.4f} ({rep['correct']}/{rep['total']})  macro-F1: {rep['macro_f1']:.4f}")
    cm = rep["confusion_matrix"]
    short = [c[:6] for c in rep["classes"]]
    lines.append("confusion matrix (rows = true, columns = predicted):")
    lines.append(" " * 12 + " ".join(f"{s:>6}" for s in short))
    for c, row in zip(rep["classes"], cm):
        lines.append(f"{c:<12}" + " ".join(f"{v:>6d}" for v in row))
    return "\n".join(lines)


def plot_confusion_matrix(cm, classes: Sequence[str], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)))
    ax.set_yticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > thresh else "black", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
