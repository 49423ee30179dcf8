"""Create timm Vision Transformers and load their weights safely, with errors a user can act on.

Everything the rest of vitprune knows about "where do the weights come from" lives here: a local
`.safetensors` / `.pth` file, timm's pretrained download, or random initialisation (enough for latency
work). Every failure is a `WeightsError` whose message says what is wrong and how to fix it, because a
raw timm/torch traceback ("size mismatch for blocks.0.attn.qkv.weight ...", 46 s of hub retries) does
not tell a user that they passed the wrong `--model` or that this machine is offline.

Library layer: imports only torch, timm, safetensors and the standard library.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import pickle
import re
import socket
import sys
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import safetensors.torch
import timm
import timm.models
import torch

__all__ = [
    "PICKLE_SUFFIXES",
    "SAFETENSORS_SUFFIXES",
    "ModelNameError",
    "WeightsError",
    "create_model",
    "load_state_dict_file",
]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
# Training scripts wrap the weights in a dict; these are the keys timm, DeiT and DDP checkpoints use.
_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "module")
_DATA_PARALLEL_PREFIX = "module."
_LOCAL_FILE_HINT = (
    "pass a local file instead: weights=path/to/model.safetensors (CLI: --weights path/to/model.safetensors)"
)
_MODEL_HINT = "check that the model name (--model) and options such as num_classes match the checkpoint"
_EXAMPLES = 5
# Seconds to wait for the hub's TCP handshake / metadata request. huggingface_hub retries connection
# errors 5 times with back-off (about 45 s in all), so an unreachable hub must be detected before it.
_CONNECT_TIMEOUT_S = 3.0
_ETAG_TIMEOUT_S = 5
_DEFAULT_HUB_ENDPOINT = "https://huggingface.co"


class WeightsError(ValueError):
    """The weights cannot be loaded; the message says why and what to do about it."""


class ModelNameError(WeightsError):
    """timm has no model of that name; the message lists close names."""


# ---------------------------------------------------------------------------------------------- public


def create_model(
    name: str,
    *,
    weights: str | Path | None = None,
    pretrained: bool = False,
    **model_kwargs: Any,
) -> torch.nn.Module:
    """Build timm model `name` in eval mode, with weights from `weights`, timm's hub, or random init.

    `weights` wins over `pretrained`, so a user with a local file never touches the network. Random init
    (`pretrained=False`, no `weights`) is what latency measurement needs: speed does not depend on values.
    `model_kwargs` go to `timm.create_model` (e.g. `num_classes`, `img_size`).
    """
    _check_model_name(name)
    if weights is not None:
        model = timm.create_model(name, pretrained=False, **model_kwargs)
        _load_weights_into(model, load_state_dict_file(weights), name)
    elif pretrained:
        model = _create_pretrained(name, model_kwargs)
    else:
        model = timm.create_model(name, pretrained=False, **model_kwargs)
    return model.eval()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors` or `.pth/.pt/.bin` without ever running pickled code.

    Pickle files go through `torch.load(weights_only=True)` only, so a checkpoint from an untrusted
    upload cannot execute code. Training wrappers (`model`, `state_dict`, `model_ema`, `module`) are
    unwrapped and a DataParallel `module.` key prefix is stripped, so the result is keyed like the model.
    """
    path = _existing_file(Path(path))
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        raw: object = _read_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        raw = _read_torch_pickle(path)
    else:
        supported = ", ".join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
        raise WeightsError(
            f"weights file {path} has an unsupported extension {path.suffix!r}; "
            f"use one of {supported} (safetensors is preferred)"
        )
    return _strip_data_parallel_prefix(_unwrap_state_dict(raw, path))


# ------------------------------------------------------------------------------------------ model names


def _check_model_name(name: str) -> None:
    """Fail with close suggestions before timm's bare 'Unknown model' RuntimeError."""
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = _close_model_names(arch)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ModelNameError(f"unknown timm model {name!r}{hint}")
    if tag and name not in timm.list_pretrained(name):
        tags = timm.list_pretrained(f"{arch}.*")
        known = f"known tags: {', '.join(tags)}" if tags else f"{arch} has no pretrained tags"
        raise ModelNameError(f"unknown pretrained tag {tag!r} for timm model {arch!r}; {known}")


def _close_model_names(arch: str, limit: int = _EXAMPLES) -> list[str]:
    """Names containing `arch` first (a prefix like 'deit_tiny'), then spelling neighbours."""
    substring = timm.list_models(f"*{arch}*") if arch else []
    spelling = difflib.get_close_matches(arch, timm.list_models(), n=limit, cutoff=0.6)
    return list(dict.fromkeys(substring + spelling))[:limit]


# ------------------------------------------------------------------------------------------ file reading


