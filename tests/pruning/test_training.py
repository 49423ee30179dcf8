"""Recovery training (pruning.training): distillation makes a pruned model closer to its teacher on
images it never trained on, early stopping keeps the best weights, a checkpoint resumes, and the
fine-tune stage hands a trained model to the stages after it. A small real timm ViT, random weights."""

from __future__ import annotations

import pytest
import timm
import torch

from pruning.config import PruneConfig
from pruning.data import ImageSet
from pruning.metrics import classification_metrics, predict
from pruning.model import describe, prune_model
from pruning.stages import STAGES, ModelRecord, StageInputs, run_stages
from pruning.training import CHECKPOINT_FILE, FineTuneConfig, distillation_loss, fine_tune
from pruning.training.augment import Augmenter
from pruning.training.loop import ClassifierInputs

NAME = "deit_tiny_patch16_224"
KWARGS = {"img_size": 32, "depth": 4, "num_classes": 10}
QUICK = {"batch_size": 8, "eval_every": 5, "warmup": 0.2, "lr": 1e-3, "holdout": 0.25, "ema": None}


@pytest.fixture(scope="module")
def dense() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(NAME, **KWARGS).eval()


def _images(n: int, seed: int) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    return ImageSet(
        images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
        labels=torch.randint(0, 10, (n,), generator=generator),
        paths=[f"{seed}/image{i}.png" for i in range(n)],
        classes=[f"c{i}" for i in range(10)],
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


def _pruned(dense) -> torch.nn.Module:
    spec = describe(dense, NAME)
    config = PruneConfig.uniform(spec, keep_ratio=0.5, at=(1,), head_ratio=0.67, mlp_ratio=0.5)
    return prune_model(dense, config, name=NAME)


def _kl(model, dense, images) -> float:
    return classification_metrics(predict(model, images), None, predict(dense, images)).kl


def test_the_loss_is_kl_to_the_teacher_and_mixes_in_labels_by_weight():
    teacher = torch.randn(6, 10)
    assert distillation_loss(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(6, 10, requires_grad=True)
    kd = distillation_loss(student, teacher, temperature=2.0)
    expected = (
        torch.nn.functional.kl_div(
            torch.log_softmax(student / 2, 1), torch.softmax(teacher / 2, 1), reduction="batchmean"
        )
        * 4
    )
    assert kd.item() == pytest.approx(expected.item(), rel=1e-5)
    targets = torch.nn.functional.one_hot(torch.arange(6) % 10, 10).float()
    ce = torch.nn.functional.cross_entropy(student, targets.argmax(1))
    mixed = distillation_loss(student, teacher, 2.0, targets, label_weight=0.25)
    assert mixed.item() == pytest.approx(0.75 * kd.item() + 0.25 * ce.item(), rel=1e-5)
    mixed.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_views_are_normalised_augmented_and_mixed_in_pairs():
    images = _images(8, 1)
    config = FineTuneConfig(**QUICK)
    augment = Augmenter(config, images.mean, images.std, 32, 10)
    x, targets = augment(images.images, images.labels)
    plain = next(images.batches(8))[0]
    assert x.shape == plain.shape and x.dtype == torch.float32 and not torch.allclose(x, plain)
    assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))
    assert (targets > 0).sum(1).max() <= 2  # each view mixes at most two images' labels
    x, targets = augment(images.images, None)  # no labels: views only
    assert targets is None and x.shape == plain.shape


def test_a_seed_gives_the_same_views_in_every_run():
    images = _images(8, 1)

    def views(seed: int) -> torch.Tensor:
        torch.rand(7)  # whatever ran before leaves torch's generator elsewhere
        augment = Augmenter(FineTuneConfig(**QUICK, seed=seed), images.mean, images.std, 32, 10)
        return torch.cat([augment(images.images, images.labels)[0] for _ in range(3)])

    assert torch.equal(views(3), views(3))
    assert not torch.equal(views(3), views(4))


def test_distillation_brings_the_pruned_model_closer_on_images_it_never_saw(dense):
    student = _pruned(dense)
    unseen = _images(32, 9)
    before = _kl(student, dense, unseen)
    result = fine_tune(student, dense, _images(96, 2), FineTuneConfig(steps=40, **QUICK), progress=False)
    after = _kl(student, dense, unseen)
    assert after < 0.8 * before
    assert result.steps == 40 and result.train_images == 72 and result.holdout_images == 24
    assert result.holdout_kl < result.holdout_kl_before
    assert [h["step"] for h in result.history] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert not student.training  # handed back ready for inference


def _feature_distance(student, dense, images) -> float:
    inputs = ClassifierInputs(student.model, dense)
    with torch.inference_mode():
        x = next(images.batches(len(images)))[0]
        dense(x), student(x)
        distance = inputs.distance().item()
    inputs.close()
    return distance


