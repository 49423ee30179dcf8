"""Tests for pruning.loading: every way of getting weights works, and every way of failing says why.

Files are made from small randomly initialised timm models in tmp_path; the real DeiT-Tiny weights come
from the `deit_tiny_weights` fixture. Nothing here reaches the internet: hub tests point the hub at a
closed local port or switch on offline mode, in a subprocess so huggingface_hub reads them at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from pruning.loading import (
    ModelNameError,
    WeightsError,
    create_model,
    load_state_dict_file,
)

TINY = "deit_tiny_patch16_224"
REPO_ROOT = Path(__file__).resolve().parents[2]
CLOSED_PORT_ENDPOINT = "http://127.0.0.1:9"  # discard port: nothing listens, connection refused at once
FAIL_FAST_S = 15.0


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    """A random DeiT-Tiny state dict: real key names and shapes, no download."""
    torch.manual_seed(1)
    model = timm.create_model(TINY, pretrained=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> Path:
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(2, 3, 224, 224))


def _reference_model(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = timm.create_model(TINY, pretrained=False)
    model.load_state_dict(state)
    return model.eval()


# ------------------------------------------------------------------------------------------- happy paths


def test_safetensors_round_trip_gives_identical_outputs(tmp_path: Path, tiny_state: dict) -> None:
    path = _save_safetensors(tiny_state, tmp_path / "model.safetensors")
    model = create_model(TINY, weights=path)
    assert not model.training
    torch.testing.assert_close(_outputs(model), _outputs(_reference_model(tiny_state)), rtol=0, atol=0)


WRAPPERS: dict[str, Callable[[dict], object]] = {
    "flat": lambda sd: sd,
    "model": lambda sd: {"model": sd, "epoch": 300},
    "state_dict": lambda sd: {"state_dict": sd, "optimizer": {"lr": 1e-3}},
    "model_ema": lambda sd: {"model_ema": sd},
    "module_prefix": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "model_and_module_prefix": lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("wrap", WRAPPERS.values(), ids=WRAPPERS.keys())
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_torch_checkpoints_are_unwrapped(tmp_path: Path, tiny_state: dict, wrap: Callable, suffix: str) -> None:
    path = tmp_path / f"checkpoint{suffix}"
    torch.save(wrap(tiny_state), path)
    loaded = load_state_dict_file(path)
    assert list(loaded) == list(tiny_state)
    for key, value in tiny_state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_wrapped_pth_loads_into_model(tmp_path: Path, tiny_state: dict) -> None:
    """End to end: a DDP training checkpoint ({'model': {'module.x': ...}}) gives the trained outputs."""
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {f"module.{k}": v for k, v in tiny_state.items()}, "epoch": 300}, path)
    model = create_model(TINY, weights=str(path))
    torch.testing.assert_close(_outputs(model), _outputs(_reference_model(tiny_state)), rtol=0, atol=0)


def test_timm_checkpoint_filter_is_applied(tmp_path: Path, tiny_state: dict) -> None:
    """Old timm ViT files store the patch projection flattened; timm's filter reshapes it to a conv."""
    state = dict(tiny_state)
    conv = state["patch_embed.proj.weight"]
    state["patch_embed.proj.weight"] = conv.reshape(conv.shape[0], -1)
    model = create_model(TINY, weights=_save_safetensors(state, tmp_path / "flat_patch.safetensors"))
    torch.testing.assert_close(model.patch_embed.proj.weight, conv, rtol=0, atol=0)


def test_real_deit_tiny_loads_strictly(deit_tiny_weights: Path) -> None:
    model = create_model(TINY, weights=deit_tiny_weights)
    in_file = safetensors.torch.load_file(str(deit_tiny_weights))
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, in_file["blocks.0.attn.qkv.weight"])
    assert not model.training


def test_random_init_without_weights() -> None:
    model = create_model("deit_small_patch16_224", num_classes=10)
    assert not model.training
    assert model.head.out_features == 10


# ------------------------------------------------------------------------------------------ unsafe files


