"""The profiler: its kernels do the runtime's work, its grid, its runs (resume, table), torch-only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch

from latency_models.profiling import (
    SHAPES,
    Execution,
    Timing,
    composite_parts,
    entry_id,
    kernel,
    plan,
    profile,
    token_grid,
    width_grid,
)
from latency_models.profiling import run as run_module
from latency_models.profiling.kernels import AttentionHalf, MlpHalf
from latency_models.profiling.ops._select import select_tokens
from latency_models.profiling.ops.merge import merge_pairs
from latency_models.schema import TOKEN_OP_ENTRIES, LatencyTable
from pruning.block import attention_heads, mlp_half
from pruning.tokens import TokenState
from pruning.tokens.merge import MergeReduction, merge_tokens
from pruning.tokens.topk import TopKReduction

FAST = Timing(passes=2, warmup=1, min_round_s=0.0005)


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", depth=1).eval().blocks[0]


def test_attention_kernel_computes_what_the_runtime_computes(block):
    kernel = AttentionHalf(192, 3, 64).eval()
    kernel.load_state_dict(
        {
            "norm1.weight": block.norm1.weight,
            "norm1.bias": block.norm1.bias,
            "qkv.weight": block.attn.qkv.weight,
            "qkv.bias": block.attn.qkv.bias,
            "proj.weight": block.attn.proj.weight,
            "proj.bias": block.attn.proj.bias,
        }
    )
    x = torch.randn(2, 50, 192)
    valid = torch.ones(2, 50, dtype=torch.bool)
    valid[1, 40:] = False
    with torch.inference_mode():
        for mask in (None, valid):
            runtime_mask = None if mask is None else mask[:, None, None, :]  # as `pruning.tokens.attention_mask`
            for scored in (False, True):
                want = "cls_attn" if scored else None
                heads, scores = attention_heads(block.attn, block.norm1(x), runtime_mask, want)
                expected = x + block.attn.proj(heads)
                got, got_scores = kernel(x, mask, scored)
                assert torch.allclose(got, expected, atol=1e-5)
                assert (scores is None) == (got_scores is None)
                if scores is not None:
                    assert torch.allclose(got_scores, scores, atol=1e-6)


def test_mlp_kernel_computes_what_the_runtime_computes(block):
    kernel = MlpHalf(192, 768).eval()
    kernel.load_state_dict(
        {
            "norm2.weight": block.norm2.weight,
            "norm2.bias": block.norm2.bias,
            "fc1.weight": block.mlp.fc1.weight,
            "fc1.bias": block.mlp.fc1.bias,
            "fc2.weight": block.mlp.fc2.weight,
            "fc2.bias": block.mlp.fc2.bias,
        }
    )
    x = torch.randn(2, 30, 192)
    with torch.inference_mode():
        assert torch.allclose(kernel(x), mlp_half(block, TokenState(x=x, n_prefix=1)).x, atol=1e-5)


@pytest.mark.parametrize("package", [False, True])
def test_gather_selection_matches_the_runtime_top_k(package):
    x, scores = torch.randn(3, 41, 16), torch.rand(3, 41)
    state = TokenState(x=x, n_prefix=1)
    expected = TopKReduction(keep_ratio=0.5).apply(state, scores, package).x
    got = select_tokens(x, scores, prefix=1, keep=20, method="gather", package=package)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize(("n_patch", "r", "sized"), [(196, 8, False), (196, 98, True), (37, 5, True), (2, 1, False)])
def test_merge_kernel_computes_what_the_runtime_computes(n_patch, r, sized):
    generator = torch.Generator().manual_seed(n_patch + r)
    B, prefix, heads, head_dim, C = 2, 1, 3, 16, 24
    N = prefix + n_patch
    x = torch.randn(B, N, C, generator=generator)
    k = torch.randn(B, N, 3 * heads * head_dim, generator=generator).reshape(B, N, 3, heads, head_dim)
    k = k.permute(2, 0, 3, 1, 4)[1]  # the keys as attention holds them: a view of the qkv output
    size = torch.randint(1, 5, (B, N), generator=generator).float() if sized else torch.ones(B, N)
    with torch.inference_mode():
        expected = merge_tokens(
            TokenState(x=x, n_prefix=prefix, size=size if sized else None), k.mean(1), MergeReduction(r=r)
        )
        tokens, sizes = merge_pairs(x, k, size, prefix, r)
    assert tokens.shape == (B, N - r, C) == expected.x.shape
    assert torch.allclose(tokens, expected.x, atol=1e-6)
    assert torch.equal(sizes, expected.size)


def test_merge_entry_kernel_runs_the_planned_merge():
    key = {"op": "merge", "batch": 3, "embed_dim": 32, "tokens_in": 50, "tokens_out": 30, "prefix": 1, "heads": 2,
           "head_dim": 8}  # fmt: skip
    with torch.inference_mode():
        tokens, sizes = kernel(key, torch.device("cpu"))()
    assert tokens.shape == (3, 30, 32) and sizes.shape == (3, 30)  # 20 of the 49 patch tokens merged away


def test_grid_plans_merges_of_up_to_half_the_patch_tokens_with_the_same_counts_in_every_row():
    shape = SHAPES["deit_small_distilled_patch16_224"]  # two prefix tokens, never merged
    merges = [k for k in plan(shape, [1, 4]) if k["op"] == "merge"]
    assert {k["batch"] for k in merges} == {1, 4}
    rows: dict[int, set[int]] = {}
    for k in merges:
        assert (k["prefix"], k["heads"], k["head_dim"], k["embed_dim"]) == (2, 6, 64, 384)
        n_in, r = k["tokens_in"], k["tokens_in"] - k["tokens_out"]
        assert 1 <= r <= (n_in - shape.prefix) // 2
        rows.setdefault(n_in, set()).add(r)
    grid = token_grid(shape.tokens, 16)
    assert set(rows) == {n for n in grid if n - shape.prefix >= 2}
    for n_in, counts in rows.items():
        most = (n_in - shape.prefix) // 2
        assert counts == {r for r in grid if r < most} | {most}, n_in
    assert max(rows[shape.tokens]) == 98 and {1, 8, 16, 32} <= rows[shape.tokens]


def test_grid_covers_every_head_count_and_only_allowed_widths():
    shape = SHAPES["deit_small_patch16_224"]
    keys = plan(shape, [1, 8])
    attention = [k for k in keys if k["op"] == "attention"]
    assert {k["heads"] for k in attention} == set(range(shape.heads + 1))
    assert {k["masked"] for k in attention if k["batch"] == 1} == {False}  # one image is never padded
    assert {k["masked"] for k in attention if k["batch"] == 8} == {False, True}
    widths = {k["mlp_hidden"] for k in keys if k["op"] == "mlp"}
    assert all(w % shape.round_to == 0 for w in widths) and {0, shape.mlp_hidden} <= widths
    tokens = {k["tokens"] for k in attention}
    assert {1, shape.tokens} <= tokens and tokens == set(token_grid(shape.tokens))
    assert len({entry_id(k) for k in keys}) == len(keys)
    for k in keys:
        if k["op"] == "select":
            assert shape.prefix < k["tokens_out"] <= k["tokens_in"]
    assert width_grid(768, 8) == sorted(set(width_grid(768, 8)))


def _small_keys() -> list[dict]:
    shape = replace(SHAPES["deit_tiny_patch16_224"], tokens=17, image_size=64, num_classes=10)
    keys = plan(shape, [2], token_step=8, width_points=2, op_step=8)
    keys = [k for k in keys if k["op"] != "attention" or k["heads"] in (0, 3)]
    return keys[::6]  # every kind of entry, few of each: building weight copies is what takes time


def test_profile_writes_a_valid_table_and_resumes_an_interrupted_run(tmp_path, monkeypatch):
    keys = _small_keys()
    out = tmp_path / "table.json"
    calls, crash = [], [True]
    real_kernel = run_module.kernel

    def counting_kernel(key, device):
        calls.append(entry_id(key))
        if len(calls) == 5 and crash and crash.pop():
            raise RuntimeError("killed")  # the run dies after four timed rounds
        return real_kernel(key, device)

    monkeypatch.setattr(run_module, "kernel", counting_kernel)
    with pytest.raises(RuntimeError, match="killed"):
        profile(keys, name="test-box", out=out, timing=FAST, progress=False)
    partial = out.with_name(out.name + ".partial.jsonl")
    assert len(partial.read_text().splitlines()) == 4 and not out.exists()

    calls.clear()
    table = LatencyTable.parse(profile(keys, name="test-box", out=out, timing=FAST, progress=False))
    assert len(calls) == 2 * len(keys) - 4  # the four rounds already timed were not timed again
    assert not partial.exists()
    assert LatencyTable.load(out) == table
    assert table.device.kind == "measured" and table.device.batch_sizes == (2,)
    assert len(table.entries) == len(keys)
    assert all(e.median_ms > 0 for e in table.entries if e.op != "select" or e.tokens_out < e.tokens_in)
    merge_entry = TOKEN_OP_ENTRIES["merge"]
    assert sum(isinstance(e, merge_entry) for e in table.entries) == sum(k["op"] == "merge" for k in keys) > 0


def test_a_table_is_timed_and_records_the_execution_it_was_timed_in(tmp_path, monkeypatch):
    """bf16 on the CPU is the CUDA path's twin: kernels are built in the dtype, the table says so."""
    built = []
    real_kernel = run_module.kernel

    def recording_kernel(key, device):
        built.append(torch.get_default_dtype())
        return real_kernel(key, device)

    monkeypatch.setattr(run_module, "kernel", recording_kernel)
    keys = _small_keys()[:6]
    bf16 = Execution("cpu", "bfloat16")
    table = LatencyTable.parse(profile(keys, name="b", out=tmp_path / "b.json", execution=bf16, timing=FAST))
    assert set(built) == {torch.bfloat16} and torch.get_default_dtype() == torch.float32  # restored
    assert (table.device.dtype, table.device.mode) == ("bfloat16", "eager")
    assert Execution.of(table.device.model_dump()) == bf16
    assert Execution.of({"runtime": "torch 2.9.0+cu130 (cuda 13.0)", "dtype": "bfloat16", "mode": "cuda_graphs"}) == (
        Execution("cuda", "bfloat16", "cuda_graphs")
    )
    assert Execution.of({"runtime": "torch 2.9.0+cu130 (cpu, tcmalloc)"}) == Execution()  # older tables: eager fp32


