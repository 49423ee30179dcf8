"""Tests for pruning.bundle: bundles rebuild the exact pruned model, fail loudly when broken, write atomically.

Most tests use a randomly initialised DeiT-Tiny (real shapes, no download); one uses the real weights
from the `deit_tiny_weights` fixture. Round trips compare logits with torch.equal: a bundle must
reproduce the model bit for bit, not approximately.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import yaml
from PIL import Image

import pruning.loading
from pruning import PruneConfig, PrunedViT, describe, prune_model
from pruning.bundle import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    METRICS_FILE,
    ONNX_FILE,
    README_FILE,
    TIMM_PRETRAINED,
    WEIGHTS_FILE,
    BundleError,
    load_bundle,
    save_bundle,
)
from pruning.flops import count_flops, count_params
from pruning.loading import create_model

TINY = "deit_tiny_patch16_224"
BUNDLE_FILES = {CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, README_FILE}
METRICS = {
    "dataset": "imagenet-sample (8 images)",
    "top1": 62.5,
    "gflops": 1.502,
    "fidelity": {"agreement": 87.5, "kl": 0.05},
}


def _random_dense(**kwargs) -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model(TINY, pretrained=False, **kwargs).eval()


def _topk_config(model: torch.nn.Module) -> PruneConfig:
    """Every kind of structural pruning at once: top-k tokens with a package token, heads and MLP."""
    return PruneConfig.uniform(
        describe(model), keep_ratio=0.7, at=(3, 6, 9), package_token=True, head_ratio=0.67, mlp_ratio=0.5
    )


@pytest.fixture(scope="module")
def dense() -> torch.nn.Module:
    return _random_dense()


@pytest.fixture(scope="module")
def topk(dense: torch.nn.Module) -> PrunedViT:
    return prune_model(dense, _topk_config(dense))


@pytest.fixture(scope="module")
def other(dense: torch.nn.Module) -> PrunedViT:
    """A second, different pruned model (to overwrite a bundle with)."""
    return prune_model(dense, PruneConfig.uniform(describe(dense), keep_ratio=0.5, at=(2,)))


@pytest.fixture(scope="module")
def saved(topk: PrunedViT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid bundle directory; tests that corrupt it work on a copy."""
    return save_bundle(topk, tmp_path_factory.mktemp("saved") / "bundle", metrics=METRICS)


def _logits(model: torch.nn.Module, batch: int = 2, size: int = 224) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(batch, 3, size, size, generator=generator))


def _assert_same_model(loaded: PrunedViT, original: PrunedViT, size: int = 224) -> None:
    assert isinstance(loaded, PrunedViT)
    assert not loaded.training and loaded.compact_tokens
    assert loaded.config == original.config
    assert loaded.spec == original.spec
    assert torch.equal(_logits(loaded, size=size), _logits(original, size=size))
    loaded_counts = [c.tolist() for c in loaded.last_token_counts]
    assert loaded_counts == [c.tolist() for c in original.last_token_counts]


# --------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["bundle", "bundle.zip"])
def test_round_trip_is_exact(topk: PrunedViT, tmp_path: Path, name: str) -> None:
    path = save_bundle(topk, tmp_path / name, metrics=METRICS)
    assert path == tmp_path / name
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            assert set(zf.namelist()) == BUNDLE_FILES
    else:
        assert {p.name for p in path.iterdir()} == BUNDLE_FILES
    _assert_same_model(load_bundle(path), topk)


def test_config_metrics_and_card(saved: Path, topk: PrunedViT, dense: torch.nn.Module) -> None:
    config = json.loads((saved / CONFIG_FILE).read_text())
    assert config["format"] == FORMAT and config["format_version"] == 1  # a float model: every version reads it
    assert FORMAT_VERSION == 2 and "quantisation" not in config
    assert config["base_model"] == TINY
    assert config["model_kwargs"] == {}
    assert config["image_size"] == [224, 224]
    assert PruneConfig.model_validate(config["prune_config"]) == topk.config
    provenance = config["provenance"]
    assert set(provenance) == {"vitprune_version", "created", "weights_sha256", "extra"}
    created = datetime.fromisoformat(provenance["created"])
    assert created.utcoffset() == timedelta(0)
    assert json.loads((saved / METRICS_FILE).read_text()) == METRICS

    card = (saved / README_FILE).read_text()
    for text in (TINY, "## What was pruned", "| 3 | 2 of 3 |", "384 of 768", "top-k, keep 70%", "load_bundle"):
        assert text in card
    assert "imagenet-sample (8 images)" in card  # the accuracy note names the image set
    assert "| fidelity.agreement | 87.5 |" in card  # figures the card has no section for are still shown
    # parameters are counted on weightless models; they must match counting the real ones
    assert f"| Parameters | {count_params(topk) / 1e6:.2f} M of {count_params(dense) / 1e6:.2f} M dense" in card
    # FLOPs are the metrics' figure, never a recount (the model really has other FLOPs than this made-up 1.502 G)
    assert abs(count_flops(topk, torch.zeros(1, 3, 224, 224)) / 1e9 - 1.502) > 0.05
    assert "| FLOPs per image | 1.502 G |" in card