class _CreatesFileWhenUnpickled:
    """Unpickling this calls open(marker, "w"): the harmless stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": _CreatesFileWhenUnpickled(marker)}, path)
    assert not marker.exists()  # saving alone must not have created it, or the check below proves nothing
    with pytest.raises(WeightsError, match="not safe to load") as info:
        create_model(TINY, weights=path)
    assert "safetensors" in str(info.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- misfit weights


def test_shape_mismatch_names_key_and_both_shapes(tmp_path: Path, tiny_state: dict) -> None:
    path = _save_safetensors(tiny_state, tmp_path / "tiny.safetensors")
    with pytest.raises(WeightsError) as info:
        create_model("deit_small_patch16_224", weights=path)
    message = str(info.value)
    assert "weights do not fit deit_small_patch16_224" in message
    assert "151 shape mismatches" in message
    assert "patch_embed.proj.weight has [192, 3, 16, 16] in the file but the model needs [384, 3, 16, 16]" in message
    assert "--model" in message


def test_missing_and_unexpected_keys_are_reported_together(tmp_path: Path, tiny_state: dict) -> None:
    state = {k: v for k, v in tiny_state.items() if k != "head.weight"}
    state["extra.weight"] = torch.zeros(3)
    path = _save_safetensors(state, tmp_path / "partial.safetensors")
    with pytest.raises(WeightsError) as info:
        create_model(TINY, weights=path)
    message = str(info.value)
    assert "1 key missing from the file, e.g. head.weight" in message
    assert "1 unexpected key in the file, e.g. extra.weight" in message


# ------------------------------------------------------------------------------------------ bad requests


def test_unknown_model_name_suggests_close_names() -> None:
    with pytest.raises(ModelNameError, match="unknown timm model") as info:
        create_model("deit_tiny_patch16")
    assert TINY in str(info.value)
    assert isinstance(info.value, WeightsError)


def test_unknown_pretrained_tag_lists_known_tags() -> None:
    with pytest.raises(ModelNameError, match=r"fb_in1k"):
        create_model(f"{TINY}.no_such_tag")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="weights file not found"):
        create_model(TINY, weights=tmp_path / "nope.safetensors")


def test_directory_points_to_file_inside(tmp_path: Path, tiny_state: dict) -> None:
    _save_safetensors(tiny_state, tmp_path / "model.safetensors")
    with pytest.raises(WeightsError, match="is a directory") as info:
        load_state_dict_file(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(info.value)


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07")
    with pytest.raises(WeightsError, match=r"unsupported extension '\.onnx'"):
        load_state_dict_file(path)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("garbage.safetensors", b"this is not a checkpoint" * 8, "not a valid safetensors file"),
        ("empty.safetensors", b"", "not a valid safetensors file"),
        ("garbage.pth", b"this is not a checkpoint" * 8, "not a valid PyTorch checkpoint"),
        ("empty.pt", b"", "not a valid PyTorch checkpoint"),
    ],
)
def test_garbage_files(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=expected):
        load_state_dict_file(path)


def test_checkpoint_without_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, path)
    with pytest.raises(WeightsError, match="not a state dict of tensors"):
        load_state_dict_file(path)


# ----------------------------------------------------------------------------------- pretrained download

_PRETRAINED_SCRIPT = """
import json, sys, time
from pruning.loading import WeightsError, create_model
start = time.monotonic()
try:
    model = create_model(sys.argv[1], pretrained=True)
    result = {"ok": True, "qkv": model.blocks[0].attn.qkv.weight.flatten()[:8].tolist()}
except WeightsError as err:
    result = {"ok": False, "message": str(err)}
result["seconds"] = time.monotonic() - start
print(json.dumps(result))
"""


def _pretrained_in_subprocess(tmp_path: Path, **env: str) -> dict:
    """huggingface_hub reads HF_ENDPOINT/HF_HUB_OFFLINE at import, so set them before a fresh import."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HUB_ETAG_TIMEOUT"):
        clean.pop(key, None)
    clean.update(HF_HOME=str(tmp_path / "hf_home"), TORCH_HOME=str(tmp_path / "torch_home"))
    clean.update(HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(REPO_ROOT), **env)
    done = subprocess.run(
        [sys.executable, "-c", _PRETRAINED_SCRIPT, TINY],
        env=clean,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pretrained_fails_fast_when_hub_unreachable(tmp_path: Path) -> None:
    result = _pretrained_in_subprocess(tmp_path, HF_ENDPOINT=CLOSED_PORT_ENDPOINT, HF_HUB_OFFLINE="0")
    assert result["ok"] is False
    assert result["seconds"] < FAIL_FAST_S
    assert TINY in result["message"]
    assert "weights=" in result["message"] and "--weights" in result["message"]
    assert "127.0.0.1:9" in result["message"]


@pytest.mark.slow
def test_pretrained_fails_fast_in_offline_mode(tmp_path: Path) -> None:
    result = _pretrained_in_subprocess(tmp_path, HF_HUB_OFFLINE="1", HF_ENDPOINT=CLOSED_PORT_ENDPOINT)
    assert result["ok"] is False
    assert result["seconds"] < FAIL_FAST_S
    assert "offline mode" in result["message"] and "--weights" in result["message"]


def _fake_hub_cache(hf_home: Path, weights: Path) -> None:
    """The huggingface_hub cache layout holding timm's DeiT-Tiny, as if downloaded earlier."""
    repo = hf_home / "hub" / f"models--timm--{TINY}.fb_in1k"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    (snapshot / "model.safetensors").write_bytes(weights.read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": CLOSED_PORT_ENDPOINT}],
    ids=["offline_mode", "hub_unreachable"],
)
def test_pretrained_uses_local_cache_without_network(tmp_path: Path, deit_tiny_weights: Path, env: dict) -> None:
    """Failing fast must not cost users who downloaded once: cached weights still load offline."""
    _fake_hub_cache(tmp_path / "hf_home", deit_tiny_weights)
    result = _pretrained_in_subprocess(tmp_path, **env)
    assert result.get("ok") is True, result.get("message")
    expected = safetensors.torch.load_file(str(deit_tiny_weights))["blocks.0.attn.qkv.weight"]
    torch.testing.assert_close(torch.tensor(result["qkv"]), expected.flatten()[:8])
