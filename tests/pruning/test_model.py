"""The pruned runtime on the real DeiT-Tiny and real images, and on the other supported families."""

from __future__ import annotations

import itertools
import math

import pytest
import timm
import torch

from pruning import BlockConfig, PruneConfig, describe, prune_model
from pruning.data import load_image_folder
from pruning.flops import count_params
from pruning.loading import create_model
from pruning.metrics import classification_metrics


@pytest.fixture(scope="module")
def dense(deit_tiny_weights):
    return create_model("deit_tiny_patch16_224", weights=deit_tiny_weights)


@pytest.fixture(scope="module")
def spec(dense):
    return describe(dense, "deit_tiny_patch16_224")


@pytest.fixture(scope="module")
def images(dense, imagenet_dir, class_map):
    """96 real images: the first 48 calibrate, the last 48 are held out."""
    data_config = timm.data.resolve_data_config({}, model=dense)
    image_set = load_image_folder(imagenet_dir, data_config, class_map=class_map, max_images=96)
    return torch.cat([batch for batch, _ in image_set.batches(96)])


@pytest.fixture(scope="module")
def dense_logits(dense, images):
    with torch.inference_mode():
        return dense(images)


def run(model, images, batch=48):
    with torch.inference_mode():
        return torch.cat([model(images[i : i + batch]) for i in range(0, len(images), batch)])


def test_keep_everything_reproduces_dense_timm(dense, spec, images, dense_logits):
    pruned = prune_model(dense, PruneConfig.dense(spec))
    assert (run(pruned, images) - dense_logits).abs().max().item() <= 1e-5


def test_dense_model_is_not_modified_by_pruning(dense, spec, images):
    # The same batch before and after: bit-for-bit (logits of other batch shapes may differ in the
    # last bits with one thread, as GEMM kernels block them otherwise).
    before = run(dense, images[:8])
    prune_model(dense, PruneConfig.uniform(spec, keep_ratio=0.5, at=(3,), head_ratio=0.34, mlp_ratio=0.5))
    assert dense.blocks[0].attn.num_heads == 3
    assert torch.equal(run(dense, images[:8]), before)


@pytest.mark.parametrize("package", [False, True])
def test_topk_physically_removes_tokens(dense, spec, images, package):
    pruned = prune_model(dense, PruneConfig.uniform(spec, keep_ratio=0.7, at=(3, 6, 9), package_token=package))
    with torch.inference_mode():
        state = pruned.embed(images[:5])
        widths = []
        for stop in (3, 4, 7, 10, 12):
            state = pruned.run_blocks(state, len(widths) and (3, 4, 7, 10)[len(widths) - 1], stop)
            widths.append(state.x.shape[1])
    extra = int(package)
    # class token + ceil(0.7 * n) patch tokens after each reducing block
    assert widths == [197, 1 + 138 + extra, 1 + 97 + extra, 1 + 68 + extra, 1 + 68 + extra]
    assert state.x.shape[0] == 5


def test_prefix_can_be_cached_and_resumed(dense, spec, images):
    pruned = prune_model(dense, PruneConfig.uniform(spec, keep_ratio=0.5, at=(4, 8), package_token=True))
    with torch.inference_mode():
        prefix = pruned.run_blocks(pruned.embed(images[:6]), 0, 4)
        resumed = pruned.head(pruned.run_blocks(prefix, 4))
        assert torch.equal(resumed, pruned(images[:6]))


@pytest.mark.parametrize("score", ["cls_attn", "head_weighted"])
def test_topk_keeps_predictions_and_is_deterministic(dense, spec, images, dense_logits, score):
    pruned = prune_model(dense, PruneConfig.uniform(spec, keep_ratio=0.9, at=(3, 6, 9), score=score))
    logits = run(pruned, images)
    assert torch.equal(logits, run(pruned, images))
    assert classification_metrics(logits, reference_logits=dense_logits).agreement >= 90.0


def test_threshold_counts_vary_per_image_and_are_reported(dense, spec, images):
    pruned = prune_model(dense, PruneConfig.uniform(spec, threshold=1.0, at=(3, 6, 9), package_token=True))
    with torch.inference_mode():
        pruned(images[:16])
    counts = pruned.last_token_counts
    assert len(counts) == 3 and all(c.shape == (16,) for c in counts)
    assert len(set(counts[0].tolist())) > 1, "thresholds should keep different numbers of tokens per image"
    assert all((later <= earlier).all() for earlier, later in itertools.pairwise(counts))
    assert (counts[0] < 196).all() and (counts[-1] >= 1).all()


@pytest.mark.parametrize(
    "options",
    [
        {"threshold": 1.0, "at": (3, 6, 9), "package_token": True},
        {"threshold": 0.5, "at": (2, 5), "score": "head_weighted"},
        {"keep_ratio": 0.6, "at": (3, 6, 9), "package_token": True},
    ],
)
def test_batch_invariance(dense, spec, images, options):
    """An image's logits do not depend on which other images share its batch."""
    pruned = prune_model(dense, PruneConfig.uniform(spec, **options))
    picked = images[:12]
    with torch.inference_mode():
        alone = torch.cat([pruned(image[None]) for image in picked])
        together = pruned(picked)
        shuffled = pruned(picked.flip(0)).flip(0)
    assert (alone - together).abs().max().item() <= 1e-4
    assert (alone - shuffled).abs().max().item() <= 1e-4