def test_metrics_default_to_empty(topk: PrunedViT, tmp_path: Path) -> None:
    path = save_bundle(topk, tmp_path / "bundle", provenance={"run": "test", "weights_sha256": "ab" * 32})
    assert json.loads((path / METRICS_FILE).read_text()) == {}
    provenance = json.loads((path / CONFIG_FILE).read_text())["provenance"]
    assert provenance["extra"] == {"run": "test"}
    assert provenance["weights_sha256"] == "ab" * 32
    card = (path / README_FILE).read_text()
    assert "No accuracy was recorded" in card and "No latency was recorded" in card
    assert "| FLOPs per image | not recorded in metrics.json |" in card  # counted where metrics are made, not here
    assert "ab" * 32 in card and "- run: test" in card


def test_loading_never_touches_the_dense_weights(
    dense: torch.nn.Module, topk: PrunedViT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "dense.safetensors"  # the file `topk` was (notionally) pruned from
    safetensors.torch.save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, str(weights))
    path = save_bundle(topk, tmp_path / "bundle.zip", weights=weights)
    recorded = json.loads(zipfile.ZipFile(path).read(CONFIG_FILE))["provenance"]["weights_sha256"]
    assert recorded == hashlib.sha256(weights.read_bytes()).hexdigest()
    weights.unlink()

    calls: list[dict] = []
    real_create = timm.create_model

    def spy(name: str, *args, **kwargs):
        calls.append(kwargs)
        return real_create(name, *args, **kwargs)

    def no_weight_files(*_args, **_kwargs):
        raise AssertionError("load_bundle read a weights file")

    monkeypatch.setattr(timm, "create_model", spy)
    monkeypatch.setattr(pruning.loading, "load_state_dict_file", no_weight_files)
    loaded = load_bundle(path)
    assert calls and all(call.get("pretrained") is False for call in calls)
    _assert_same_model(loaded, topk)


def test_real_deit_tiny_round_trip(deit_tiny_weights: Path, tmp_path: Path) -> None:
    real = create_model(TINY, weights=deit_tiny_weights)
    pruned = prune_model(real, _topk_config(real))
    path = save_bundle(pruned, tmp_path / "deit_tiny_pruned.zip", weights=deit_tiny_weights)
    _assert_same_model(load_bundle(path), pruned)


def test_threshold_round_trip(dense: torch.nn.Module, tmp_path: Path) -> None:
    config = PruneConfig.uniform(
        describe(dense), threshold=1.0, at=(3, 6, 9), package_token=True, score="head_weighted", mlp_ratio=0.5
    )
    pruned = prune_model(dense, config)
    path = save_bundle(pruned, tmp_path / "threshold")
    assert "not counted (token counts differ per image" in (path / README_FILE).read_text()
    _assert_same_model(load_bundle(path), pruned)


def test_model_kwargs_are_derived_and_used(tmp_path: Path) -> None:
    small = _random_dense(num_classes=10, img_size=160)
    pruned = prune_model(small, _topk_config(small))
    path = save_bundle(pruned, tmp_path / "small")
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["model_kwargs"] == {"num_classes": 10, "img_size": [160, 160]}
    assert config["image_size"] == [160, 160]
    _assert_same_model(load_bundle(path), pruned, size=160)


