"""Fine-tuning a pruned model by distillation from its dense teacher: the training hot path.

`fine_tune` trains a `PrunedViT` in place on an `ImageSet` (see `FineTuneConfig` for the recipe)
and returns what happened. The physically pruned model is what trains: the tokens, heads and
channels it lacks are absent in training as at inference, so what is learned is what runs.

A share of the images is held out: every `eval_every` steps the (EMA) model's KL to the teacher on
it is checked, the best weights are kept, and training stops after `patience` checks without
improvement; the model ends with its best weights. With a `checkpoint` directory the whole state
(weights, EMA, optimiser, step, best so far) is saved at every check and a run started again with
the same directory resumes from it. Checkpoints hold tensors and numbers only and are read with
`weights_only=True`: nothing is unpickled.

Several processes (torchrun, `torch.distributed` initialised by the caller) train one model with
DistributedDataParallel: each draws its own share of every batch's images, and rank 0 checks,
saves and decides when to stop.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm

from pruning.data import ImageSet
from pruning.metrics import classification_metrics, predict
from pruning.model import PrunedViT
from pruning.training.augment import Augmenter
from pruning.training.config import FineTuneConfig

__all__ = ["CHECKPOINT_FILE", "ClassifierInputs", "FineTuneResult", "cosine_schedule", "distillation_loss", "fine_tune"]

CHECKPOINT_FILE = "fine_tune.pt"
MIN_HOLDOUT = 8
"""Fewer held-out images than this check nothing: training then runs all its steps."""


@dataclass
class FineTuneResult:
    """What a fine-tuning run did, as the model card and metrics.json record it."""

    steps: int
    """Optimiser steps taken (all runs of a resumed training together)."""
    best_step: int
    """The step whose weights the model ends with (0: training never beat the pruned model)."""
    stopped_early: bool
    train_images: int
    holdout_images: int
    holdout_kl_before: float | None
    holdout_kl: float | None
    """KL to the teacher on the held-out images, before and with the final weights."""
    seconds: float
    device: str
    processes: int
    config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    """One entry per check: step, learning rate, mean training loss since the last check, held-out KL."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    targets: torch.Tensor | None = None,
    label_weight: float = 0.0,
) -> torch.Tensor:
    """KL(teacher || student) at `temperature` (scaled by T² so gradients keep their size), mixed with
    soft-target cross-entropy on `targets` by `label_weight`."""
    t = temperature
    kd = (
        F.kl_div(
            F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean", log_target=True
        )
        * t
        * t
    )
    if targets is None or label_weight == 0:
        return kd
    ce = torch.sum(-targets * F.log_softmax(student, dim=1), dim=1).mean()
    return (1 - label_weight) * kd + label_weight * ce


