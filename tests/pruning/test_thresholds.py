"""Budget-aware learned thresholds (pruning.training.thresholds) on the real DeiT-Tiny and real images:
the soft model is the dense one when nothing is masked, gradients reach the thresholds, the latency
term alone pushes them the way the budget asks, the calibration meets a real device's budget, and
training ends with a physically pruned model."""

from __future__ import annotations

import pytest
import torch

from latency_models.registry import Registry
from pruning import PruneConfig, describe, prune_model
from pruning.data import load_image_folder
from pruning.image_sets import eval_data_config
from pruning.loading import create_model
from pruning.model import PrunedViT
from pruning.tokens import padded_widths
from pruning.training import FineTuneConfig, distillation_loss
from pruning.training.thresholds import (
    SoftThresholdViT,
    calibrate_thresholds,
    differentiable_latency,
    learn_thresholds,
    threshold_config,
)
from pruning.training.thresholds_config import ThresholdConfig

NAME = "deit_tiny_patch16_224"
BLOCKS = (3, 6, 9)
PATCHES = 196


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dense(deit_tiny_weights) -> torch.nn.Module:
    return create_model(NAME, weights=deit_tiny_weights).eval()


@pytest.fixture(scope="module")
def images(dense, imagenet_dir, class_map):
    return load_image_folder(imagenet_dir, eval_data_config(dense), class_map=class_map, max_images=24)


@pytest.fixture(scope="module")
def mobile(dense):
    """The mobile-cpu table's price of the threshold structure at batch 1, and the dense model's latency."""
    spec = describe(dense, NAME)
    predictor = Registry().predictor("mobile-cpu", spec, [1], progress=False)
    priced = threshold_config(PruneConfig.dense(spec), BLOCKS, [1.0] * len(BLOCKS))

    def price(kept: list[float]) -> float:
        return predictor.predict(priced, spec, 1, kept_tokens=kept).ms

    return price, predictor.predict(PruneConfig.dense(spec), spec, 1).ms


def _student(dense) -> PrunedViT:
    return prune_model(dense, PruneConfig.dense(describe(dense, NAME)), name=NAME)


def _batch(images, n: int = 4) -> torch.Tensor:
    return next(images.batches(n))[0]


def _expected(soft: SoftThresholdViT) -> list[float]:
    return [float(m.detach().sum(1).mean()) for m in soft.last_masks]


def test_with_thresholds_below_every_score_the_soft_model_is_the_dense_model(dense, images):
    soft = SoftThresholdViT(_student(dense), BLOCKS, [-1.0] * 3, tau=0.1).eval()
    x = _batch(images)
    with torch.no_grad():
        logits = soft(x)
        reference = dense(x)
    assert torch.allclose(logits, reference, atol=1e-4)
    assert all(m.min() > 0.999 for m in soft.last_masks)


def test_gradients_reach_the_thresholds_and_higher_thresholds_keep_fewer_tokens(dense, images):
    soft = SoftThresholdViT(_student(dense), BLOCKS, [0.5] * 3, tau=0.1)
    x = _batch(images)
    with torch.no_grad():
        teacher = dense(x)
    distillation_loss(soft(x), teacher).backward()
    assert soft.theta.grad is not None and torch.isfinite(soft.theta.grad).all() and soft.theta.grad.abs().min() > 0
    low = _expected(soft)
    assert low[0] > low[1] > low[2]  # a running mask: a token dropped early stays dropped
    with torch.no_grad():
        soft.theta.fill_(1.0)
        soft(x)
    assert all(h < k for h, k in zip(_expected(soft), low, strict=True))


def test_the_latency_term_alone_moves_the_thresholds_towards_the_budget(dense, images, mobile):
    price, _ = mobile
    x = _batch(images)
    for share, direction in ((0.7, +1), (1.3, -1)):  # over the budget: raise them; under: lower them
        soft = SoftThresholdViT(_student(dense), BLOCKS, [0.5] * 3, tau=0.1)
        soft(x)
        ms = differentiable_latency(soft.last_masks, price, 1, PATCHES, step=4.0, smooth=2.0)
        assert ms.item() == pytest.approx(price(_expected(soft)), rel=1e-6)  # the value is the table's
        budget = share * ms.item()
        ((ms / budget - 1) ** 2).backward()
        assert (torch.sign(-soft.theta.grad) == direction).all()
        before = _expected(soft)
        with torch.no_grad():
            soft.theta -= 0.2 * soft.theta.grad.sign()
            soft(x)
        after = _expected(soft)
        assert all((a - b) * direction < 0 for a, b in zip(after, before, strict=True))