def _existing_file(path: Path) -> Path:
    """Turn 'missing' and 'is a directory' into messages that say which file to pass."""
    if path.is_dir():
        names = [p.name for p in path.iterdir() if p.suffix.lower() in SAFETENSORS_SUFFIXES]
        inside = sorted(names, key=lambda n: (n != "model.safetensors", n))  # timm/HF's usual name first
        hint = f"; did you mean {path / inside[0]}?" if inside else ""
        raise WeightsError(f"weights path {path} is a directory, not a weights file{hint}")
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; check the path (relative to {Path.cwd()})")
    return path


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors cannot hold code; a failure here means a truncated or non-safetensors file."""
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except OSError as err:
        raise WeightsError(f"cannot read weights file {path}: {err}") from err
    except Exception as err:  # SafetensorError is not exported under a stable name
        raise WeightsError(
            f"{path} is not a valid safetensors file ({err}); the file may be truncated or in another format"
        ) from err


def _read_torch_pickle(path: Path) -> object:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise WeightsError(f"cannot read weights file {path}: {err}") from err
    except pickle.UnpicklingError as err:
        if _is_weights_only_refusal(err):
            raise WeightsError(_unsafe_pickle_message(path, err)) from err
        raise WeightsError(_invalid_torch_message(path, err)) from err
    except Exception as err:  # torch raises KeyError/EOFError/RuntimeError for non-checkpoints
        raise WeightsError(_invalid_torch_message(path, err)) from err


def _is_weights_only_refusal(err: Exception) -> bool:
    """torch says 'Weights only load failed' when the pickle names a class or function it will not run."""
    text = str(err)
    return "weights only" in text.lower() or "weights_only" in text


def _unsafe_pickle_message(path: Path, err: Exception) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f" (it references {found.group(1)})" if found else ""
    return (
        f"{path} contains Python objects that are not safe to load{what}; vitprune only reads plain "
        "tensors from pickle files. If you trust the file, convert it to safetensors where it was made "
        "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) and pass that instead"
    )


def _invalid_torch_message(path: Path, err: Exception) -> str:
    reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return f"{path} is not a valid PyTorch checkpoint ({reason}); the file may be truncated or in another format"


# -------------------------------------------------------------------------------- state-dict unwrapping


def _unwrap_state_dict(raw: object, path: Path) -> dict[str, torch.Tensor]:
    """Descend through training wrappers ({'model': ..., 'epoch': 3}) to the flat name -> tensor dict."""
    current = raw
    while isinstance(current, Mapping) and not _is_flat_state_dict(current):
        inner = next((current[k] for k in _WRAPPER_KEYS if isinstance(current.get(k), Mapping)), None)
        if inner is None:
            break
        current = inner
    if not isinstance(current, Mapping) or not _is_flat_state_dict(current):
        raise WeightsError(_no_state_dict_message(current, path))
    return dict(current)


def _is_flat_state_dict(value: Mapping[Any, Any]) -> bool:
    return bool(value) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _no_state_dict_message(value: object, path: Path) -> str:
    wrappers = ", ".join(_WRAPPER_KEYS)
    if not isinstance(value, Mapping):
        found = f"a {type(value).__name__}"
    elif not value:
        found = "an empty dict"
    else:
        bad = next(k for k, v in value.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
        found = f"a dict whose entry {bad!r} is a {type(value[bad]).__name__}, not a tensor"
    return (
        f"{path} holds {found}, not a state dict of tensors (also looked under {wrappers}); "
        "save model.state_dict() instead"
    )


def _strip_data_parallel_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DataParallel/DDP prefix every key with 'module.'; the bare model has no such prefix."""
    if all(k.startswith(_DATA_PARALLEL_PREFIX) for k in state_dict):
        return {k[len(_DATA_PARALLEL_PREFIX) :]: v for k, v in state_dict.items()}
    return state_dict


# ---------------------------------------------------------------------------------- loading into model