def test_an_execution_this_machine_cannot_run_is_refused_clearly():
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        Execution("cpu", "float32", "cuda_graphs")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        Execution("cpu", "int8")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
            Execution("cuda", "bfloat16", "cuda_graphs").check()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; the CPU twin is above)")
def test_cuda_graphs_replay_what_the_eager_call_computes():
    execution = Execution("cuda", "bfloat16", "cuda_graphs")
    with execution.building():
        mlp = execution.place(MlpHalf(64, 128))
    x = execution.inputs(torch.randn(2, 17, 64))
    out = {}
    with torch.inference_mode():
        call, graphed = execution.prepare(lambda: out.__setitem__("y", mlp(x)))
        call()
        execution.sync()
        assert graphed and torch.equal(out["y"], mlp(x))


def test_the_profiler_runs_with_torch_alone(tmp_path):
    """Copied out of the project, with vitprune's other packages, pydantic and timm unimportable."""
    shutil.copytree(Path(__file__).parents[2] / "latency_models" / "profiling", tmp_path / "profiling")
    keys = _small_keys()[:5] + [k for k in _small_keys() if k["op"] == "merge"][:1]
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pruning", "latency_models", "vitprune", "pydantic", "timm", "tqdm"}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import json, pathlib
from profiling import Timing, profile
keys = json.loads(pathlib.Path("keys.json").read_text())
profile(keys, name="phone", out=pathlib.Path("t.json"), timing=Timing(passes=1, min_round_s=0.0005))
from profiling.__main__ import main
sys.exit(main(["--shape", "deit_tiny_patch16_224", "--batch", "1", "--out", "unused.json", "--dry-run"]))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "grid:" in done.stderr
    table = LatencyTable.load(tmp_path / "t.json")
    assert table.device.name == "phone" and len(table.entries) == 6


def test_composites_start_on_the_select_and_merge_grid_and_their_kernels_run():
    shape = replace(SHAPES["deit_tiny_patch16_224"], tokens=17, image_size=64, num_classes=10)
    keys = plan(shape, [2])
    have = {entry_id(k) for k in keys}
    composites = [k for k in keys if composite_parts(k) is not None and k["op"] != "chain"]
    assert {k["op"] for k in composites} == {"model", "reducing_chain"}
    assert {k["reduction"] for k in composites if k["op"] == "reducing_chain"} == {"topk", "threshold", "merge"}
    for key in composites:
        # Every token op is a planned entry, so the predictor compares each pair with the entries at exactly
        # its counts (the MLP after a merge is interpolated between token counts, smooth there).
        assert all(entry_id(part) in have for part in composite_parts(key) if part["op"] != "mlp"), key
        with torch.inference_mode():
            out = kernel(key, torch.device("cpu"))()
        if key["op"] == "model":
            assert out.shape == (2, 10)  # logits: embedding, the blocks and the head all ran
