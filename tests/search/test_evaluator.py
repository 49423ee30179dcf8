"""Trial evaluation: the prefix cache changes nothing but the work done."""

from __future__ import annotations

import pytest
import timm
import torch

from pruning import PruneConfig, describe, prune_model
from pruning.data import load_image_folder
from pruning.importance import weight_importance
from pruning.quantisation import quantise
from pruning.tokens import padded_widths
from search.evaluator import TrialEvaluator, first_change
from tests.search.tiny import MODEL, tiny_model, write_images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = tiny_model()
    spec = describe(model, MODEL)
    config = timm.data.resolve_data_config({}, model=model) | {"input_size": (3, 32, 32)}
    images = load_image_folder(write_images(tmp_path_factory.mktemp("calib"), 5, seed=3), config)
    importance = weight_importance(list(model.blocks))
    evaluator = TrialEvaluator(model, spec, images, importance, batch_size=16)
    return model, spec, images, importance, evaluator


def reference_logits(model, spec, images, importance, evaluator, config):
    """What a plain forward of the pruned model gives, in the evaluator's (shuffled) image order."""
    pruned = prune_model(model, config, name=MODEL, importance=importance)
    with torch.inference_mode():
        return torch.cat([pruned(x) for x in evaluator.inputs])


def test_dense_config_scores_full_agreement(setup):
    model, spec, images, _, evaluator = setup
    result = evaluator.evaluate(PruneConfig.dense(spec))
    assert result.metrics.agreement == 100.0 and result.metrics.kl == pytest.approx(0.0, abs=1e-9)
    assert result.images == len(images) == len(evaluator)
    assert result.accuracy == result.metrics.top1
    with torch.inference_mode():
        plain = torch.cat([model(x) for x in evaluator.inputs])
    torch.testing.assert_close(evaluator.dense_logits, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "config_of",
    [
        lambda spec: PruneConfig.uniform(spec, keep_ratio=0.5, at=(2,), package_token=True),
        lambda spec: PruneConfig.uniform(spec, threshold=0.8, at=(1, 3), package_token=True),
        lambda spec: PruneConfig.uniform(spec, r=1, at=(1, 2, 3)),  # a merge is the first change
        lambda spec: PruneConfig(  # top-k beside merges, as tokens=topk+merge makes them
            blocks=(
                *PruneConfig.uniform(spec, r=1, at=(1,)).blocks[:2],
                PruneConfig.uniform(spec, keep_ratio=0.5, at=(2,)).blocks[2],
                PruneConfig.uniform(spec, r=1, at=(3,)).blocks[3],
            ),
            package_token=True,
        ),
        lambda spec: PruneConfig(
            blocks=(*PruneConfig.dense(spec).blocks[:3], PruneConfig.uniform(spec, head_ratio=0.34).blocks[3])
        ),
    ],
)
def test_cached_prefix_gives_the_same_logits_as_a_full_forward(setup, config_of):
    model, spec, images, importance, evaluator = setup
    config = config_of(spec)
    result = evaluator.evaluate(config)
    assert result.first_block == first_change(config, spec) > 0
    expected = reference_logits(model, spec, images, importance, evaluator, config)
    full = PruneConfig.model_validate(config.model_dump())
    again = evaluator.evaluate(full)
    assert again.metrics == result.metrics
    logits_agree = (expected.argmax(1) == evaluator.dense_logits.argmax(1)).double().mean() * 100
    assert result.metrics.agreement == pytest.approx(float(logits_agree))
    if config.per_image:
        assert result.counts.shape == (len(images), 2)
    if config.uses("merge"):
        assert result.counts.shape == (len(images), sum(b.reduces_tokens for b in config.blocks))


def test_blocks_before_the_first_change_run_once_per_job(setup):
    _, spec, _, _, evaluator = setup
    calls = []
    hook = evaluator.reference.blocks[0].attn.qkv.register_forward_hook(lambda *_: calls.append(1))
    try:
        evaluator._states.clear()
        evaluator.evaluate(PruneConfig.uniform(spec, keep_ratio=0.6, at=(2,)))
        first = len(calls)
        evaluator.evaluate(PruneConfig.uniform(spec, keep_ratio=0.4, at=(2,)))
        evaluator.evaluate(PruneConfig.uniform(spec, keep_ratio=0.5, at=(3,)))
    finally:
        hook.remove()
    assert first == len(evaluator.inputs) and len(calls) == first


def test_cheap_first_reads_whole_batches_from_the_front_and_the_rest_continues_it(setup):
    _, spec, _, _, evaluator = setup
    config = PruneConfig.uniform(spec, threshold=0.8, at=(2,))
    sample = evaluator.evaluate(config, max_images=20)
    assert sample.images == 32 and len(sample.counts) == 32  # two batches of 16
    rest = evaluator.evaluate(config, sample=sample)
    full = evaluator.evaluate(config)
    assert rest.metrics == full.metrics and torch.equal(rest.counts, full.counts)
    torch.testing.assert_close(rest.logits, full.logits)


