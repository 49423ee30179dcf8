"""Budget-aware learned token thresholds (AS-ViT, SPViT): thresholds trained with the weights, then made hard.

While training, every threshold block keeps each patch token softly: with `r` the token's score over
the mean score of the tokens still alive (as `ThresholdReduction` normalises them), its keep weight
is `sigmoid((r - theta_j) / tau)`, multiplied into a running mask over the blocks (a token dropped at
block 3 stays dropped at block 6). Later attention adds `log(mask)` to its keys (the class token is
never masked), so a half-kept token gets half the attention it would get; every token still flows, no
token is dropped. The loss is the distillation loss from the dense teacher plus
`lambda x (T / budget - 1)^2`, where T is the latency of the expected kept counts (the sums of the
masks). Two-sided on purpose: under the budget it pulls the thresholds down again, so the model spends
the time it is allowed on accuracy.

Latency stays a black box of the caller (`Price`: ms of the whole model for per-block kept counts,
built from the target device's table; pruning/ knows no latency tables). It is made differentiable by
finite differences around the current expected counts `k0`: the table is interpolated piecewise
linearly, so `T(k) ~ T(k0) + sum_j dT/dk_j (k_j - k0_j)` is exact within a segment. A batch-1 device is
priced at the mean expected count over the batch; a device that runs batches of `device_batch` images
runs them padded to the longest image, so each group of that many training images is priced at a smooth
maximum (`smooth_max x logsumexp(k / smooth_max)`, at most `smooth_max x log(group)` tokens above the
true maximum) whose gradient reaches mostly the longest images, averaged over the groups.

At the end the model is made hard and physical: its config gets `ThresholdReduction(theta_j)` at the
threshold blocks and no package token (the soft masks do not model one, so the hard model does not use
one). The trained thresholds are then calibrated on training images (never validation images): one
common factor, found by bisection, scales them so the hard model's predicted latency, priced from the
realised (padded) token counts, meets the budget with as little to spare as the bisection resolves.
The starting thresholds are found the same way (one common threshold at the budget) unless given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm

from pruning.block import attention_heads, mlp_half
from pruning.config import PruneConfig
from pruning.data import ImageSet
from pruning.metrics import predict
from pruning.model import PrunedViT
from pruning.tokens import NoReduction, padded_widths, token_op
from pruning.training.augment import Augmenter
from pruning.training.loop import _batches, _holdout_kl, _num_classes, _split, cosine_schedule, distillation_loss
from pruning.training.thresholds_config import ThresholdConfig

__all__ = [
    "MIN_THRESHOLD",
    "Calibration",
    "LearnedThresholds",
    "Price",
    "SoftThresholdViT",
    "calibrate_thresholds",
    "differentiable_latency",
    "learn_thresholds",
    "threshold_config",
]

Price = Callable[[list[float]], float]
"""Kept patch tokens at each threshold block (the width the device runs at) -> ms of the whole model."""

MIN_THRESHOLD = 0.01
"""A learned threshold at or below 0 keeps every token; the hard op needs a positive one."""


@dataclass
class LearnedThresholds:
    """What learning the thresholds did, as metrics.json records it."""

    blocks: list[int]
    thresholds: list[float]
    """The hard model's thresholds (x mean score): the learned ones times `scale`."""
    learned: list[float]
    """The thresholds as training left them."""
    initial: list[float]
    scale: float
    """The calibration's common factor."""
    steps: int
    seconds: float
    train_images: int
    holdout_images: int
    holdout_kl_before: float | None
    holdout_kl: float | None
    """KL to the teacher on the held-out training images: the hard model at the starting thresholds with
    the original weights, and the final hard model."""
    predicted_ms: float
    """The hard model's latency, priced from its padded token counts on the calibration images."""
    budget_ms: float
    meets_budget: bool
    kept_tokens: list[float]
    """The widths `predicted_ms` was priced at (per threshold block)."""
    calibration_images: int
    device: str
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every `eval_every` steps: loss, distillation loss, soft latency, thresholds and expected counts."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the soft model ------------------------------------------------------------------------------------