def _load_weights_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], name: str) -> None:
    """Convert like timm does for its own downloads, then load strictly after a readable fit check."""
    state_dict = _apply_checkpoint_filter(model, state_dict)
    problem = _describe_misfit(model, state_dict)
    if problem:
        raise WeightsError(f"weights do not fit {name}: {problem}; {_MODEL_HINT}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:  # the fit check should have caught it; keep the promise of no bare errors
        raise WeightsError(f"weights do not fit {name}: {err}; {_MODEL_HINT}") from err


def _checkpoint_filter(model: torch.nn.Module) -> Callable[..., Any] | None:
    """timm keeps a per-family converter (original DeiT/JAX/CLIP layouts) next to the model class."""
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    return fn if callable(fn) else None


def _apply_checkpoint_filter(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Run timm's converter; if it chokes on a foreign layout, the fit check explains the raw keys."""
    fn = _checkpoint_filter(model)
    if fn is None:
        return state_dict
    try:
        return dict(fn(state_dict, model))
    except Exception:
        return state_dict


def _describe_misfit(model: torch.nn.Module, state_dict: Mapping[str, Any]) -> str:
    """Missing, unexpected and wrong-shaped keys in one sentence, a few examples of each."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} has {_shape(state_dict[k])} in the file but the model needs {_shape(v)}"
        for k, v in expected.items()
        if k in state_dict and _shape(state_dict[k]) != _shape(v)
    ]
    parts = [
        _examples(mismatched, "shape mismatch", "shape mismatches"),
        _examples(missing, "key missing from the file", "keys missing from the file"),
        _examples(unexpected, "unexpected key in the file", "unexpected keys in the file"),
    ]
    return "; ".join(p for p in parts if p)


def _examples(items: list[str], singular: str, plural: str) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:_EXAMPLES])
    more = ", ..." if len(items) > _EXAMPLES else ""
    return f"{len(items)} {singular if len(items) == 1 else plural}, e.g. {shown}{more}"


def _shape(value: Any) -> list[int] | None:
    return list(value.shape) if isinstance(value, torch.Tensor) else None


# ---------------------------------------------------------------------------------- pretrained download


def _create_pretrained(name: str, model_kwargs: dict[str, Any]) -> torch.nn.Module:
    """timm's own download, made to fail in seconds (not ~45 s of retries) when the hub is unreachable."""
    source = _pretrained_source_url(name)
    if _hub_offline():
        reason = "huggingface_hub offline mode is on (HF_HUB_OFFLINE) and they are not in the local cache"
        return _timm_pretrained(name, model_kwargs, offline=True, reason=reason)
    unreachable = _unreachable_reason(source)
    if unreachable:
        reason = f"{unreachable}, and they are not in the local cache"
        return _timm_pretrained(name, model_kwargs, offline=True, reason=reason)
    return _timm_pretrained(name, model_kwargs, offline=False, reason="the download failed")


def _timm_pretrained(name: str, model_kwargs: dict[str, Any], *, offline: bool, reason: str) -> torch.nn.Module:
    """Call timm with short hub timeouts; with offline=True only the local cache is consulted."""
    try:
        with _hub_settings(offline=offline):
            return timm.create_model(name, pretrained=True, **model_kwargs)
    except TypeError:
        raise  # a bad keyword argument is a programming error, not a weights problem
    except Exception as err:
        cause = _first_sentence(str(err)) or type(err).__name__
        raise WeightsError(
            f"cannot get pretrained weights for {name}: {reason} ({type(err).__name__}: {cause}); {_LOCAL_FILE_HINT}"
        ) from err


def _first_sentence(text: str, limit: int = 200) -> str:
    """Library errors can run to a page; the first sentence is enough next to our own explanation."""
    first = text.strip().split("\n", 1)[0].split(". ", 1)[0]
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _pretrained_source_url(name: str) -> str:
    """The URL timm will fetch from: the Hugging Face hub when the model has a hub id, else its url."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise WeightsError(f"timm has no pretrained weights for {name}; {_LOCAL_FILE_HINT}, or use random init")
    if cfg.hf_hub_id:
        return _hub_endpoint()
    return cfg.url or ""


def _hub_constants() -> Any:
    """huggingface_hub.constants if timm loaded it; read via sys.modules to keep this layer's imports."""
    return sys.modules.get("huggingface_hub.constants")


def _hub_endpoint() -> str:
    constants = _hub_constants()
    endpoint = getattr(constants, "ENDPOINT", None) or os.environ.get("HF_ENDPOINT") or _DEFAULT_HUB_ENDPOINT
    return endpoint.rstrip("/")


def _hub_offline() -> bool:
    """Offline if set at import time (huggingface_hub's constant) or in the environment now."""
    if getattr(_hub_constants(), "HF_HUB_OFFLINE", False):
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _unreachable_reason(url: str) -> str:
    """A TCP handshake with the server (or the proxy in front of it); '' when reachable or not a URL."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return ""
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or host, proxy_parts.port or 80
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S):
            return ""
    except OSError as err:
        return f"cannot connect to {host}:{port} for {parts.scheme}://{parts.netloc} ({err})"


@contextlib.contextmanager
def _hub_settings(*, offline: bool) -> Iterator[None]:
    """Temporarily shorten the hub's metadata timeout and, when asked, switch it to cache-only mode.

    huggingface_hub reads HF_HUB_ETAG_TIMEOUT / HF_HUB_OFFLINE into module constants when imported, so
    changing the environment now would do nothing; the constants are swapped and restored instead.
    A user's own HF_HUB_ETAG_TIMEOUT is left alone.
    """
    constants = _hub_constants()
    overrides: dict[str, Any] = {}
    if "HF_HUB_ETAG_TIMEOUT" not in os.environ:
        overrides["HF_HUB_ETAG_TIMEOUT"] = _ETAG_TIMEOUT_S
    if offline:
        overrides["HF_HUB_OFFLINE"] = True
    saved = {k: getattr(constants, k) for k in overrides if hasattr(constants, k)}
    for key in saved:
        setattr(constants, key, overrides[key])
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(constants, key, value)