def test_padded_widths_are_the_longest_image_of_each_batch():
    counts = torch.tensor([[5, 2], [7, 1], [3, 3]])
    assert padded_widths(counts, 1) == pytest.approx([5.0, 2.0])
    assert padded_widths(counts, 2) == pytest.approx([(7 * 2 + 3) / 3, (2 * 2 + 3) / 3])


def test_scoring_under_bf16_autocast_is_the_cuda_paths_cpu_twin(setup):
    """The compute device and the scoring dtype: the dense logits, the prefix cache and every trial run
    the same way, so the dense config still agrees fully with itself; the pruned one stays close to fp32."""
    model, spec, images, importance, fp32 = setup
    bf16 = TrialEvaluator(model, spec, images, importance, batch_size=16, device=torch.device("cpu"), dtype="bfloat16")
    dense = bf16.evaluate(PruneConfig.dense(spec))
    assert dense.metrics.agreement == 100.0 and dense.metrics.kl == pytest.approx(0.0, abs=1e-9)
    assert not torch.equal(bf16.dense_logits, fp32.dense_logits)  # it did run in bf16
    torch.testing.assert_close(bf16.dense_logits, fp32.dense_logits, rtol=0.1, atol=0.1)
    config = PruneConfig.uniform(spec, keep_ratio=0.5, at=(2,), package_token=True)
    pruned = bf16.evaluate(config)
    assert pruned.logits.dtype == torch.float32 and pruned.logits.device.type == "cpu"
    assert 0.0 < pruned.build_seconds < pruned.seconds
    assert pruned.metrics.agreement_se > 0 and pruned.metrics.kl_se > 0


def test_a_compute_device_this_machine_lacks_is_refused_clearly():
    from pruning.compute import ComputeError, compute_device

    assert compute_device("cpu").type == "cpu"
    assert compute_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ComputeError, match="expected cpu, cuda, cuda:N or auto"):
        compute_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ComputeError, match="torch sees no CUDA GPU on this machine; use cpu or auto"):
            compute_device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; the bf16 CPU twin is above)")
def test_scoring_on_the_gpu_gives_the_cpu_s_figures(setup):
    model, spec, images, importance, cpu = setup
    gpu = TrialEvaluator(model, spec, images, importance, batch_size=16, device=torch.device("cuda"))
    config = PruneConfig.uniform(spec, r=1, at=(1, 2, 3))
    torch.testing.assert_close(gpu.evaluate(config).logits, cpu.evaluate(config).logits, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("precision", ["int8", "int8-pow2"])
def test_a_quantised_trial_scores_the_quantised_pruned_model_from_the_cached_quantised_prefix(setup, precision):
    model, spec, images, importance, _ = setup
    batches = [x for x, _ in images.batches(16)][:2]
    evaluator = TrialEvaluator(model, spec, images, importance, batch_size=16, quantisation=batches)
    config = PruneConfig(
        blocks=(
            *PruneConfig.uniform(spec, keep_ratio=0.5, at=(2,)).blocks[:3],
            PruneConfig.uniform(spec, head_ratio=0.34).blocks[3],
        ),
        package_token=True,
    )
    result = evaluator.evaluate(config, precision=precision)
    assert result.first_block == 2
    pruned = quantise(prune_model(model, config, name=MODEL, importance=importance), batches, precision)
    with torch.inference_mode():
        expected = torch.cat([pruned(x) for x in evaluator.inputs])
    torch.testing.assert_close(result.logits, expected, rtol=1e-5, atol=1e-5)
    # the float trial of the same config is another model
    assert not torch.allclose(evaluator.evaluate(config).logits, result.logits, atol=1e-4)
    assert set(p for (p, _blocks), _ in evaluator._states) == {"fp32", precision}
    # Blocks kept float, before the first change (from a prefix of their own) and after it.
    for float_blocks in ((0,), (3,)):
        mixed = evaluator.evaluate(config, precision=precision, float_blocks=float_blocks)
        pruned = prune_model(model, config, name=MODEL, importance=importance)
        expected_model = quantise(pruned, batches, precision, float_blocks=float_blocks)
        with torch.inference_mode():
            expected = torch.cat([expected_model(x) for x in evaluator.inputs])
        torch.testing.assert_close(mixed.logits, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(mixed.logits, result.logits, atol=1e-4)
    # A fully integer device: products and residual stream quantised too, the prefix cached so as well.
    integer = TrialEvaluator(model, spec, images, importance, batch_size=16, quantisation=batches,
                             fully_integer={precision: 3})  # fmt: skip
    pruned = prune_model(model, config, name=MODEL, importance=importance)
    expected_model = quantise(pruned, batches, precision, attention=True, stream=3)
    with torch.inference_mode():
        expected = torch.cat([expected_model(x) for x in integer.inputs])
    torch.testing.assert_close(integer.evaluate(config, precision=precision).logits, expected, rtol=1e-5, atol=1e-5)


def test_a_quantised_trial_needs_calibration_batches(setup):
    _, spec, _, _, evaluator = setup
    with pytest.raises(ValueError, match="no quantisation batches"):
        evaluator.evaluate(PruneConfig.uniform(spec, keep_ratio=0.5, at=(2,)), precision="int8")
