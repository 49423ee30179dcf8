"""Tests for pruning.export: real DeiT-Tiny pruned models export to one ONNX file that onnxruntime runs
with the same logits as PyTorch, on real images from the `imagenet_dir` fixture.

Each export takes several seconds on two CPU cores, so exports are module fixtures shared by tests.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
import torch
from timm.data import resolve_data_config

from pruning import PruneConfig, PrunedViT, describe, prune_model
from pruning.data import load_image_folder
from pruning.export import (
    ExportReport,
    export_onnx,
    file_uses_external_data,
    verify_onnx,
)
from pruning.flops import count_params
from pruning.loading import create_model

TINY = "deit_tiny_patch16_224"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def dense(deit_tiny_weights: Path) -> torch.nn.Module:
    return create_model(TINY, weights=deit_tiny_weights)


@pytest.fixture(scope="module")
def images(dense: torch.nn.Module, imagenet_dir: Path) -> torch.Tensor:
    image_set = load_image_folder(imagenet_dir, resolve_data_config({}, model=dense), max_images=8)
    return next(image_set.batches(8))[0]


@pytest.fixture(scope="module")
def topk(dense: torch.nn.Module) -> PrunedViT:
    config = PruneConfig.uniform(describe(dense), keep_ratio=0.7, at=(3, 6, 9), package_token=True)
    return prune_model(dense, config)


@pytest.fixture(scope="module")
def topk_export(topk: PrunedViT, images: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    return export_onnx(topk, tmp_path_factory.mktemp("topk") / "topk.onnx", images=images)


def _input_dims(path: Path) -> list[int | str]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]


def test_topk_dynamic_batch_matches_pytorch(topk: PrunedViT, topk_export: ExportReport, images: torch.Tensor) -> None:
    report = topk_export
    assert report.exporter == "dynamo"
    assert report.dynamic_batch and report.checked_batches == (1, 3)
    assert report.max_abs_diff is not None and report.max_abs_diff <= TOLERANCE
    assert isinstance(_input_dims(report.path)[0], str)  # a symbolic batch dimension
    for batch in (1, 8):
        assert verify_onnx(topk, report.path, images[:batch]) <= TOLERANCE
    assert report.to_dict()["path"] == str(report.path)


def test_single_file_with_modern_opset(topk_export: ExportReport) -> None:
    path = topk_export.path
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no external data or other side files
    assert not file_uses_external_data(path)
    model = onnx.load(str(path))  # would fail if weights lived in another file
    onnx.checker.check_model(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17 and topk_export.opset == opset


def test_static_batch_head_and_mlp_pruned(dense: torch.nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    config = PruneConfig.uniform(describe(dense), head_ratio=0.67, mlp_ratio=0.5)
    pruned = prune_model(dense, config, calibration=[images[:4]])
    assert count_params(pruned) < count_params(dense)
    report = export_onnx(pruned, tmp_path / "heads_mlp.onnx", batch_size=2, dynamic_batch=False, images=images)
    assert not report.dynamic_batch and report.checked_batches == (2,)
    assert _input_dims(report.path) == [2, 3, 224, 224]
    assert report.max_abs_diff is not None and report.max_abs_diff <= TOLERANCE
    assert verify_onnx(pruned, report.path, images[2:4]) <= TOLERANCE


def test_threshold_exports_in_masked_form(dense: torch.nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    config = PruneConfig.uniform(
        describe(dense), threshold=1.0, at=(3, 6, 9), package_token=True, score="head_weighted"
    )
    pruned = prune_model(dense, config)
    with torch.no_grad():
        pruned(images)
    assert len(set(pruned.last_token_counts[-1].tolist())) > 1  # real images keep different token counts
    try:
        report = export_onnx(pruned, tmp_path / "threshold.onnx", images=images)
    finally:
        assert pruned.compact_tokens  # restored even when the export fails
    assert any("speedup is not in the graph" in note for note in report.notes)
    assert report.max_abs_diff is not None and report.max_abs_diff <= TOLERANCE
    assert verify_onnx(pruned, report.path, images) <= TOLERANCE


def test_old_opset_is_refused(topk: PrunedViT, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset >= 17"):
        export_onnx(topk, tmp_path / "old.onnx", opset=13)
    assert not (tmp_path / "old.onnx").exists()


def test_an_export_logs_nothing_below_warning_from_the_exporter(tmp_path: Path, caplog) -> None:
    # onnxscript and onnx_ir logged ~450 INFO lines per export into the service's log.
    from tests.search.tiny import tiny_model

    dense = tiny_model()
    pruned = prune_model(dense, PruneConfig.uniform(describe(dense), keep_ratio=0.7, at=(2,)))
    logging.getLogger("onnx_ir.passes").setLevel(logging.DEBUG)  # a child with a level of its own is quieted too
    try:
        with caplog.at_level(logging.DEBUG):
            export_onnx(pruned, tmp_path / "tiny.onnx")
        noisy = [r for r in caplog.records if r.name.split(".")[0] in ("onnxscript", "onnx_ir")]
        assert [f"{r.name}: {r.getMessage()}" for r in noisy if r.levelno < logging.WARNING] == []
        # Restored afterwards: a caller that asked for the exporter's details still gets them elsewhere.
        assert logging.getLogger("onnx_ir.passes").level == logging.DEBUG
        assert logging.getLogger("onnxscript").level == logging.NOTSET
    finally:
        logging.getLogger("onnx_ir.passes").setLevel(logging.NOTSET)