def fine_tune(
    student: PrunedViT,
    teacher: nn.Module,
    images: ImageSet,
    config: FineTuneConfig,
    *,
    device: torch.device | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
) -> FineTuneResult:
    """Train `student` (in place) to match `teacher` on augmented views of `images`; see the module doc."""
    device = device or torch.device("cpu")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    start = time.perf_counter()
    train, held = _split(images, config)
    if len(train) < config.batch_size * world:
        raise ValueError(
            f"{len(train)} training images cannot fill a batch of {config.batch_size} per process "
            f"({world} process(es)); use more images or a smaller batch_size"
        )
    teacher = teacher.to(device).eval()
    student.to(device)
    reference = predict(teacher, held, batch_size=64) if held is not None else None
    kl_before = _holdout_kl(student, held, reference)

    optimizer = create_optimizer_v2(student, "adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler = cosine_schedule(optimizer, config)
    # The average's decay ramps up with the steps (timm's warm-up): a short run is not dominated by the
    # pruned model's starting weights.
    ema = ModelEmaV3(student, decay=config.ema, use_warmup=True) if config.ema else None
    state = _State(best=_weights(student), best_kl=kl_before)
    if checkpoint is not None:
        state = _resume(checkpoint / CHECKPOINT_FILE, student, ema, optimizer, state)
        scheduler.step_update(state.step)
    trained = nn.parallel.DistributedDataParallel(student) if world > 1 else student
    num_classes = int(reference.shape[1]) if reference is not None else _num_classes(teacher)
    # Each process, and a resumed run, draws views of its own.
    views = config.model_copy(update={"seed": (config.seed + 7919 * rank + state.step) % 2**32})
    augment = Augmenter(views, images.mean, images.std, images.images.shape[-1], num_classes)
    batches = _batches(len(train), config.batch_size * world, config.seed, state.step)

    features = ClassifierInputs(student.model, teacher) if config.feature_weight else None
    bar = tqdm(total=config.steps, initial=state.step, desc="fine-tune", unit="step", disable=not progress or rank != 0)
    losses: list[float] = []
    student.train()
    while state.step < config.steps and not state.stopped:
        index = next(batches)[rank::world]
        x, targets = augment(train.images[index], None if train.labels is None else train.labels[index])
        x = x.to(device)
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = distillation_loss(
            trained(x),
            teacher_logits,
            config.temperature,
            None if targets is None else targets.to(device),
            config.label_weight,
        )
        if features is not None:
            loss = loss + config.feature_weight * features.distance()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
        optimizer.step()
        state.step += 1
        scheduler.step_update(state.step)
        if ema is not None:
            ema.update(student, step=state.step)
        losses.append(float(loss.item()))
        bar.update(1)
        if state.step % config.eval_every == 0 or state.step == config.steps:
            _check(state, student, ema, held, reference, config, optimizer, losses, rank, world)
            losses = []
            if checkpoint is not None and rank == 0:
                elapsed = state.seconds_before + time.perf_counter() - start
                _save(checkpoint / CHECKPOINT_FILE, student, ema, optimizer, state, elapsed)
            bar.set_postfix(
                loss=f"{state.history[-1]['loss']:.4f}", holdout_kl=_fmt(state.history[-1].get("holdout_kl"))
            )
            student.train()
    bar.close()
    if features is not None:
        features.close()

    if world > 1:  # rank 0 chose the best weights: every process ends with them
        for tensor in state.best.values():
            dist.broadcast(tensor, src=0)
    student.load_state_dict(state.best)
    student.eval()
    return FineTuneResult(
        steps=state.step,
        best_step=state.best_step,
        stopped_early=state.stopped,
        train_images=len(train),
        holdout_images=0 if held is None else len(held),
        holdout_kl_before=kl_before,
        holdout_kl=_holdout_kl(student, held, reference),
        seconds=round(time.perf_counter() - start + state.seconds_before, 1),
        device=str(device),
        processes=world,
        config=config.model_dump(mode="json"),
        history=state.history,
    )


class ClassifierInputs:
    """What the student's and the teacher's classifiers (timm's `head`) read at each forward pass: the
    class token, or the pooled tokens, after the final norm. These align whatever tokens the student
    dropped or merged (its other tokens do not), so they are the token features distillation can match."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.hooks = []
        for name, model in (("student", student), ("teacher", teacher)):
            head = getattr(model, "head", None)
            if not isinstance(head, nn.Module):
                raise ValueError(f"feature distillation needs a timm model with a `head` classifier ({name})")
            self.hooks.append(head.register_forward_pre_hook(lambda _, args, name=name: self._keep(name, args[0])))

    def _keep(self, name: str, value: torch.Tensor) -> None:
        self.inputs[name] = value

    def distance(self) -> torch.Tensor:
        """Mean cosine distance of the last forward passes' features (0: the same direction)."""
        return 1 - F.cosine_similarity(self.inputs["student"], self.inputs["teacher"].detach(), dim=-1).mean()

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def cosine_schedule(optimizer: torch.optim.Optimizer, config: FineTuneConfig) -> CosineLRScheduler:
    """The recipe's warm-up and cosine decay over `config.steps`, stepped per optimiser step; every
    parameter group warms up to its own rate."""
    return CosineLRScheduler(
        optimizer,
        t_initial=config.steps,
        warmup_t=int(config.warmup * config.steps),
        warmup_lr_init=config.lr * 0.01,
        lr_min=config.lr * 0.01,
        t_in_epochs=False,
    )


@dataclass
class _State:
    """What a checkpoint saves besides the weights and the optimiser."""

    best: dict[str, torch.Tensor]
    best_kl: float | None
    best_step: int = 0
    step: int = 0
    bad_checks: int = 0
    stopped: bool = False
    seconds_before: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def _split(images: ImageSet, config: FineTuneConfig) -> tuple[ImageSet, ImageSet | None]:
    """(training images, held-out images or None): the held-out share by a seeded draw."""
    held_count = round(config.holdout * len(images))
    if held_count < MIN_HOLDOUT:
        return images, None
    held, train = images.split(config.holdout, seed=config.seed)
    return train, held


def _num_classes(model: nn.Module) -> int:
    return int(getattr(model, "num_classes", 0) or 1000)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _holdout_kl(model: nn.Module, held: ImageSet | None, reference: torch.Tensor | None) -> float | None:
    if held is None:
        return None
    return round(classification_metrics(predict(model, held, batch_size=64), None, reference).kl, 6)


def _batches(count: int, size: int, seed: int, skip: int):
    """Index batches of `size` over `count` images, reshuffled every epoch; the first `skip` are passed
    over, so a resumed run continues the same sequence."""
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while True:
        order = torch.randperm(count, generator=generator)
        for begin in range(0, count - size + 1, size):  # a last, short batch is dropped: batches stay equal
            if done >= skip:
                yield order[begin : begin + size]
            done += 1


def _check(
    state: _State,
    student: PrunedViT,
    ema: ModelEmaV3 | None,
    held: ImageSet | None,
    reference: torch.Tensor | None,
    config: FineTuneConfig,
    optimizer: torch.optim.Optimizer,
    losses: list[float],
    rank: int,
    world: int,
) -> None:
    """Score the model on the held-out images, keep its weights if they are the best, decide to stop."""
    final = ema.module if ema is not None else student
    entry = {"step": state.step, "lr": optimizer.param_groups[0]["lr"], "loss": sum(losses) / max(1, len(losses))}
    stop = torch.zeros(1)
    if rank == 0:
        kl = _holdout_kl(final, held, reference)
        entry["holdout_kl"] = kl
        if kl is None or state.best_kl is None or kl < state.best_kl:
            state.best, state.best_kl, state.best_step, state.bad_checks = _weights(final), kl, state.step, 0
        else:
            state.bad_checks += 1
        stop[0] = float(state.bad_checks >= config.patience)
    if world > 1:  # every process stops together, and takes the same best weights
        dist.broadcast(stop, src=0)
    state.stopped = bool(stop.item())
    state.history.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in entry.items()})


