"""The `vitprune serve --demo` job: a small ViT trained here on generated shapes, so a fresh offline machine can
show a real search end to end.

This is a demo, not ImageNet: a shrunken DeiT-Tiny (32x32 inputs, 64 patch tokens) trained for about a minute on
procedurally drawn shapes and textures (circle, square, ..., checkerboard) at random positions, sizes and colours
with noise, and labelled so in its class map, weights metadata and a README beside them. The search is the real
one; its latency comes from the analytic phone-CPU model, so nothing needs to be profiled either.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from tqdm.auto import tqdm

from pruning.data import load_image_folder
from pruning.metrics import predict
from search.job import JobSpec, SearchSpace

__all__ = [
    "CLASSES",
    "DEMO_KWARGS",
    "DEMO_LABEL",
    "DEMO_MODEL",
    "N_CLASSES",
    "DemoAssets",
    "Report",
    "demo_assets_at",
    "demo_job",
    "make_demo_assets",
]

CLASSES = (
    "circle", "square", "triangle", "ring", "cross",
    "stripes_horizontal", "stripes_vertical", "checkerboard", "dots", "gradient",
)  # fmt: skip
N_CLASSES = len(CLASSES)
IMAGE_SIZE = 32
DEMO_MODEL = "deit_tiny_patch16_224"
# DeiT-Tiny's layout, narrowed: at 192 channels two CPU cores train only ~110 images/s, too few for a minute. Half
# the width and half the MLP train over 3x faster, several epochs a minute; six heads of 16 channels keep a head
# space worth searching next to the 64 patch tokens and the MLP channels.
DEMO_KWARGS: dict[str, int | float | str | bool] = {
    "img_size": IMAGE_SIZE, "patch_size": 4, "depth": 6, "embed_dim": 96, "num_heads": 6, "mlp_ratio": 2.0,
    "num_classes": N_CLASSES,
}  # fmt: skip
DEMO_LABEL = f"demo ViT ({DEMO_KWARGS['depth']} blocks, {DEMO_KWARGS['embed_dim']} wide, {IMAGE_SIZE} px, DEMO shapes)"
"""What the demo model is, shown where a job's model is named: its timm name would say DeiT-Tiny, which it is not."""
TRAIN_PER_CLASS, CALIB_PER_CLASS, VAL_PER_CLASS = 500, 50, 50
TRAIN_STEPS = 700
"""About a minute on two idle cores (~79% top-1 on the validation shapes); a fixed count, not a time budget, so
the demo model is the same on a busy or a fast machine."""
_LR = 1e-3
_VERSION = 2  # bump when the images or the training change, so an old asset folder is rebuilt


Report = Callable[[str, int, int], None]
"""Called with (stage, done, total) as the assets are made, e.g. ("training the ViT", 120, 700)."""


@dataclass
class DemoAssets:
    """The demo's files (absolute paths) and the trained model's top-1 (%) on `val`."""

    weights: Path
    calib: Path
    val: Path
    class_map: Path
    accuracy: float


def demo_assets_at(root: Path) -> DemoAssets:
    """Where `make_demo_assets(root)` puts the demo's files (accuracy 0 until they are made): a job can name them
    before they exist."""
    root = Path(root).resolve()
    return DemoAssets(root / "model.safetensors", root / "calib", root / "val", root / "classes.txt", 0.0)