def test_heads_and_channels_are_physically_sliced(dense, spec, images):
    config = PruneConfig.uniform(spec, head_ratio=0.67, mlp_ratio=0.5)
    pruned = prune_model(dense, config, calibration=[images[:16]])
    block = pruned.blocks[0]
    assert block.attn.num_heads == 2 and block.attn.attn_dim == 128
    assert block.attn.qkv.weight.shape == (384, 192) and block.attn.proj.weight.shape == (192, 128)
    assert block.mlp.fc1.weight.shape == (384, 192) and block.mlp.fc2.weight.shape == (192, 384)
    assert count_params(pruned) < 0.7 * count_params(dense)
    # timm's own modules stay consistent: their forward runs on the sliced weights.
    with torch.inference_mode():
        assert block(torch.randn(2, 197, 192)).shape == (2, 197, 192)
    assert all(b.heads_kept is not None and len(b.channels_kept) == 384 for b in pruned.config.blocks)


def test_rebuilding_from_pinned_config_is_deterministic(dense, spec, images):
    pruned = prune_model(dense, PruneConfig.uniform(spec, head_ratio=0.67, mlp_ratio=0.75), calibration=[images[:16]])
    again = prune_model(dense, pruned.config)
    assert torch.equal(run(pruned, images[:8]), run(again, images[:8]))


def test_weight_recovery_improves_fidelity_on_held_out_images(dense, spec, images, dense_logits):
    config = PruneConfig.uniform(spec, mlp_ratio=0.75)
    calibration = [images[:24], images[24:48]]
    plain = prune_model(dense, config, calibration=calibration)
    recovered = prune_model(dense, config, calibration=calibration, recover=True)
    held_out = dense_logits[48:]
    kl_plain = classification_metrics(run(plain, images[48:]), reference_logits=held_out).kl
    kl_recovered = classification_metrics(run(recovered, images[48:]), reference_logits=held_out).kl
    assert kl_recovered < 0.8 * kl_plain


def test_recovery_needs_calibration(dense, spec):
    with pytest.raises(ValueError, match="calibration"):
        prune_model(dense, PruneConfig.uniform(spec, mlp_ratio=0.5), recover=True)


@pytest.mark.parametrize(
    ("name", "at"),
    [
        ("deit_tiny_distilled_patch16_224", (3, 6, 9)),
        ("vit_tiny_patch16_224", (3, 6, 9)),
        ("deit_small_patch16_224", (3, 6, 9)),
        ("deit_base_patch16_224", (3, 6, 9)),
        ("pit_ti_224", (3, 5, 9)),
        ("pit_xs_distilled_224", (1, 4, 10)),
    ],
)
def test_other_families_prune_and_run_with_random_weights(name, at):
    model = timm.create_model(name).eval()
    spec = describe(model, name)
    images = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        reference = model(images)
        dense = prune_model(model, PruneConfig.dense(spec))
        assert (dense(images) - reference).abs().max().item() <= 1e-5
        config = PruneConfig.uniform(spec, keep_ratio=0.5, at=at, package_token=True, head_ratio=0.5, mlp_ratio=0.5)
        pruned = prune_model(model, config)
        logits = pruned(images)
    assert logits.shape == reference.shape and torch.isfinite(logits).all()
    assert count_params(pruned) < 0.7 * count_params(model)
    assert [c[0].item() for c in pruned.last_token_counts] == expected_topk_counts(spec, at, 0.5)


def expected_topk_counts(spec, at, ratio):
    """ceil(ratio * n) at each reducing block; a new stage (PiT) starts again from its full grid."""
    counts, tokens, stage = [], None, None
    for index in at:
        block = spec.blocks[index]
        if block.stage != stage:
            tokens, stage = block.tokens_in, block.stage
        tokens = math.ceil(ratio * tokens)
        counts.append(tokens)
    return counts


def test_removing_whole_branches_leaves_only_their_biases():
    model = timm.create_model("deit_tiny_patch16_224").eval()
    spec = describe(model)
    blocks = list(PruneConfig.dense(spec).blocks)
    blocks[5] = BlockConfig(heads=0, mlp_hidden=0)
    pruned = prune_model(model, PruneConfig(blocks=tuple(blocks)))
    assert pruned.blocks[5].attn.qkv.weight.shape == (0, 192) and pruned.blocks[5].mlp.fc1.weight.shape == (0, 192)
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        state = pruned.run_blocks(pruned.embed(images), 0, 5)
        state.x = state.x + model.blocks[5].attn.proj.bias + model.blocks[5].mlp.fc2.bias
        assert torch.equal(pruned.head(pruned.run_blocks(state, 6)), pruned(images))
