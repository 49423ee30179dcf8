"""Token merging (ToMe): the op against a plain reference, proportional attention, and the real DeiT-Tiny
merged alone, mixed with top-k and with head/MLP pruning, batch-invariant and exportable."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_data_config

from pruning import BlockConfig, ConfigError, PruneConfig, describe, prune_model
from pruning.block import attention_heads
from pruning.data import load_image_folder
from pruning.export import export_onnx, verify_onnx
from pruning.loading import create_model
from pruning.tokens import TokenState, attention_mask
from pruning.tokens.merge import MergeReduction, merge_tokens
from pruning.tokens.threshold import ThresholdReduction
from pruning.tokens.topk import TopKReduction


def _reference_merge(x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor, prefix: int, r: int):
    """ToMe on one image, written with Python loops over token pairs: (merged groups of original slots)."""
    n = x.shape[0] - prefix
    a = list(range(prefix, prefix + n, 2))
    b = list(range(prefix + 1, prefix + n, 2))
    unit = keys / keys.norm(dim=-1, keepdim=True)
    best = []
    for i in a:
        sims = [float(unit[i] @ unit[j]) for j in b]
        partner = max(range(len(b)), key=lambda k: sims[k])
        best.append((sims[partner], i, b[partner]))
    ranked = sorted(best, key=lambda t: -t[0])  # ties keep A order, like a stable sort
    merged = ranked[:r]
    groups = {j: [j] for j in b}
    for _, i, j in merged:
        groups[j].append(i)
    kept_a = sorted(i for _, i, _ in ranked[r:])
    rows, sizes = [x[i] for i in range(prefix)], [size[i] for i in range(prefix)]
    for i in kept_a:
        rows.append(x[i])
        sizes.append(size[i])
    for j in b:
        members = groups[j]
        weight = torch.stack([size[m] for m in members])
        rows.append((torch.stack([x[m] for m in members]) * weight[:, None]).sum(0) / weight.sum())
        sizes.append(weight.sum())
    return torch.stack(rows), torch.stack(sizes)


@pytest.mark.parametrize(("n_patch", "r", "sized"), [(9, 3, False), (10, 5, True), (16, 1, True)])
def test_merge_matches_a_loop_reference(n_patch, r, sized):
    generator = torch.Generator().manual_seed(n_patch)
    B, prefix, C = 3, 1, 8
    x = torch.randn(B, prefix + n_patch, C, generator=generator)
    keys = torch.randn(B, prefix + n_patch, 4, generator=generator)
    size = torch.randint(1, 4, (B, prefix + n_patch), generator=generator).float() if sized else None
    state = TokenState(x=x, n_prefix=prefix, size=size)
    out = merge_tokens(state, keys, MergeReduction(r=r))
    assert out.x.shape == (B, prefix + n_patch - r, C)
    assert out.counts[-1].tolist() == [n_patch - r] * B
    for image in range(B):
        ones = torch.ones(prefix + n_patch)
        want_x, want_size = _reference_merge(x[image], size[image] if sized else ones, keys[image], prefix, r)
        assert torch.allclose(out.x[image], want_x, atol=1e-6)
        assert torch.allclose(out.size[image], want_size)
    # Nothing is lost: the sizes still add up to the patches of the image.
    total = size[:, prefix:].sum(1) if sized else torch.full((B,), float(n_patch))
    assert torch.allclose(out.size[:, prefix:].sum(1), total)


def test_merge_protects_prefix_and_package_and_caps_at_half():
    x = torch.randn(2, 2 + 6 + 1, 4)
    state = TokenState(x=x, n_prefix=2, has_package=True)
    out = merge_tokens(state, torch.randn(2, 9, 4), MergeReduction(r=50))
    assert out.n_patch == 3  # at most half of the 6 patch tokens merge away
    assert torch.equal(out.x[:, :2], x[:, :2]) and torch.equal(out.x[:, -1], x[:, -1])
    assert out.size[:, :2].eq(1).all() and out.size[:, -1].eq(1).all()


def test_proportional_attention_counts_a_merged_token_as_its_copies():
    """A token of size 3 attended with bias log(3) gives the other tokens what 3 identical copies give."""
    torch.manual_seed(0)
    block = timm.create_model("deit_tiny_patch16_224", pretrained=False).blocks[0].attn.eval()
    x = torch.randn(1, 5, 192)
    copies = torch.cat([x, x[:, 2:3], x[:, 2:3]], 1)
    size = torch.tensor([[1.0, 1.0, 3.0, 1.0, 1.0]])
    with torch.no_grad():
        merged, _ = attention_heads(block, x, attention_mask(TokenState(x=x, n_prefix=1, size=size)), None)
        expanded, _ = attention_heads(block, copies, None, None)
        _, scores = attention_heads(block, x, attention_mask(TokenState(x=x, n_prefix=1, size=size)), "cls_attn")
        _, copy_scores = attention_heads(block, copies, None, "cls_attn")
    assert torch.allclose(merged, expanded[:, :5], atol=1e-5)
    assert torch.allclose(scores[0, 2], copy_scores[0, [2, 5, 6]].sum(), atol=1e-5)


def test_merge_cannot_mix_with_thresholds_or_grid_pooling():
    spec = describe(timm.create_model("deit_tiny_patch16_224", pretrained=False))
    blocks = list(PruneConfig.uniform(spec, r=8, at=(0, 1)).blocks)
    blocks[5] = blocks[5].model_copy(update={"tokens": ThresholdReduction(threshold=1.0)})
    with pytest.raises(ConfigError, match="merge and threshold"):
        PruneConfig(blocks=tuple(blocks)).check(spec)
    pit = describe(timm.create_model("pit_ti_224", pretrained=False))
    with pytest.raises(ConfigError, match="pools a token grid"):
        PruneConfig.uniform(pit, r=4, at=(1,)).check(pit)
    with pytest.raises(ConfigError, match="not several"):
        PruneConfig.uniform(spec, r=4, keep_ratio=0.5, at=(1,))
    with pytest.raises(ValueError):
        MergeReduction(r=0)


@pytest.fixture(scope="module")
def dense(deit_tiny_weights: Path) -> torch.nn.Module:
    return create_model("deit_tiny_patch16_224", weights=deit_tiny_weights)


@pytest.fixture(scope="module")
def images(dense, imagenet_dir: Path) -> torch.Tensor:
    image_set = load_image_folder(imagenet_dir, resolve_data_config({}, model=dense), max_images=48)
    return next(image_set.batches(48))[0]


def _mixed(spec) -> PruneConfig:
    """ToMe r=8 everywhere but block 6, which keeps 70% by top-k; fewer heads and MLP channels late."""
    blocks = list(PruneConfig.uniform(spec, r=8, at=tuple(range(12)), package_token=True).blocks)
    blocks[6] = BlockConfig(heads=3, mlp_hidden=768, tokens=TopKReduction(keep_ratio=0.7))
    for i in (10, 11):
        blocks[i] = blocks[i].model_copy(update={"heads": 2, "mlp_hidden": 384})
    return PruneConfig(blocks=tuple(blocks), package_token=True)


def test_real_deit_merges_physically_and_keeps_its_predictions(dense, images):
    spec = describe(dense)
    pruned = prune_model(dense, PruneConfig.uniform(spec, r=8, at=tuple(range(12))))
    with torch.inference_mode():
        dense_top1 = dense(images).argmax(1)
        logits = pruned(images)
    assert [int(c[0]) for c in pruned.last_token_counts] == [196 - 8 * (i + 1) for i in range(12)]
    # ToMe r=8 is a mild schedule: nearly every prediction of the dense model survives it.
    assert (logits.argmax(1) == dense_top1).float().mean() >= 0.85


@pytest.mark.parametrize("config", ["uniform", "mixed"])
def test_merging_is_batch_invariant_and_deterministic(dense, images, config):
    spec = describe(dense)
    cfg = PruneConfig.uniform(spec, r=13, at=tuple(range(12))) if config == "uniform" else _mixed(spec)
    pruned = prune_model(dense, cfg, calibration=[images[:16]], recover=config == "mixed")
    picked = images[:10]
    with torch.inference_mode():
        alone = torch.cat([pruned(image[None]) for image in picked])
        together = pruned(picked)
        shuffled = pruned(picked.flip(0)).flip(0)
        again = pruned(picked)
    assert (alone - together).abs().max().item() <= 1e-4
    assert (alone - shuffled).abs().max().item() <= 1e-4
    assert torch.equal(together, again)


def test_mixed_config_exports_to_onnx(dense, images, tmp_path: Path):
    pruned = prune_model(dense, _mixed(describe(dense)), calibration=[images[:8]])
    report = export_onnx(pruned, tmp_path / "merged.onnx", images=images[:4])
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert verify_onnx(pruned, report.path, images[4:9]) <= 1e-4