def test_wrong_model_kwargs_are_refused_at_save(topk: PrunedViT, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not rebuild"):
        save_bundle(topk, tmp_path / "bundle", model_kwargs={"num_classes": 5})
    assert list(tmp_path.iterdir()) == []


def test_zipped_bundle_folder_loads(saved: Path, topk: PrunedViT, tmp_path: Path) -> None:
    archive = tmp_path / "by_hand.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in saved.iterdir():
            zf.write(file, f"my_bundle/{file.name}")
    _assert_same_model(load_bundle(archive), topk)


# --------------------------------------------------------------------------------------------- model cards

PREP = {
    "resize": 248,
    "crop": [224, 224],
    "crop_mode": "center",
    "crop_pct": 0.9,
    "interpolation": "bicubic",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
SEARCH_ROW = {
    "config": {"blocks": [], "score": "cls_attn", "package_token": True, "round_to": 8},
    "config_key": "0123456789abcdef",
    "val": {"n_images": 500, "top1": 74.5, "top5": 92.25, "agreement": 88.0, "kl": 0.1234, "extra": None},
    "predicted_ms": 3.2109,
    "measured_ms": 4.5,
    "latency_mismatch": True,
    "params": 3_100_000,
    "gflops": 1.502,
    "trial": 24,
    "calib_accuracy": 77.5,
    "recovered": True,
    "bundle": "models/trial-0024",
    "dense_ms_same_run": None,
    "datasets": {
        "val": {"name": "imagenet-sample", "images": 500, "classes": 1000, "labelled": True, "preprocessing": PREP},
        "calib": {"name": "imagenet-sample", "images": 500, "classes": 1000, "labelled": True, "preprocessing": PREP},
    },
    "device": {"name": "host-cpu", "kind": "measured", "hardware": "Some CPU", "runtime": "torch (cpu)", "threads": 2},
    "latency_batch": 1,
    "budget_ms": 4.0,
    "dense": {"val": {"n_images": 500, "top1": 78.4, "agreement": None}, "predicted_ms": 6.0, "gflops": 2.5074},
}
"""A metrics.json as the search writes it (internal fields and nulls included), trial 24 of issue 17."""


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_reads_like_a_hub_card_with_every_figure_labelled(topk: PrunedViT, tmp_path: Path) -> None:
    provenance = {
        "study": "vitprune-deit",
        "trial": 24,
        "device": "host-cpu",
        "batch": 1,
        "weights": "model.safetensors",
    }
    path = save_bundle(topk, tmp_path / "bundle", metrics=SEARCH_ROW, provenance=provenance)
    card = (path / README_FILE).read_text()

    meta = _front_matter(card)
    assert meta["library_name"] == "vitprune" and {"image-classification", "timm", "pruned"} <= set(meta["tags"])
    assert meta["base_model"] == "timm/deit_tiny_patch16_224.fb_in1k"
    assert "license" not in meta  # a local file: vitprune cannot know its licence, so it claims none ...
    assert "Licence of the base weights | unknown" in card  # ... and says so
    for heading in (
        "## Model details",
        "## What was pruned",
        "## Accuracy",
        "## Fidelity to the dense model",
        "## Latency",
        "## Files",
        "## Usage",
        "## Provenance",
    ):
        assert f"\n{heading}\n" in card
    # Validation leads, and each accuracy names its images; calibration is said to be what the search chose on.
    assert card.index("Validation top-1 **74.5%**") < card.index("Calibration top-1 77.5%")
    assert "on 500 validation images of `imagenet-sample`, 1000 classes; the dense model: 78.4%" in card
    assert "Calibration top-1 77.5% on 500 calibration images of `imagenet-sample`" in card
    assert "resize to 248 px (shorter side, bicubic), center crop 224x224" in card
    assert "agreement with the dense model: 88.0%" in card and "0.1234 nats" in card
    assert "| FLOPs per image | 1.502 G of 2.507 G dense (60%) |" in card  # metrics.json's figure, as it is
    assert "Target device: `host-cpu` (measured, Some CPU, torch (cpu), 2 threads)" in card
    assert "Budget of the search: 4.00 ms" in card and "3.21 ms (dense model 6.00 ms)" in card
    assert "Measured on the machine that made the bundle: 4.50 ms" in card and "differ by more than 10%" in card
    assert "search `vitprune-deit`, trial 24" in card
    assert "does not know where it came from" in card
    size = (path / WEIGHTS_FILE).stat().st_size / (1 << 20)
    assert f"| `model.safetensors` | {size:.1f} MB |" in card
    # No Python reprs, no nulls, no bookkeeping fields.
    for unwanted in ("None", "null", "{'", "dense_ms_same_run", "models/trial-0024", "config_key", "heads_kept"):
        assert unwanted not in card


def test_card_of_timm_pretrained_weights_names_their_licence_and_training_set(topk: PrunedViT, tmp_path: Path) -> None:
    path = save_bundle(topk, tmp_path / "bundle", metrics=SEARCH_ROW, provenance={"weights": TIMM_PRETRAINED})
    card = (path / README_FILE).read_text()
    meta = _front_matter(card)
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["imagenet-1k"]
    assert "apache-2.0 (timm's pretrained weights)" in card


def test_card_of_a_model_with_per_image_token_counts_says_what_its_flops_are(
    dense: torch.nn.Module, tmp_path: Path
) -> None:
    pruned = prune_model(dense, PruneConfig.uniform(describe(dense), threshold=1.0, at=(3, 6)))
    path = save_bundle(pruned, tmp_path / "bundle", metrics={"gflops": 1.1149, "gflops_images": 32})
    card = (path / README_FILE).read_text()
    assert "| FLOPs per image | 1.115 G, the mean over 32 validation images (token counts differ per image) |" in card
    assert "threshold, keep score >= 1 x mean" in card  # the op's own words for the card


def test_card_of_an_older_bundle_layout_has_no_nulls(topk: PrunedViT, tmp_path: Path) -> None:
    """metrics.json as the search wrote it before it named its images: still labelled, nothing unknown shown as None."""
    old = {key: SEARCH_ROW[key] for key in ("config", "val", "predicted_ms", "params", "gflops", "calib_accuracy")}
    path = save_bundle(topk, tmp_path / "bundle", metrics=old | {"bundle": "models/x", "dense_ms_same_run": None})
    card = (path / README_FILE).read_text()
    assert "Validation top-1 **74.5%** (top-5 92.2%) on 500 validation images." in card
    assert "Calibration top-1 77.5% on the calibration images: the search chose among models on these images" in card
    assert "None" not in card and "models/x" not in card


def test_card_usage_snippet_loads_the_bundle_and_classifies_an_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kwargs = {"num_classes": 10, "img_size": 32, "depth": 2}
    small = _random_dense(**kwargs)
    pruned = prune_model(small, PruneConfig.uniform(describe(small), keep_ratio=0.5, at=(1,), mlp_ratio=0.5))
    path = save_bundle(pruned, tmp_path / "small.zip", model_kwargs=kwargs)
    card = zipfile.ZipFile(path).read(README_FILE).decode()
    snippet = card.split("```python\n")[1].split("```")[0]
    image = tmp_path / "image.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(image)
    exec(snippet.replace("path/to/bundle", str(path)).replace("image.jpg", str(image)), {})
    classes, scores = (json.loads(f"[{part.strip('[]')}]") for part in capsys.readouterr().out.strip().split("] ["))
    with torch.inference_mode():
        expected = load_bundle(path)(_eval_image(image, pruned)).softmax(dim=-1).topk(5)
    assert classes == expected.indices[0].tolist()
    assert scores == pytest.approx(expected.values[0].tolist()) and scores == sorted(scores, reverse=True)


def _eval_image(path: Path, model: PrunedViT) -> torch.Tensor:
    """The image as timm's eval transform for the model gives it (what the snippet should do)."""
    config = timm.data.resolve_data_config({}, model=model.model)
    config["input_size"] = (3, *model.spec.image_size)
    return timm.data.create_transform(**config)(Image.open(path).convert("RGB")).unsqueeze(0)


# ------------------------------------------------------------------------------------------ broken bundles


def _edit_config(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        config = json.loads((path / CONFIG_FILE).read_text())
        edit(config)
        (path / CONFIG_FILE).write_text(json.dumps(config))

    return apply


def _set_block0(config: dict) -> None:
    config["prune_config"]["blocks"][0].update(mlp_hidden=8, channels_kept=list(range(8)))


def _unpin(config: dict) -> None:
    config["prune_config"]["blocks"][0]["heads_kept"] = None


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "wrong format": (_edit_config(lambda c: c.update(format="something-else")), r"config\.json: format is"),
    "newer version": (_edit_config(lambda c: c.update(format_version=3)), r"format_version 3 is newer"),
    "bad version": (_edit_config(lambda c: c.update(format_version="1")), r"format_version must be"),
    "missing field": (_edit_config(lambda c: c.pop("base_model")), r"config\.json: missing field\(s\) base_model"),
    "unknown model": (_edit_config(lambda c: c.update(base_model="no_such_vit")), r"config\.json: cannot create"),
    "bad prune_config": (_edit_config(lambda c: c["prune_config"].update(score="x")), r"prune_config is invalid"),
    "unpinned indices": (_edit_config(_unpin), r"block 0 does not pin"),
    "config/weights mismatch": (
        _edit_config(_set_block0),
        r"model\.safetensors does not match config\.json: 3 shape mismatch.*blocks\.0\.mlp\.fc1\.weight",
    ),
    "image size mismatch": (_edit_config(lambda c: c.update(image_size=[160, 160])), r"image_size \[160, 160\]"),
    "not json": (lambda p: (p / CONFIG_FILE).write_text("{not json"), r"config\.json: not valid JSON"),
    "missing weights": (lambda p: (p / WEIGHTS_FILE).unlink(), r"model\.safetensors: missing"),
    "missing config": (lambda p: (p / CONFIG_FILE).unlink(), r"config\.json: missing"),
    "truncated weights": (
        lambda p: (p / WEIGHTS_FILE).write_bytes((p / WEIGHTS_FILE).read_bytes()[:1000]),
        r"model\.safetensors: not a valid safetensors file",
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_bundle_raises_bundle_error(saved: Path, tmp_path: Path, breakage: str) -> None:
    broken = shutil.copytree(saved, tmp_path / "broken")
    damage, message = BREAKAGES[breakage]
    damage(broken)
    with pytest.raises(BundleError, match=message):
        load_bundle(broken)


def test_missing_bundle_raises(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle not found"):
        load_bundle(tmp_path / "nothing")


@pytest.mark.parametrize("member", ["../config.json", "/etc/config.json", "a/../../config.json"])
def test_zip_with_unsafe_member_is_refused(saved: Path, tmp_path: Path, member: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in saved.iterdir():
            zf.write(file, file.name)
        zf.writestr(member, "{}")
    with pytest.raises(BundleError, match="unsafe member name"):
        load_bundle(archive)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip"]


def test_zip_without_weights_is_refused(saved: Path, tmp_path: Path) -> None:
    archive = tmp_path / "partial.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(saved / CONFIG_FILE, CONFIG_FILE)
    with pytest.raises(BundleError, match=r"model\.safetensors: missing"):
        load_bundle(archive)


# ------------------------------------------------------------------------------------- atomic writing


def _failing_save(*_args, **_kwargs) -> None:
    raise OSError("disk full (simulated)")


@pytest.mark.parametrize("name", ["bundle", "bundle.zip"])
def test_failed_save_leaves_nothing(
    topk: PrunedViT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(topk, tmp_path / name, metrics=METRICS)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a temporary sibling


@pytest.mark.parametrize("name", ["bundle", "bundle.zip"])
def test_overwrite(
    topk: PrunedViT, other: PrunedViT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = save_bundle(topk, tmp_path / name)
    with pytest.raises(FileExistsError):
        save_bundle(topk, path)

    with monkeypatch.context() as patch:  # a failed overwrite keeps the old bundle intact
        patch.setattr(safetensors.torch, "save_file", _failing_save)
        with pytest.raises(OSError):
            save_bundle(topk, path, overwrite=True)
    _assert_same_model(load_bundle(path), topk)

    save_bundle(other, path, overwrite=True)
    _assert_same_model(load_bundle(path), other)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# ------------------------------------------------------------------------------------------------ ONNX


@pytest.mark.slow
def test_bundle_with_onnx(topk: PrunedViT, tmp_path: Path) -> None:
    path = save_bundle(topk, tmp_path / "with_onnx.zip", onnx=True)
    with zipfile.ZipFile(path) as zf:
        assert set(zf.namelist()) == BUNDLE_FILES | {ONNX_FILE}
        report = json.loads(zf.read(CONFIG_FILE))["onnx"]
        card = zf.read(README_FILE).decode()
    assert report["path"] == ONNX_FILE and report["opset"] >= 17 and report["dynamic_batch"]
    assert report["max_abs_diff"] <= 1e-4
    assert "## ONNX" in card
    _assert_same_model(load_bundle(path), topk)
