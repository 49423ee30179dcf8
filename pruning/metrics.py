"""Accuracy and fidelity metrics for (pruned) classifiers.

Besides top-1/top-5 against labels, a pruned model is compared with the dense reference model:
top-1 agreement and KL(reference || model) measure how faithfully it reproduces the original, which
is informative even on a few hundred images where label accuracy is too noisy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pruning.data import ImageSet

__all__ = ["EvalResult", "classification_metrics", "evaluate", "paired_top1_loss", "per_image_kl", "predict"]


@dataclass
class EvalResult:
    """Metrics in percent (top1, top5, agreement) and nats (kl); None where the input was not given.

    Each `_se` is the standard error of its metric over the images (the spread of the per-image
    values / sqrt(n)): on 500 images one top-1 standard error is about 2 points, so two models
    closer than that are not told apart."""

    n_images: int
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    kl: float | None = None
    top1_se: float | None = None
    agreement_se: float | None = None
    kl_se: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def predict(model: torch.nn.Module, images: ImageSet, *, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Float32 CPU logits (N, classes) of `model` in eval mode; the model's previous mode is restored."""
    device = _model_device(model)
    was_training = model.training
    model.eval()
    outputs: list[torch.Tensor] = []
    total = (len(images) + batch_size - 1) // batch_size
    try:
        with torch.inference_mode():
            batches = images.batches(batch_size)
            for inputs, _ in tqdm(batches, total=total, disable=not progress, desc="predict", unit="batch"):
                outputs.append(model(inputs.to(device)).float().cpu())
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("cannot predict on an empty image set")
    return torch.cat(outputs)


def _percent(hits: torch.Tensor) -> float:
    return float(hits.to(torch.float64).mean().item() * 100.0)


def _standard_error(values: torch.Tensor, scale: float = 1.0) -> float:
    """Standard error of the mean of per-image `values` (0 for a single image)."""
    values = values.to(torch.float64)
    if len(values) < 2:
        return 0.0
    return float(values.std().item() / len(values) ** 0.5 * scale)


def classification_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    reference_logits: torch.Tensor | None = None,
) -> EvalResult:
    """Top-1/top-5 accuracy against `labels` and agreement/KL against `reference_logits`."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty (N, classes) tensor, got shape {tuple(logits.shape)}")
    n = int(logits.shape[0])
    result = EvalResult(n_images=n)
    if labels is not None:
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        labels = labels.to(logits.device, torch.long)
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        result.top1 = _percent(topk[:, 0] == labels)
        result.top1_se = _standard_error(topk[:, 0] == labels, 100.0)
        result.top5 = _percent((topk == labels[:, None]).any(dim=1))
    if reference_logits is not None:
        if reference_logits.shape != logits.shape:
            raise ValueError(
                f"reference logits shape {tuple(reference_logits.shape)} "
                f"does not match logits shape {tuple(logits.shape)}"
            )
        reference = reference_logits.to(logits.device)
        agrees = logits.argmax(dim=1) == reference.argmax(dim=1)
        result.agreement, result.agreement_se = _percent(agrees), _standard_error(agrees, 100.0)
        per_image = per_image_kl(logits, reference)
        result.kl, result.kl_se = float(per_image.mean().item()), _standard_error(per_image)
    return result


def paired_top1_loss(logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(top-1 points the model loses against the reference model, its standard error). Both are scored on
    the same images, so the error is that of the per-image difference: only the images whose verdict
    changed count, and it is far smaller than either model's own top-1 error."""
    labels = labels.to(logits.device, torch.long)
    change = (reference_logits.to(logits.device).argmax(1) == labels).double() - (logits.argmax(1) == labels).double()
    return float(change.mean().item() * 100.0), _standard_error(change, 100.0)


def per_image_kl(logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(reference) || softmax(logits)) of each image, in nats (float64)."""
    # float64 log-softmax: exact zero for identical logits and no cancellation for near-equal ones.
    log_p = F.log_softmax(reference_logits.to(logits.device, torch.float64), dim=1)
    log_q = F.log_softmax(logits.to(torch.float64), dim=1)
    terms = log_p.exp() * (log_p - log_q)
    # Classes the reference gives probability 0 contribute 0 (the limit), not 0 * inf = nan.
    return torch.where(torch.isneginf(log_p), torch.zeros_like(terms), terms).sum(dim=1)


def evaluate(
    model: torch.nn.Module,
    images: ImageSet,
    *,
    reference_logits: torch.Tensor | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[EvalResult, torch.Tensor]:
    """Metrics of `model` on `images` and its logits (keep them as the reference for pruned models)."""
    logits = predict(model, images, batch_size=batch_size, progress=progress)
    return classification_metrics(logits, images.labels, reference_logits), logits