def test_matching_the_classifier_inputs_brings_the_students_features_to_the_teachers(dense):
    student, unseen = _pruned(dense), _images(32, 9)
    inputs = ClassifierInputs(student.model, dense)
    with torch.inference_mode():
        x = next(unseen.batches(4))[0]
        dense(x), student(x)
        expected = dense.forward_head(dense.forward_features(x), pre_logits=True)
    assert torch.allclose(inputs.inputs["teacher"], expected, atol=1e-5)  # what the classifier reads
    assert inputs.inputs["student"].shape == expected.shape
    inputs.close()
    before = _feature_distance(student, dense, unseen)
    recipe = FineTuneConfig(steps=20, **QUICK | {"holdout": 0.0}, feature_weight=10.0)
    fine_tune(student, dense, _images(96, 2), recipe, progress=False)
    logits_only = _pruned(dense)
    fine_tune(logits_only, dense, _images(96, 2), recipe.model_copy(update={"feature_weight": 0.0}), progress=False)
    after = _feature_distance(student, dense, unseen)
    assert after < 0.7 * before and after < _feature_distance(logits_only, dense, unseen)
    assert not dense.head._forward_pre_hooks and not student.model.head._forward_pre_hooks  # hooks removed


def test_early_stopping_keeps_the_best_weights_even_when_no_step_helps(dense):
    student = _pruned(dense)
    original = {k: v.clone() for k, v in student.state_dict().items()}
    wild = FineTuneConfig(steps=60, **(QUICK | {"lr": 0.5, "warmup": 0.0, "grad_clip": None, "patience": 2}))
    result = fine_tune(student, dense, _images(64, 3), wild, progress=False)
    assert result.stopped_early and result.steps < 60 and result.best_step == 0
    assert all(torch.equal(v, original[k]) for k, v in student.state_dict().items())


def test_a_checkpoint_resumes_where_training_stopped(dense, tmp_path):
    images = _images(64, 4)
    first = fine_tune(
        _pruned(dense), dense, images, FineTuneConfig(steps=10, **QUICK), checkpoint=tmp_path, progress=False
    )
    assert (tmp_path / CHECKPOINT_FILE).exists() and first.steps == 10
    student = _pruned(dense)
    resumed = fine_tune(student, dense, images, FineTuneConfig(steps=20, **QUICK), checkpoint=tmp_path, progress=False)
    assert resumed.steps == 20 and [h["step"] for h in resumed.history] == [5, 10, 15, 20]
    assert resumed.history[:2] == first.history  # the first run's checks are kept, not redone


def test_too_few_images_for_a_batch_are_refused(dense):
    with pytest.raises(ValueError, match="cannot fill a batch"):
        fine_tune(_pruned(dense), dense, _images(6, 5), FineTuneConfig(steps=2, **QUICK), progress=False)


def test_the_fine_tune_stage_trains_then_hands_on_to_evaluate(dense):
    assert "fine-tune" in STAGES
    val = _images(16, 6)
    student = _pruned(dense)
    inputs = StageInputs(
        dense=dense,
        name=NAME,
        fine_tune=FineTuneConfig(steps=10, **QUICK),
        train=_images(64, 7),
        val=val,
        reference=predict(dense, val),
    )
    model, record = run_stages(("fine-tune", "evaluate"), ModelRecord(student.config, inputs), student)
    assert record.fine_tuned["steps"] == 10 and record.fine_tuned["config"]["lr"] == QUICK["lr"]
    assert record.evaluation.n_images == 16 and record.evaluation.kl == pytest.approx(_kl(model, dense, val), rel=1e-5)
    without = StageInputs(dense=dense, name=NAME, fine_tune=FineTuneConfig(steps=1, **QUICK))
    with pytest.raises(ValueError, match="training images"):
        run_stages(("fine-tune",), ModelRecord(student.config, without), student)


def _train_in_group(rank: int, world: int, init: str, dense_state: dict, out: str) -> None:
    """One process of a two-process (gloo, CPU) training: what torchrun gives several GPUs."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        dense = timm.create_model(NAME, **KWARGS).eval()
        dense.load_state_dict(dense_state)
        student = _pruned(dense)
        result = fine_tune(student, dense, _images(64, 8), FineTuneConfig(steps=10, **QUICK), progress=False)
        torch.save({"weights": student.state_dict(), "steps": result.steps, "processes": result.processes}, out)
    finally:
        dist.destroy_process_group()


def test_several_processes_train_one_model_and_end_with_the_same_weights(dense, tmp_path):
    """The CPU twin of multi-GPU training: DistributedDataParallel over gloo."""
    import torch.multiprocessing as mp

    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]

    mp.spawn(_spawned, args=(2, f"file://{tmp_path / 'group'}", dense.state_dict(), outs), nprocs=2, join=True)
    first, second = (torch.load(o, weights_only=True) for o in outs)
    assert first["steps"] == second["steps"] == 10 and first["processes"] == 2
    assert all(torch.equal(first["weights"][k], second["weights"][k]) for k in first["weights"])
    untrained = _pruned(dense).state_dict()
    assert any(not torch.equal(first["weights"][k], untrained[k]) for k in untrained)


def _spawned(rank: int, world: int, init: str, dense_state: dict, outs: list[str]) -> None:
    _train_in_group(rank, world, init, dense_state, outs[rank])