def test_the_latency_slope_is_the_prices_and_a_batch_is_priced_at_its_longest_image():
    # A linear price: the term's gradient on each kept token is exactly its slope (per image at batch 1).
    slopes = [0.05, 0.03, 0.01]

    def price(kept: list[float]) -> float:
        return 2.0 + sum(s * k for s, k in zip(slopes, kept, strict=True))

    masks = [torch.rand(4, PATCHES, dtype=torch.float64, requires_grad=True) for _ in slopes]
    differentiable_latency(masks, price, 1, PATCHES, step=4.0, smooth=2.0).backward()
    for mask, slope in zip(masks, slopes, strict=True):
        assert torch.allclose(mask.grad, torch.full_like(mask, slope / 4))
    # A device batch of 4: a smooth maximum of the four counts; the longest image takes most of the slope.
    masks = [torch.zeros(4, PATCHES, dtype=torch.float64) for _ in slopes]
    for mask in masks:
        mask[:, :100] = 1.0
        mask[2, 100:120] = 1.0  # image 2 keeps 20 more tokens
        mask.requires_grad_(True)
    ms = differentiable_latency(masks, price, 4, PATCHES, step=4.0, smooth=2.0)
    widths = [120.0] * 3
    assert price(widths) <= ms.item() <= price([w + 2.0 * torch.log(torch.tensor(4.0)).item() for w in widths])
    ms.backward()
    assert masks[0].grad[2, 0] > 0.99 * slopes[0] and masks[0].grad[0, 0] < 0.01 * slopes[0]


def test_the_calibration_meets_a_real_devices_budget_closely(dense, images, mobile):
    price, dense_ms = mobile
    student = _student(dense)
    student.config = threshold_config(student.config, BLOCKS, [1.0] * 3)
    budget = 0.7 * dense_ms
    found = calibrate_thresholds(student, [1.0, 0.8, 0.6], BLOCKS, images, price, budget, steps=10)
    assert found.meets_budget and budget * 0.97 <= found.ms <= budget
    thresholds = [student.config.blocks[b].tokens.threshold for b in BLOCKS]
    assert thresholds == pytest.approx([found.scale, found.scale * 0.8, found.scale * 0.6])
    # The price is of what the hard model really keeps on these images.
    counts = []
    with torch.inference_mode():
        for x, _ in images.batches(8):
            student(x)
            counts.append(torch.stack(student.last_token_counts, 1))
    assert price(padded_widths(torch.cat(counts), 1)) == pytest.approx(found.ms)
    assert not calibrate_thresholds(student, [1.0] * 3, BLOCKS, images, price, 0.05 * dense_ms, steps=2).meets_budget


def test_learning_ends_with_a_physically_pruned_model_that_meets_the_budget(dense, images, mobile):
    price, dense_ms = mobile
    student = _student(dense)
    recipe = FineTuneConfig(steps=2, batch_size=4, eval_every=1, holdout=0.34, ema=None)
    config = ThresholdConfig(recipe=recipe, calibration_images=8, calibration_steps=8)
    result = learn_thresholds(student, dense, images, config, price, 0.7 * dense_ms, progress=False)
    assert result.meets_budget and result.predicted_ms <= result.budget_ms
    assert result.steps == 2 and len(result.history) == 2 and result.holdout_images == 8
    assert result.holdout_kl_before > 0 and result.holdout_kl > 0
    assert result.learned != result.initial  # the thresholds trained
    assert isinstance(student, PrunedViT) and not student.config.package_token
    assert [b.tokens.kind for b in student.config.blocks if b.reduces_tokens] == ["threshold"] * 3
    assert [student.config.blocks[b].tokens.threshold for b in BLOCKS] == pytest.approx(result.thresholds)
    widths = []
    hook = student.blocks[10].norm1.register_forward_pre_hook(lambda _, inputs: widths.append(inputs[0].shape[1]))
    try:
        with torch.inference_mode():
            student(_batch(images, 1))
    finally:
        hook.remove()
    assert student.last_token_counts[-1].item() < PATCHES
    assert widths == [1 + student.last_token_counts[-1].item()]  # tokens physically gone, class token kept