def make_demo_assets(
    root: Path, *, steps: int = TRAIN_STEPS, seed: int = 0, progress: bool = True, report: Report | None = None
) -> DemoAssets:
    """Generate images, train, save; reuse `root` contents if a previous call completed (a marker file written
    last) so a restart is instant. `report` hears each stage's progress (and may raise to stop)."""
    report = report or _no_report
    root = Path(root).resolve()
    assets = demo_assets_at(root)
    identity = {"version": _VERSION, "seed": seed, "steps": steps, "kwargs": DEMO_KWARGS}
    marker = root / "demo.json"
    try:
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if saved["identity"] == identity and all(p.exists() for p in (assets.weights, assets.calib, assets.val)):
            assets.accuracy = float(saved["accuracy"])
            return assets
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no marker, or an unreadable one: build afresh
    # An unfinished or different earlier run may have left images behind; stale files would mix into the folders.
    marker.unlink(missing_ok=True)
    for folder in (assets.calib, assets.val):
        shutil.rmtree(folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    assets.class_map.write_text("".join(f"{name}\n" for name in CLASSES), encoding="utf-8")
    drawing, saved = "drawing the calibration and validation shapes", 0
    total = N_CLASSES * (CALIB_PER_CLASS + VAL_PER_CLASS)
    for folder, split, per_class in ((assets.calib, 1, CALIB_PER_CLASS), (assets.val, 2, VAL_PER_CLASS)):
        for label, index, picture in _pictures(seed, split, per_class):
            report(drawing, saved, total)
            (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
            picture.save(folder / CLASSES[label] / f"{CLASSES[label]}_{split}_{index:04d}.png")
            saved += 1

    torch.manual_seed(seed)
    model = timm.create_model(DEMO_MODEL, pretrained=False, **DEMO_KWARGS)
    # JAX-style init (zero head, Xavier linears) leaves the plateau at chance after ~25-50 steps instead of ~150.
    model.init_weights("jax")
    # timm's eval preprocessing at the demo's size, resolved as `search.context.job_images` does for the service.
    config = timm.data.resolve_data_config({}, model=model) | {"input_size": (3, IMAGE_SIZE, IMAGE_SIZE)}
    # Training images go through the same timm eval transform the service applies to calib/val (an upscale and a
    # centre crop), so the model is accurate on the pixels the search will show it.
    transform = timm.data.create_transform(**config, is_training=False)
    pictures = _pictures(seed, 0, TRAIN_PER_CLASS)
    drawn = tqdm(pictures, total=N_CLASSES * TRAIN_PER_CLASS, desc="demo: drawing shapes", disable=not progress)
    examples = []
    for done, (label, _, picture) in enumerate(drawn):
        report("drawing the training shapes", done, N_CLASSES * TRAIN_PER_CLASS)
        examples.append((transform(picture), label))
    images, labels = zip(*examples, strict=True)
    seconds = _train(model, torch.stack(images), torch.tensor(labels), steps, seed, progress, report)

    report("checking the ViT on its validation shapes", 0, 1)
    model.eval()
    save_file(model.state_dict(), str(assets.weights), metadata={"demo": "generated shapes, not ImageNet"})
    val = load_image_folder(assets.val, config, class_map=assets.class_map)
    assets.accuracy = float((predict(model, val).argmax(1) == val.labels).float().mean() * 100)
    (root / "README.txt").write_text(
        f"vitprune demo: {DEMO_MODEL} {DEMO_KWARGS} trained on generated shapes ({', '.join(CLASSES)}), "
        f"not ImageNet. {steps} steps of 32 images in {seconds:.0f} s; top-1 on val: {assets.accuracy:.1f}%.\n",
        encoding="utf-8",
    )
    marker.write_text(json.dumps({"identity": identity, "accuracy": assets.accuracy}), encoding="utf-8")
    return assets


def demo_job(assets: DemoAssets, *, trials: int = 60) -> JobSpec:
    """The demo's search: tokens, heads and MLP channels of the demo ViT under 60% of its phone-CPU latency."""
    return JobSpec(
        model=DEMO_MODEL,
        model_kwargs=DEMO_KWARGS,
        weights=assets.weights,
        calib=assets.calib,
        val=assets.val,
        class_map=assets.class_map,
        device="mobile-cpu",
        batch=1,
        budget_ratio=0.6,
        # This small a model spends much of its phone-CPU time in fixed per-op costs, so DeiT's usual space scaled to
        # six blocks (tokens at 1/3/4, at most half the heads and channels gone) bottoms out at 58% of dense: no room
        # under 60%. Tokens at every other block down to a fifth, 2 of 6 heads and a quarter of the MLP channels
        # lower that floor to ~42%, and about a quarter of random configs then fit the budget. Top-k, named: 64 tokens
        # leave merging (the phone's measured default for DeiT-Tiny's 196) little to merge.
        space=SearchSpace(
            tokens="topk",
            token_blocks=(0, 2, 4),
            keep_min=0.2,
            heads=True,
            mlp=True,
            group=2,
            min_head_ratio=0.34,
            min_mlp_ratio=0.25,
        ),
        trials=trials,
    )


def _no_report(stage: str, done: int, total: int) -> None:
    pass


def _pictures(seed: int, split: int, per_class: int) -> Iterator[tuple[int, int, Image.Image]]:
    """(label, index, image) for every class; each image has its own seed, so the splits never share a picture."""
    for label, index in itertools.product(range(N_CLASSES), range(per_class)):
        yield label, index, Image.fromarray(_draw(label, np.random.default_rng([seed, split, label, index])))


def _draw(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 32x32 RGB picture of class `label`: a shape or texture in one colour on another, with noise. It is
    drawn at twice the size and averaged down, so edges are anti-aliased like a photographed object's."""
    y, x = (np.mgrid[0 : 2 * IMAGE_SIZE, 0 : 2 * IMAGE_SIZE] + 0.5) / 2.0  # coordinates in output pixels
    radius = rng.uniform(6, 10)
    # Shapes stay (nearly) inside the part of the picture that timm's eval transform keeps after its centre crop.
    cx, cy = rng.uniform(3 + radius, IMAGE_SIZE - 3 - radius, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    # Shape coordinates turn with the shape; textures turn only a little, so horizontal stays horizontal.
    turn = angle if label < 5 else rng.uniform(-0.25, 0.25)
    u = (x - cx) * math.cos(turn) + (y - cy) * math.sin(turn)
    v = -(x - cx) * math.sin(turn) + (y - cy) * math.cos(turn)
    dist = np.hypot(u, v)
    period = rng.uniform(4.0, 8.0)
    phase = rng.uniform(0, period)
    name = CLASSES[label]
    if name == "circle":
        mask = dist <= radius
    elif name == "square":
        mask = np.maximum(abs(u), abs(v)) <= radius * 0.85
    elif name == "triangle":  # equilateral, apex along v
        mask = (v <= radius * 0.5) & (math.sqrt(3) * u - v <= radius) & (-math.sqrt(3) * u - v <= radius)
    elif name == "ring":
        mask = (dist <= radius) & (dist >= radius * rng.uniform(0.45, 0.7))
    elif name == "cross":
        arm = radius * rng.uniform(0.2, 0.35)
        mask = ((abs(u) <= arm) & (abs(v) <= radius)) | ((abs(v) <= arm) & (abs(u) <= radius))
    elif name.startswith("stripes"):
        mask = ((v if name.endswith("horizontal") else u) + phase) % period < period / 2
    elif name == "checkerboard":
        mask = (np.floor((u + phase) / (period / 2)) + np.floor((v + phase) / (period / 2))) % 2 == 0
    elif name == "dots":
        mask = np.hypot((u + phase) % period - period / 2, (v + phase) % period - period / 2) <= period * 0.22
    else:  # gradient: a smooth ramp along a random direction
        mask = np.clip(((x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)) / (2 * radius) + 0.5, 0, 1)
    if label >= 5 and name != "gradient":
        # Textures cover a random rectangle of the picture, not always all of it.
        half_w, half_h = rng.uniform(8, 17, size=2)
        mask = mask & (abs(x - cx) <= half_w) & (abs(y - cy) <= half_h)
    background, foreground = rng.uniform(0, 255, size=(2, 3))
    while np.abs(background - foreground).sum() < 180:  # far enough apart that the shape is visible
        background, foreground = rng.uniform(0, 255, size=(2, 3))
    alpha = np.asarray(mask, dtype=np.float64)[..., None]
    canvas = alpha * foreground + (1 - alpha) * background
    canvas = canvas.reshape(IMAGE_SIZE, 2, IMAGE_SIZE, 2, 3).mean(axis=(1, 3))
    canvas += rng.normal(0, rng.uniform(4, 16), size=canvas.shape)
    return np.clip(canvas, 0, 255).round().astype(np.uint8)


def _train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int,
           progress: bool, report: Report = _no_report) -> float:  # fmt: skip
    """AdamW for `steps` batches with warm-up and cosine decay; returns the seconds it took."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=_LR, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start = time.monotonic()
    for step in tqdm(range(steps), desc="demo: training ViT", unit="step", disable=not progress):
        report("training the ViT", step, steps)
        share = step / steps
        for group in optimizer.param_groups:
            group["lr"] = _LR * min(1.0, share / 0.05) * 0.5 * (1 + math.cos(math.pi * share))
        # Small batches: on two cores, more updates per second beat less noisy ones.
        index = torch.randint(len(images), (32,), generator=generator)
        # Every class is symmetric under a left-right flip, so flipping every other batch is free extra data.
        batch = images[index].flip(3) if step % 2 else images[index]
        loss = F.cross_entropy(model(batch), labels[index], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.monotonic() - start