class SoftThresholdViT(nn.Module):
    """A `PrunedViT` whose threshold blocks keep tokens softly, with the thresholds as parameters.

    After a forward pass, `last_masks` holds the running keep mask (B, patches) after each threshold block.
    """

    def __init__(self, model: PrunedViT, blocks: Sequence[int], init: Sequence[float], tau: float) -> None:
        super().__init__()
        if model.spec.family != "vit":
            raise ValueError(f"learned thresholds run on plain ViT/DeiT models; {model.spec.name} pools a token grid")
        if max(blocks) >= len(model.blocks):
            raise ValueError(f"threshold block {max(blocks)} does not exist: {model.spec.name} has {len(model.blocks)}")
        self.model = model
        self.at = {block: j for j, block in enumerate(blocks)}
        self.theta = nn.Parameter(torch.tensor([float(t) for t in init]))
        self.tau = tau
        self.last_masks: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        state = self.model.embed(images)
        B, prefix, n = state.x.shape[0], state.n_prefix, state.n_patch
        log_mask = state.x.new_zeros(B, n)  # in log space: log(sigmoid) stays finite where a mask is tiny
        masks = []
        for index, block in enumerate(self.model.blocks):
            bias = None
            if masks:
                bias = torch.cat([log_mask.new_zeros(B, prefix), log_mask], 1)[:, None, None, :]
            j = self.at.get(index)
            want = self.model.config.score if j is not None else None
            heads_out, scores = attention_heads(block.attn, block.norm1(state.x), bias, want)
            state = replace(state, x=state.x + block.ls1(block.attn.proj(heads_out)))
            if j is not None:
                log_mask = log_mask + self._log_keep(scores[:, prefix : prefix + n], log_mask.exp(), self.theta[j])
                masks.append(log_mask.exp())
            state = mlp_half(block, state)
        self.last_masks = masks
        if masks:  # an averaging head weighs each patch token by its mask
            state = replace(state, size=torch.cat([masks[-1].new_ones(B, prefix), masks[-1]], 1))
        return self.model.head(state)

    def _log_keep(self, scores: torch.Tensor, mask: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        # The mean over the tokens still alive, as the hard op takes it over the tokens left.
        mean = (scores * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1e-6)
        ratio = scores / mean.clamp(min=torch.finfo(scores.dtype).tiny)
        return F.logsigmoid((ratio - theta) / self.tau)


# -- latency -------------------------------------------------------------------------------------------


def differentiable_latency(
    masks: Sequence[torch.Tensor], price: Price, device_batch: int, n_patch: int, step: float, smooth: float
) -> torch.Tensor:
    """T(k0) + sum_j dT/dk_j (k_j - k0_j): the latency of the expected kept counts `k`, with the slopes
    of `price` by central finite differences of `step` tokens around `k0` (see the module doc)."""
    counts = torch.stack([m.sum(1) for m in masks], 1).double()  # (B, blocks)
    if device_batch <= 1:
        widths = counts.mean(0)
    else:  # padded batches: a smooth maximum over each group of device_batch images
        groups = counts.split(device_batch)
        widths = torch.stack([smooth * torch.logsumexp(g / smooth, 0) for g in groups]).mean(0)
        widths = widths.clamp(max=n_patch)
    k0 = widths.detach().tolist()
    slopes = []
    for j, k in enumerate(k0):
        low, high = max(1.0, k - step), min(float(n_patch), k + step)
        slopes.append((price(_with(k0, j, high)) - price(_with(k0, j, low))) / max(high - low, 1e-9))
    slope = torch.tensor(slopes, dtype=widths.dtype, device=widths.device)
    return price(k0) + (slope * (widths - widths.detach())).sum()


def _with(values: list[float], index: int, value: float) -> list[float]:
    return [value if i == index else v for i, v in enumerate(values)]


# -- the hard model and its calibration ----------------------------------------------------------------


def threshold_config(config: PruneConfig, blocks: Sequence[int], thresholds: Sequence[float]) -> PruneConfig:
    """`config` (heads and MLP kept as they are) with `ThresholdReduction` at `blocks` and no other token
    op, and no package token."""
    at = dict(zip(blocks, thresholds, strict=True))
    threshold = token_op("threshold")
    new = tuple(
        b.model_copy(update={"tokens": threshold(threshold=max(MIN_THRESHOLD, at[i])) if i in at else NoReduction()})
        for i, b in enumerate(config.blocks)
    )
    return config.model_copy(update={"blocks": new, "package_token": False})


@dataclass
class Calibration:
    scale: float
    ms: float
    widths: list[float]
    meets_budget: bool


def calibrate_thresholds(
    model: PrunedViT,
    base: Sequence[float],
    blocks: Sequence[int],
    images: ImageSet,
    price: Price,
    budget_ms: float,
    *,
    device_batch: int = 1,
    steps: int = 12,
) -> Calibration:
    """The smallest common factor `s` for which `model` with thresholds `s x base` at `blocks` meets
    `budget_ms`, priced from the padded counts the hard model realises on `images`; bisection over `s`
    (latency falls as the thresholds rise). Leaves `model.config` at the thresholds found. Where even
    the largest factor tried misses the budget, that one is returned with `meets_budget=False`."""
    base = [max(MIN_THRESHOLD, b) for b in base]
    device = next(model.parameters()).device
    model.eval()
    first = min(blocks)
    with torch.inference_mode():  # the blocks before the first threshold do not depend on it: run them once
        prefixes = [model.run_blocks(model.embed(x.to(device)), 0, first) for x, _ in images.batches(64)]

    def measure(scale: float) -> tuple[float, list[float]]:
        model.config = threshold_config(model.config, blocks, [scale * b for b in base])
        with torch.inference_mode():
            counts = torch.cat([torch.stack(model.run_blocks(s, first).counts, 1) for s in prefixes]).cpu()
        widths = padded_widths(counts, device_batch)
        return price(widths), widths

    low, high = 0.0, 1.0
    ms, widths = measure(high)
    while ms > budget_ms and high < 2**10:
        low, high = high, high * 2
        ms, widths = measure(high)
    best = Calibration(high, ms, widths, ms <= budget_ms)
    if best.meets_budget:
        for _ in range(steps):
            middle = (low + high) / 2
            ms, widths = measure(middle)
            if ms <= budget_ms:
                high, best = middle, Calibration(middle, ms, widths, True)
            else:
                low = middle
    model.config = threshold_config(model.config, blocks, [best.scale * b for b in base])
    return best


# -- training ------------------------------------------------------------------------------------------


def learn_thresholds(
    student: PrunedViT,
    teacher: nn.Module,
    images: ImageSet,
    config: ThresholdConfig,
    price: Price,
    budget_ms: float,
    *,
    device_batch: int = 1,
    device: torch.device | None = None,
    progress: bool = True,
) -> LearnedThresholds:
    """Train `student`'s weights and thresholds at `config.blocks` together (soft masks, distillation from
    `teacher` plus the latency term), then make it hard and calibrate it to `budget_ms` on the training
    images; `student` ends physically pruned, with `ThresholdReduction` at those blocks. See the module doc.

    `price`: ms on the target device for the kept counts at each threshold block, for batches of
    `device_batch` images (the caller builds it from the device's table). `images`: training images
    only; `config.recipe.holdout` of them are held out for the KL before and after.
    """
    device = device or torch.device("cpu")
    recipe = config.recipe
    start = time.perf_counter()
    blocks = list(config.blocks)
    train, held = _split(images, recipe)
    if len(train) < recipe.batch_size:
        raise ValueError(
            f"{len(train)} training images cannot fill a batch of {recipe.batch_size}; use more images or a"
            " smaller batch_size"
        )
    teacher = teacher.to(device).eval()
    student.to(device)
    reference = predict(teacher, held, batch_size=64) if held is not None else None
    calibration_set = _spread(train, config.calibration_images)

    def calibrate(base: Sequence[float]) -> Calibration:
        return calibrate_thresholds(
            student,
            base,
            blocks,
            calibration_set,
            price,
            budget_ms,
            device_batch=device_batch,
            steps=config.calibration_steps,
        )

    student.config = threshold_config(student.config, blocks, [1.0] * len(blocks))
    SoftThresholdViT(student, blocks, [1.0] * len(blocks), config.tau)  # refuses models it cannot train early
    initial = [config.init] * len(blocks) if config.init else [calibrate([1.0] * len(blocks)).scale] * len(blocks)
    student.config = threshold_config(student.config, blocks, initial)
    kl_before = _holdout_kl(student, held, reference)

    soft = SoftThresholdViT(student, blocks, initial, config.tau)
    groups = param_groups_weight_decay(student, recipe.weight_decay)
    groups.append({"params": [soft.theta], "lr": config.threshold_lr, "weight_decay": 0.0})
    optimizer = create_optimizer_v2(groups, "adamw", lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = cosine_schedule(optimizer, recipe)
    ema = ModelEmaV3(soft, decay=recipe.ema, use_warmup=True) if recipe.ema else None
    augment = Augmenter(recipe, images.mean, images.std, images.images.shape[-1], _num_classes(teacher))
    batches = _batches(len(train), recipe.batch_size, recipe.seed, 0)
    n_patch = student.spec.blocks[0].tokens_in
    history: list[dict[str, Any]] = []
    sums = {"loss": 0.0, "kd": 0.0, "ms": 0.0}
    bar = tqdm(total=recipe.steps, desc="learn thresholds", unit="step", disable=not progress)
    soft.train()
    for step in range(1, recipe.steps + 1):
        index = next(batches)
        x, targets = augment(train.images[index], None if train.labels is None else train.labels[index])
        x = x.to(device)
        with torch.no_grad():
            teacher_logits = teacher(x)
        logits = soft(x)
        kd = distillation_loss(
            logits,
            teacher_logits,
            recipe.temperature,
            None if targets is None else targets.to(device),
            recipe.label_weight,
        )
        ms = differentiable_latency(soft.last_masks, price, device_batch, n_patch, config.fd_step, config.smooth_max)
        loss = kd + config.latency_weight * (ms / budget_ms - 1) ** 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip:  # the weights' gradient only: the thresholds' is another scale
            nn.utils.clip_grad_norm_(student.parameters(), recipe.grad_clip)
        optimizer.step()
        scheduler.step_update(step)
        if ema is not None:
            ema.update(soft, step=step)
        for key, value in (("loss", loss), ("kd", kd), ("ms", ms)):
            sums[key] += float(value.item())
        bar.update(1)
        if step % recipe.eval_every == 0 or step == recipe.steps:
            done = step - (history[-1]["step"] if history else 0)
            entry = {"step": step, **{k: round(v / done, 6) for k, v in sums.items()}}
            entry |= {
                "thresholds": [round(t, 4) for t in soft.theta.tolist()],
                "expected_tokens": [round(float(m.detach().sum(1).mean()), 1) for m in soft.last_masks],
            }
            history.append(entry)
            sums = dict.fromkeys(sums, 0.0)
            bar.set_postfix(kd=f"{entry['kd']:.4f}", ms=f"{entry['ms']:.2f}")
    bar.close()

    final = ema.module if ema is not None else soft
    learned = final.theta.detach().cpu().tolist()
    if ema is not None:
        student.load_state_dict(ema.module.model.state_dict())
    calibration = calibrate(learned)
    student.eval()
    return LearnedThresholds(
        blocks=blocks,
        thresholds=[round(student.config.blocks[b].tokens.threshold, 6) for b in blocks],
        learned=[round(t, 6) for t in learned],
        initial=[round(t, 6) for t in initial],
        scale=round(calibration.scale, 6),
        steps=recipe.steps,
        seconds=round(time.perf_counter() - start, 1),
        train_images=len(train),
        holdout_images=0 if held is None else len(held),
        holdout_kl_before=kl_before,
        holdout_kl=_holdout_kl(student, held, reference),
        predicted_ms=round(calibration.ms, 4),
        budget_ms=round(budget_ms, 4),
        meets_budget=calibration.meets_budget,
        kept_tokens=[round(w, 2) for w in calibration.widths],
        calibration_images=len(calibration_set),
        device=str(device),
        config=config.model_dump(mode="json"),
        history=history,
    )


def _spread(images: ImageSet, limit: int) -> ImageSet:
    """At most `limit` images, evenly spread over the (class-ordered) set."""
    if len(images) <= limit:
        return images
    return images.subset([i * len(images) // limit for i in range(limit)])
