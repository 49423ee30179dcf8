"""Tests for pruning.metrics: hand-computed metric values, predict/evaluate, and real DeiT-Tiny accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.data import resolve_data_config

from pruning.data import ImageSet, load_image_folder
from pruning.metrics import EvalResult, classification_metrics, evaluate, paired_top1_loss, predict

# Four images, six classes. Rankings per row (best first): 0 1 2 3 4 5 / 5 4 3 2 1 0 / 2 ... / 3 ...
LOGITS = torch.tensor(
    [
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [0.0, 0.0, 9.0, 0.0, 0.0, 0.0],
        [1.0, 2.0, 3.0, 9.0, 5.0, 4.0],
    ]
)


def test_top1_top5_by_hand() -> None:
    # Row 0: label 0 is top-1. Row 1: label 1 is 5th. Row 2: label 2 is top-1. Row 3: label 0 is 6th.
    result = classification_metrics(LOGITS, torch.tensor([0, 1, 2, 0]))
    assert result.n_images == 4
    assert result.top1 == pytest.approx(50.0)
    assert result.top5 == pytest.approx(75.0)
    assert result.agreement is None and result.kl is None


def test_top5_with_fewer_than_five_classes() -> None:
    result = classification_metrics(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([0]))
    assert (result.top1, result.top5) == (0.0, 100.0)


def test_agreement_by_hand() -> None:
    reference = LOGITS.clone()
    reference[3] = torch.tensor([9.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # top-1 moves from 3 to 0
    result = classification_metrics(LOGITS, reference_logits=reference)
    assert result.agreement == pytest.approx(75.0)
    assert result.top1 is None and result.top5 is None


def test_kl_by_hand() -> None:
    # Reference p = (3/4, 1/4); model q = (1/2, 1/2) on image 0 and q = p on image 1.
    reference = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0) + 7.0, 7.0]])
    expected_first = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    result = classification_metrics(logits, reference_logits=reference)
    assert result.kl == pytest.approx(expected_first / 2, rel=1e-6)
    assert result.agreement == pytest.approx(100.0)


def test_kl_zero_for_identical_and_positive_otherwise() -> None:
    same = classification_metrics(LOGITS, reference_logits=LOGITS.clone())
    assert same.kl == 0.0
    assert same.agreement == 100.0
    other = classification_metrics(LOGITS, reference_logits=LOGITS.flip(1))
    assert other.kl is not None and other.kl > 0.0


def test_kl_is_finite_when_reference_underflows() -> None:
    reference = torch.tensor([[0.0, -1e5]])
    assert math.isfinite(classification_metrics(torch.zeros(1, 2), reference_logits=reference).kl or 0.0)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        classification_metrics(LOGITS, torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        classification_metrics(LOGITS, reference_logits=LOGITS[:2])
    with pytest.raises(ValueError):
        classification_metrics(torch.zeros(0, 3))


def test_to_dict_has_all_fields() -> None:
    assert EvalResult(n_images=3, top1=50.0).to_dict() == {
        "n_images": 3,
        "top1": 50.0,
        "top5": None,
        "agreement": None,
        "kl": None,
        "top1_se": None,
        "agreement_se": None,
        "kl_se": None,
    }


def test_standard_errors_are_those_of_the_mean_over_images() -> None:
    # 4 images, 2 right: per-image hits 1,1,0,0 -> sample std 0.577, over sqrt(4): 28.9 points.
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    result = classification_metrics(logits, torch.tensor([0, 0, 1, 1]), reference_logits=logits)
    assert result.top1 == 50.0 and result.top1_se == pytest.approx(100 * math.sqrt(1 / 3) / 2)
    assert result.agreement_se == 0.0 and result.kl_se == 0.0  # identical to the reference on every image


def tiny_set(n: int = 7) -> ImageSet:
    return ImageSet(
        images=torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8),
        labels=torch.arange(n) % 5,
        paths=[f"{i}.png" for i in range(n)],
        classes=[str(i) for i in range(5)],
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def test_predict_batches_and_restores_training_mode() -> None:
    images = tiny_set()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(48, 5))
    model.train()
    logits = predict(model, images, batch_size=3)
    assert model.training, "predict must leave the caller's mode alone"
    x = (images.images.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        expected = model[2](x.flatten(1))  # eval mode: dropout is the identity
    torch.testing.assert_close(logits, expected)
    assert logits.dtype == torch.float32


def test_evaluate_against_itself() -> None:
    images = tiny_set()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    result, logits = evaluate(model, images, batch_size=4)
    again, _ = evaluate(model, images, reference_logits=logits, batch_size=2)
    assert result.top1 == again.top1 and result.top1 is not None
    assert again.agreement == 100.0
    assert again.kl == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
def test_dense_deit_tiny_accuracy(imagenet_dir: Path, class_map: Path, deit_tiny_weights: Path) -> None:
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model.load_state_dict(load_file(str(deit_tiny_weights)), strict=True)
    images = load_image_folder(imagenet_dir, resolve_data_config({}, model=model), class_map=class_map)
    assert len(images) == 1000 and not images.skipped
    result, logits = evaluate(model, images, batch_size=100)
    print(f"dense DeiT-Tiny: {result.to_dict()}")
    assert result.top1 is not None and abs(result.top1 - 78.4) <= 1.0
    assert result.top5 is not None and result.top5 >= result.top1
    assert logits.shape == (1000, 1000)


def test_paired_loss_counts_only_the_images_whose_verdict_changed() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    reference = torch.eye(4)  # right on all four
    model = torch.eye(4)[[0, 1, 2, 0]]  # wrong on the last one only
    points, se = paired_top1_loss(model, reference, labels)
    assert points == pytest.approx(25.0)
    assert se == pytest.approx(100 * torch.tensor([0.0, 0, 0, 1]).std().item() / 2)
    assert paired_top1_loss(reference, reference, labels) == (0.0, 0.0)  # the same verdicts: no loss, no error
    assert paired_top1_loss(reference, model, labels)[0] == pytest.approx(-25.0)  # a gain is a negative loss
