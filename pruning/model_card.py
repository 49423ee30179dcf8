"""The README.md model card of a bundle, written like a timm / Hugging Face Hub card.

YAML front matter (library, tags, base model, licence, datasets), then what the model is and what
was pruned, its accuracy on named images with their preprocessing, its fidelity to the dense model,
its latency on the target device, the bundle's files and a snippet that loads it and classifies one
image. Every figure comes from metrics.json as the caller recorded it (FLOPs included: the card
counts nothing itself, so the card, metrics.json and the dashboard show one number), and each is
labelled with the images it was measured on. Internal fields of metrics.json are not shown.

metrics.json comes in two layouts, both read here: the search's (`search.pareto.pareto_row`:
validation figures under `val`) and `vitprune prune`'s (validation figures at the top level).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from pruning.flops import count_params
from pruning.image_sets import describe_preprocessing, eval_data_config, preprocessing
from pruning.model import PrunedViT

__all__ = ["TIMM_PRETRAINED", "model_card"]

TIMM_PRETRAINED = "timm pretrained"
"""`provenance["weights"]` of a model pruned from timm's own pretrained weights (else: the weights file's name)."""

_VAL_KEYS = ("n_images", "top1", "top5", "agreement", "kl")
_SHOWN = frozenset(
    {
        *_VAL_KEYS,
        "val",
        "calib_accuracy",
        "params",
        "gflops",
        "gflops_images",
        "flops",
        "datasets",
        "dataset",
        "dense",
        "predicted_ms",
        "measured_ms",
        "latency_mismatch",
        "device",
        "latency_batch",
        "budget_ms",
        "trial",
        "recovered",
        "objective",
        "calib_score",
        "fine_tune",
        "before_fine_tune",
    }
)
"""metrics.json keys the card's sections show."""
_INTERNAL = frozenset({"bundle", "dense_ms_same_run", "config", "config_key"})
"""metrics.json keys for vitprune's own bookkeeping (paths inside a job's folder, the structure config.json holds)."""

_SCORES = {
    "cls_attn": "the class token's attention, averaged over heads (EViT)",
    "head_weighted": "the class token's attention, weighted by each head's importance for the image",
}
_TRAINING_SETS = {"in1k": "imagenet-1k", "in21k": "imagenet-21k", "in22k": "imagenet-22k", "in12k": "imagenet-12k"}
_FILES = {
    "config.json": "structure (PruneConfig with surviving heads and channels), base model, provenance",
    "model.safetensors": "the pruned weights (timm key names, smaller shapes)",
    "metrics.json": "the figures on this card, as measured",
    "model.onnx": "ONNX export of the pruned model",
}


def model_card(
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    pruned: PrunedViT,
    dense: nn.Module,
    files: Mapping[str, int] | None = None,
) -> str:
    """Markdown describing a bundle, from its config.json, metrics.json and the sizes of its `files`.

    `pruned` and `dense` are only read (structure, parameter counts, timm's pretrained config): they
    may be weightless models on the meta device, as `pruning.bundle` passes them.
    """
    card = _Card(config, metrics, pruned, dense, dict(files or {}))
    sections = [
        card.front_matter(),
        card.summary(),
        card.details(),
        card.pruned_blocks(),
        card.accuracy(),
        card.fidelity(),
        card.latency(),
        card.files(),
        _onnx_lines(config.get("onnx")),
        card.usage(),
        card.provenance(),
        card.other_figures(),
    ]
    return "\n".join(line for section in sections if section for line in [*section, ""]).rstrip("\n") + "\n"