def _save(path: Path, student: PrunedViT, ema: ModelEmaV3 | None, optimizer, state: _State, elapsed: float) -> None:
    """`elapsed`: seconds trained so far, earlier runs of a resumed training included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "student": student.state_dict(),
        "ema": ema.module.state_dict() if ema is not None else {},
        "optimizer": optimizer.state_dict(),
        "best": state.best,
        # Not asdict(state): it would deep-copy every tensor of `best` only to drop them.
        "numbers": json.dumps(
            {f.name: getattr(state, f.name) for f in fields(state) if f.name != "best"} | {"seconds_before": elapsed}
        ),
    }
    partial = path.with_suffix(".partial")
    torch.save(payload, partial)
    partial.replace(path)  # an interrupted save never leaves a half checkpoint under the real name


def _resume(path: Path, student: PrunedViT, ema: ModelEmaV3 | None, optimizer, state: _State) -> _State:
    if not path.exists():
        return state
    payload = torch.load(path, map_location="cpu", weights_only=True)  # tensors and numbers: nothing unpickled
    student.load_state_dict(payload["student"])
    if ema is not None and payload["ema"]:
        ema.module.load_state_dict(payload["ema"])
    optimizer.load_state_dict(payload["optimizer"])
    numbers = json.loads(payload["numbers"])
    return _State(best=payload["best"], **numbers)


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"