class _Card:
    """The sections of one card; each returns its lines."""

    def __init__(
        self,
        config: Mapping[str, Any],
        metrics: Mapping[str, Any],
        pruned: PrunedViT,
        dense: nn.Module,
        files: dict[str, int],
    ) -> None:
        self.config, self.metrics, self.pruned, self.dense, self.file_sizes = config, metrics, pruned, dense, files
        self.base: str = config["base_model"]
        self.kwargs: dict[str, Any] = dict(config.get("model_kwargs") or {})
        self.recorded_provenance: dict[str, Any] = dict(config.get("provenance") or {})
        self.extra: dict[str, Any] = dict(self.recorded_provenance.get("extra") or {})
        # timm's hub id, licence and training set describe its own weights, of its default architecture only.
        pretrained = (getattr(dense, "pretrained_cfg", None) or {}) if not self.kwargs else {}
        hub_id = pretrained.get("hf_hub_id")
        self.hub_id: str | None = (hub_id if "/" in hub_id else f"timm/{hub_id}") if hub_id else None
        self.hub_licence: str | None = pretrained.get("license")
        self.hub_tag: str | None = pretrained.get("tag")
        self.from_timm = self.extra.get("weights") == TIMM_PRETRAINED and not self.kwargs
        self.val: dict[str, Any] = _val_figures(metrics)
        self.dense_figures: dict[str, Any] = dict(metrics.get("dense") or {})
        self.datasets: dict[str, Any] = _datasets(metrics)
        recorded = self.datasets.get("val", {}).get("preprocessing")
        self.prep: dict[str, Any] = recorded or preprocessing(eval_data_config(dense, pruned.spec.image_size))

    # -- front matter and summary -------------------------------------------------------------------

    def front_matter(self) -> list[str]:
        tags = ["image-classification", "vision-transformer", "timm", "pruned", "vitprune"]
        lines = ["---", "library_name: vitprune", "tags:", *(f"- {tag}" for tag in tags)]
        if self.hub_id:
            lines.append(f"base_model: {_yaml(self.hub_id)}")
        if self.from_timm and self.hub_licence:
            lines.append(f"license: {_yaml(self.hub_licence)}")
        trained_on = self._training_set()
        if trained_on:
            lines += ["datasets:", f"- {_yaml(trained_on)}"]
        lines += ["pipeline_tag: image-classification", "---"]
        return lines

    def _training_set(self) -> str | None:
        """The base weights' training set, where they are timm's and its tag names the set."""
        if not self.from_timm or not self.hub_tag:
            return None
        return next((name for key, name in _TRAINING_SETS.items() if key in self.hub_tag.split("_")), None)

    def summary(self) -> list[str]:
        spec = self.pruned.spec
        lines = [
            f"# {self.base}, pruned with vitprune",
            "",
            f"A physically pruned {self._architecture()}: the removed attention heads and MLP channels are gone"
            " from the weights (smaller matrices, not masks), and token reduction runs inside the blocks marked"
            f" below. Input {spec.image_size[0]}x{spec.image_size[1]} RGB, {spec.num_classes} classes.",
        ]
        quantisation = self.config.get("quantisation")
        if quantisation:
            lines += [
                "",
                f"**Precision: {quantisation['precision']}** ({quantisation['layers']} layers; weights"
                f" {quantisation['weights']}; inputs {quantisation['activations']}; scales {quantisation['scales']}"
                f"). Kept in float: {quantisation['float']}. Every figure below is of the quantised model,"
                " computed as an integer device computes it.",
            ]
        headline = self._headline()
        if headline:
            lines += ["", headline]
        return lines

    def _architecture(self) -> str:
        if not self.kwargs:
            return f"timm `{self.base}`"
        options = ", ".join(f"{key}={_plain(value)}" for key, value in self.kwargs.items())
        return f"timm `{self.base}` built with {options} (not timm's pretrained configuration)"

    def _headline(self) -> str | None:
        """The validation figure first, when there is one."""
        top1, images = self.val.get("top1"), self._images_text("val")
        if top1 is not None:
            return f"**Validation top-1 {_pct(top1)}** on {images}{self._dense_accuracy()}."
        agreement = self.val.get("agreement")
        if agreement is not None:
            return f"**Agrees with the dense model on {_pct(agreement)}** of {images} (the images have no labels)."
        return None

    # -- details and structure ----------------------------------------------------------------------

    def details(self) -> list[str]:
        height, width = self.pruned.spec.image_size
        rows = [
            ("Base model", self._base_model()),
            ("Base weights", self._weights()),
            ("Licence of the base weights", self._licence()),
            ("Parameters", self._params()),
            ("FLOPs per image", self._flops()),
            ("Input", f"{height}x{width} RGB, {_prep_short(self.prep)}"),
            ("Classes", str(self.pruned.spec.num_classes)),
        ]
        return ["## Model details", "", "| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]

    def _base_model(self) -> str:
        text = self._architecture()
        if self.hub_id:
            text += f"; timm's weights for it: [`{self.hub_id}`](https://huggingface.co/{self.hub_id})"
        return text

    def _weights(self) -> str:
        sha = self.recorded_provenance.get("weights_sha256")
        digest = f"sha256 `{sha}`" if sha else "sha256 not recorded"
        source = self.extra.get("weights")
        if source == TIMM_PRETRAINED:
            return f"timm's pretrained weights{f' (`{self.hub_id}`)' if self.hub_id else ''}, {digest}"
        if source:
            name = str(source).replace("\\", "/").rsplit("/", 1)[-1]
            return f"the file `{name}`, {digest}; vitprune does not know where it came from"
        return f"not recorded, {digest}"

    def _licence(self) -> str:
        if self.from_timm:
            return f"{self.hub_licence} (timm's pretrained weights)" if self.hub_licence else "not stated by timm"
        why = "they came from a file vitprune cannot trace" if self.extra.get("weights") else "no source recorded"
        known = f"; timm's own weights for this architecture are under {self.hub_licence}" if self.hub_licence else ""
        return f"unknown: {why}{known}"

    def _params(self) -> str:
        return _versus(count_params(self.pruned), count_params(self.dense), 1e6, "M")

    def _flops(self) -> str:
        gflops = self.metrics.get("gflops")
        if gflops is None and isinstance(self.metrics.get("flops"), (int, float)):
            gflops = self.metrics["flops"] / 1e9
        if gflops is None:
            if self.pruned.config.per_image:
                return "not counted (token counts differ per image; `vitprune evaluate` counts them on your images)"
            return "not recorded in metrics.json"
        dense = self.dense_figures.get("gflops")
        text = f"{_gflops(gflops)} G" + (f" of {_gflops(dense)} G dense ({gflops / dense:.0%})" if dense else "")
        images = self.metrics.get("gflops_images")
        if images:
            text += f", the mean over {images} validation images (token counts differ per image)"
        return text

    def pruned_blocks(self) -> list[str]:
        config = self.pruned.config
        rows = [
            "## What was pruned",
            "",
            "| block | heads kept | MLP hidden kept | tokens |",
            "|---:|---:|---:|---|",
        ]
        for i, (block, dense) in enumerate(zip(config.blocks, self.pruned.spec.blocks, strict=True)):
            tokens = block.tokens.card() if block.reduces_tokens else "all kept"
            mlp = f"{block.mlp_hidden} of {dense.mlp_hidden}"
            rows.append(f"| {i} | {block.heads} of {dense.heads} | {mlp} | {tokens} |")
        notes = []
        if any(block.tokens.needs == "scores" for block in config.blocks):
            notes.append(f"Token scores: {_SCORES.get(config.score, config.score)}.")
            fused = "fused into one package token" if config.package_token else "dropped"
            notes.append(f"Tokens below the cut are {fused}.")
        notes.append("The surviving heads and channels are listed in config.json (`prune_config`).")
        return [*rows, "", " ".join(notes)]

    # -- measurements -------------------------------------------------------------------------------

    def accuracy(self) -> list[str]:
        lines = ["## Accuracy", ""]
        top1, calib = self.val.get("top1"), self.metrics.get("calib_accuracy")
        if top1 is None and calib is None and self.val.get("agreement") is None:
            return [
                *lines,
                "No accuracy was recorded with this bundle. Measure it on your images with"
                " `vitprune evaluate --bundle BUNDLE --data IMAGES`.",
            ]
        if top1 is not None:
            top5 = f" (top-5 {_pct(self.val['top5'])})" if self.val.get("top5") is not None else ""
            dense = self._dense_accuracy()
            lines.append(f"- Validation top-1 **{_pct(top1)}**{top5} on {self._images_text('val')}{dense}.")
            error = _standard_error(top1, self.val.get("n_images"))
            if error:
                lines.append(f"  One standard error on this many images: {error}.")
        elif self.val:
            images = self._images_text("val")
            lines.append(f"- The validation images ({images}) have no labels: only fidelity was measured.")
        if calib is not None:
            lines.append(
                f"- Calibration top-1 {_pct(calib)} on {self._images_text('calib')}: the search chose among models"
                " on these images, so not a held-out figure."
            )
        if self.metrics.get("calib_score") is not None:
            lines.append(
                f"- The search ranked its trials by `{self.metrics.get('objective', 'top1')}` on the calibration"
                f" images: score {self.metrics['calib_score']:.2f} (a percent; see docs/search.md)."
            )
        before = _val_figures(self.metrics.get("before_fine_tune") or {})
        if before.get("top1") is not None or before.get("agreement") is not None:
            figures = ", ".join(
                f"{name} {_pct(before[key])}"
                for key, name in (("top1", "top-1"), ("agreement", "agreement"))
                if before.get(key) is not None
            )
            lines.append(f"- Before fine-tuning, on the same images: {figures}.")
        lines += [
            f"- Preprocessing (timm's eval transform for the base model): {describe_preprocessing(self.prep)}.",
            "",
            "Accuracy holds for these images only; other images (another domain, other classes) need their own check.",
        ]
        return lines

    def _dense_accuracy(self) -> str:
        dense = _get(self.dense_figures, "val", "top1")
        return f"; the dense model: {_pct(dense)} on the same images" if dense is not None else ""

    def _images_text(self, role: str) -> str:
        entry = self.datasets.get(role, {})
        name = entry.get("name")
        count = entry.get("images") or (self.val.get("n_images") if role == "val" else None)
        what = {"val": "validation", "calib": "calibration", "train": "training"}[role]
        counted = f"{count} {what} images" if count else f"the {what} images"
        classes = f", {entry['classes']} classes" if entry.get("classes") else ""
        return f"{counted} of `{name}`{classes}" if name else f"{counted}{classes}"

    def fidelity(self) -> list[str]:
        agreement, kl = self.val.get("agreement"), self.val.get("kl")
        if agreement is None and kl is None:
            return []
        lines = ["## Fidelity to the dense model", "", f"On the same {self._images_text('val')}:"]
        if agreement is not None:
            lines.append(f"- Top-1 agreement with the dense model: {_pct(agreement)} of the images.")
        if kl is not None:
            lines.append(f"- KL(dense || pruned) of the class probabilities: {kl:.4f} nats per image (mean).")
        return lines

    def latency(self) -> list[str]:
        predicted, measured = self.metrics.get("predicted_ms"), self.metrics.get("measured_ms")
        lines = ["## Latency", ""]
        if predicted is None and measured is None:
            return [
                *lines,
                "No latency was recorded with this bundle. Measure it where it will run with"
                " `vitprune latency --bundle BUNDLE`.",
            ]
        batch = self.metrics.get("latency_batch") or self.extra.get("batch")
        device = self._device()
        if device:
            lines.append(f"- Target device: {device}")
        if isinstance(self.metrics.get("device"), Mapping) and self.metrics["device"].get("basis"):
            lines.append(f"- Its latencies rest on: {self.metrics['device']['basis']}")
        if batch:
            lines.append(f"- Batch size: {batch} (latencies are per batch)")
        if self.metrics.get("budget_ms") is not None:
            lines.append(f"- Budget of the search: {_ms(self.metrics['budget_ms'])}")
        if predicted is not None:
            dense = self.dense_figures.get("predicted_ms")
            versus = f" (dense model {_ms(dense)})" if dense is not None else ""
            lines.append(f"- Predicted from the device's latency table: {_ms(predicted)}{versus}")
        if measured is not None:
            dense = self.dense_figures.get("measured_ms")
            versus = f" (dense model {_ms(dense)}, same run)" if dense is not None else ""
            lines.append(f"- Measured on the machine that made the bundle: {_ms(measured)}{versus}")
            if self.metrics.get("latency_mismatch"):
                lines.append("- Measured and predicted latency differ by more than 10%: trust the measurement.")
            if self.metrics.get("over_budget"):
                lines.append("- **Measured over the budget asked for**: it does not meet the budget on this machine.")
        return lines

    def _device(self) -> str | None:
        device = self.metrics.get("device")
        if isinstance(device, Mapping):
            details = [device.get("kind"), device.get("hardware"), device.get("runtime")]
            if device.get("threads"):
                details.append(f"{device['threads']} threads")
            details.append(device.get("dtype"))
            words = ", ".join(str(d) for d in details if d)
            return f"`{device.get('name')}` ({words})" if words else f"`{device.get('name')}`"
        name = device or self.extra.get("device")
        return f"`{name}`" if name else None

    # -- files, usage, provenance -------------------------------------------------------------------

    def files(self) -> list[str]:
        if not self.file_sizes:
            return []
        rows = ["## Files", "", "| file | size | what it holds |", "|---|---:|---|"]
        for name, size in self.file_sizes.items():
            rows.append(f"| `{name}` | {_bytes(size)} | {_FILES.get(name, '')} |")
        rows.append("| `README.md` | | this card |")
        return rows

    def usage(self) -> list[str]:
        prep, classes = self.prep, self.pruned.spec.num_classes
        top = min(5, classes)
        transform = (
            f"    input_size=(3, {prep['crop'][0]}, {prep['crop'][1]}),\n"
            f"    interpolation={json.dumps(prep['interpolation'])},\n"
            f"    crop_pct={prep['crop_pct']},\n"
            f"    crop_mode={json.dumps(prep['crop_mode'])},\n"
            f"    mean={tuple(prep['mean'])},\n"
            f"    std={tuple(prep['std'])},\n"
        )
        return [
            "## Usage",
            "",
            "Needs vitprune and timm, never the dense weights:",
            "",
            "```python",
            "import torch",
            "from PIL import Image",
            "from timm.data import create_transform",
            "",
            "from pruning.bundle import load_bundle",
            "",
            'model = load_bundle("path/to/bundle")  # this folder, or its .zip',
            f"transform = create_transform(\n{transform})  # timm's eval transform for the base model",
            'image = transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)',
            "with torch.inference_mode():",
            "    probabilities = model(image).softmax(dim=-1)",
            f"scores, classes = probabilities.topk({top})",
            "print(classes[0].tolist(), scores[0].tolist())  # class indices, most likely first",
            "```",
        ]

    def provenance(self) -> list[str]:
        lines = ["## Provenance", ""]
        version = self.recorded_provenance.get("vitprune_version") or "(version not recorded)"
        made = f"- Made with vitprune {version}"
        if self.recorded_provenance.get("created"):
            made += f" on {self.recorded_provenance['created']}"
        lines.append(made)
        if self.extra.get("study") is not None:
            trial = f", trial {self.extra['trial']}" if self.extra.get("trial") is not None else ""
            lines.append(f"- Found by the search `{self.extra['study']}`{trial}")
        recovered = self.metrics.get("recovered", self.extra.get("recover"))
        if recovered is not None:
            on = self._images_text("calib") if "calib" in self.datasets else "the calibration images"
            lines.append(
                f"- Output projections refitted by least squares on {on}"
                if recovered
                else "- No weight recovery: the surviving weights are the dense model's"
            )
        lines += self._fine_tuning()
        known = {"study", "trial", "weights", "recover", "device", "batch", "fine_tuned_from"}
        for key, value in self.extra.items():
            if key not in known and value is not None:
                lines.append(f"- {key}: {_plain(value)}")
        return lines

    def _fine_tuning(self) -> list[str]:
        """How the model was trained, from metrics.json's `fine_tune` (`pruning.training.FineTuneResult`)."""
        run = self.metrics.get("fine_tune")
        if not isinstance(run, Mapping):
            return []
        recipe = run.get("config") or {}
        images = self._images_text("train") if "train" in self.datasets else f"{run.get('train_images')} images"
        held = f", {run['holdout_images']} more held out for early stopping" if run.get("holdout_images") else ""
        augment = ", ".join(
            name
            for name, on in (
                ("random crops", True),
                ("RandAugment", recipe.get("randaugment")),
                ("mixup", recipe.get("mixup")),
                ("cutmix", recipe.get("cutmix")),
            )
            if on
        )
        labels = f", labels weighted {recipe['label_weight']}" if recipe.get("label_weight") else ", no labels"
        lines = [
            f"- Fine-tuned by distillation from the dense model (`{self.base}`): {run.get('steps')} steps of"
            f" {recipe.get('batch_size')} images on {images}{held}; views: {augment}{labels}; AdamW at"
            f" {recipe.get('lr')} with warm-up and cosine decay"
            + (f", EMA {recipe['ema']}" if recipe.get("ema") else "")
            + f"; {run.get('seconds')} s on {run.get('device')}"
            + (f" x {run['processes']} processes" if (run.get("processes") or 1) > 1 else "")
            + "."
        ]
        if run.get("holdout_kl") is not None:
            stop = ", stopped early" if run.get("stopped_early") else ""
            lines.append(
                f"  Held-out KL to the dense model {run.get('holdout_kl_before')} before, {run['holdout_kl']} after"
                f" (weights of step {run.get('best_step')}{stop})."
            )
        source = self.extra.get("fine_tuned_from")
        if source:
            lines.append(f"  Trained from the bundle `{source}`.")
        return lines

    def other_figures(self) -> list[str]:
        """Figures a caller recorded that the sections above do not show (never internal fields)."""
        rows = [
            (key, value)
            for key, value in _flatten({k: v for k, v in self.metrics.items() if k not in _SHOWN | _INTERNAL})
            if value is not None
        ]
        if not rows:
            return []
        table = [f"| {key} | {_plain(value)} |" for key, value in rows]
        return ["## Other figures in metrics.json", "", "| figure | value |", "|---|---|", *table]


# ------------------------------------------------------------------------------------------- helpers


def _val_figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Validation figures from either metrics.json layout (under `val`, or at the top level)."""
    nested = metrics.get("val")
    source = nested if isinstance(nested, Mapping) else metrics
    return {key: source[key] for key in _VAL_KEYS if source.get(key) is not None}


def _datasets(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The named image sets; a bundle from before `datasets` may name its validation set in `dataset`."""
    recorded = metrics.get("datasets")
    if isinstance(recorded, Mapping):
        return {role: dict(entry) for role, entry in recorded.items() if isinstance(entry, Mapping)}
    if isinstance(metrics.get("dataset"), str) and metrics["dataset"]:
        return {"val": {"name": metrics["dataset"]}}
    return {}


def _get(values: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(values, Mapping):
            return None
        values = values.get(key)
    return values


def _gflops(value: float) -> str:
    """GFLOPs as the dashboard shows them (3 decimals, no trailing zeros): one number on every page."""
    return f"{round(value, 3):g}"


def _versus(value: float, dense: float | None, scale: float, unit: str) -> str:
    text = f"{value / scale:.2f} {unit}"
    if dense:
        text += f" of {dense / scale:.2f} {unit} dense ({value / dense:.0%})"
    return text


def _pct(value: float) -> str:
    return f"{value:.1f}%"


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value >= 0.1 else f"{value:.3g} ms"


def _bytes(size: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _standard_error(percent: float, n: int | None) -> str | None:
    if not n:
        return None
    p = percent / 100
    return f"±{100 * math.sqrt(p * (1 - p) / n):.1f} points"


def _prep_short(prep: Mapping[str, Any]) -> str:
    return f"mean {tuple(prep['mean'])}, std {tuple(prep['std'])}"


def _plain(value: Any) -> str:
    """A value in words: numbers rounded, yes/no, lists and objects as JSON; never a Python repr."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, default=str)


def _yaml(value: str) -> str:
    """A YAML scalar: a JSON string is valid YAML, whatever characters the value holds."""
    return json.dumps(value)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in values.items():
        items += _flatten(value, f"{prefix}{key}.") if isinstance(value, Mapping) else [(f"{prefix}{key}", value)]
    return items


def _onnx_lines(report: Mapping[str, Any] | None) -> list[str]:
    if not report:
        return []
    diff = report.get("max_abs_diff")
    checked = f"max |onnxruntime - PyTorch| logit difference {diff:.2e}" if diff is not None else "not checked"
    batch = "dynamic" if report["dynamic_batch"] else "static"
    notes = [f"- {note}" for note in report.get("notes", [])]
    return ["## ONNX", "", f"`{report['path']}`: opset {report['opset']}, {batch} batch, {checked}.", *notes]
