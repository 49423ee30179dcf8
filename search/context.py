"""Everything a process needs to run trials of a job: model, images, latency tables, budget.

The process that creates a job (`prepare`) resolves the device's table (and one per dtype of the
quantised precisions it searches), the budget in milliseconds and head / channel importance once and
stores them on the study; a worker that joins later (`from_study`) reads them back, so all workers
price and prune identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from torch import nn

from latency_models.calibration import calibration_for
from latency_models.devices.base import INT8_PRICED
from latency_models.mixed import MixedPrecisionPredictor
from latency_models.predictor import LatencyPredictor
from latency_models.registry import Registry
from latency_models.schema import LatencyTable
from pruning import PruneConfig, describe
from pruning.compute import compute_device
from pruning.data import ImageSet, load_image_folder
from pruning.families import family_of
from pruning.image_files import image_files, shared_images
from pruning.image_sets import eval_data_config
from pruning.importance import Importance, calibrated_importance
from pruning.loading import create_model
from pruning.spec import ModelSpec
from search.evaluator import TrialEvaluator
from search.job import FLOAT, JobSpec
from search.model_options import check_model_options
from search.space import TrialSpace
from search.units import format_ms_apart

__all__ = [
    "InfeasibleJobError",
    "JobContext",
    "JobInputError",
    "can_score",
    "check_job",
    "fit_batches",
    "job_images",
    "quantisation_batches",
]

FIT_IMAGES = 256
"""Calibration images that importance (one backward pass each) and weight recovery fit on; more changes little."""

QUANTISATION_IMAGES = 64
"""Calibration images whose min-max ranges quantise a trial's model (and its Pareto model, alike). The
calibration pass is most of a quantised trial's extra cost. On DeiT-Tiny (int8, 250 held-out images) 64
images spread over the classes gave KL to the float model 0.0049 (dense) and 0.0114 (top-k 0.7), 256 gave
0.0056 and 0.0155 (SE 0.0004-0.0017): min-max ranges only widen with more images."""


class JobInputError(ValueError):
    """A job whose inputs cannot be used; the message says which and how to fix it."""


class InfeasibleJobError(JobInputError):
    """No config of the search space fits the latency budget."""


@dataclass
class JobContext:
    job: JobSpec
    dense: nn.Module
    spec: ModelSpec
    space: TrialSpace
    predictor: LatencyPredictor
    budget_ms: float
    dense_ms: float
    calib: ImageSet
    importance: Importance | None
    predictors: dict[str, LatencyPredictor] | None = None
    """The quantised precisions' predictors, by precision (`predictor` prices fp32, and the budget)."""
    cache_dir: Path | None = None
    margin: float = 0.0
    """The safety margin the search keeps: `budget_ms` is the job's budget / (1 + margin)."""
    compute: str = "auto"
    """This process's compute device, for a job that leaves it to the worker (`compute: auto`)."""
    fully_integer: dict[str, int | None] = field(default_factory=dict)
    """The quantised precisions the job's device computes fully in integer -> how far apart it scales its
    residual stream's channels (`DeviceBackend.fully_integer`; None: the stream stays float, a study from
    before the stream was quantised): trials and Pareto models of those are quantised so too."""
    _evaluator: TrialEvaluator | None = None

    @property
    def compute_device(self) -> torch.device:
        """Where this process scores the job's trials: the job's compute, or with `auto` the process's."""
        return compute_device(self.job.compute if self.job.compute != "auto" else self.compute)

    def predictor_for(
        self, precision: str, float_blocks: Sequence[int] = ()
    ) -> LatencyPredictor | MixedPrecisionPredictor:
        """The predictor that prices a model of `precision` (with `float_blocks` kept float)."""
        predictor = self.predictor if precision == FLOAT else (self.predictors or {})[precision]
        return MixedPrecisionPredictor(predictor, self.predictor, float_blocks) if float_blocks else predictor

    @property
    def requested_ms(self) -> float:
        """The job's own budget, before the safety margin."""
        return self.budget_ms * (1.0 + self.margin)

    @property
    def evaluator(self) -> TrialEvaluator:
        """Built on first use: it runs the dense model over the calibration set once."""
        if self._evaluator is None:
            self._evaluator = TrialEvaluator(
                self.dense,
                self.spec,
                self.calib,
                self.importance,
                seed=self.job.seed,
                device=self.compute_device,
                dtype=self.job.score_dtype,
                quantisation=quantisation_batches(self.calib) if self.job.space.quantised else None,
                fully_integer=self.fully_integer,
            )
        return self._evaluator

    def token_payoff(self) -> dict[str, float]:
        """Per token op the space searches: the predicted latency, as a share of dense, of its best
        uniform baseline (uniform top-k at 3/6/9, ToMe's uniform merge count; `TrialSpace.warm_starts`).
        At 1 or more the op does not pay on this device at this batch (on a GPU, small ops that launch
        many kernels can cost more than the tokens they remove save). Ops priced per image are left out."""
        best: dict[str, float] = {}
        for params in self.space.warm_starts()[1:]:
            if self.space.precision(params) != FLOAT:  # the same configs again, quantised
                continue
            config = self.space.config(params)
            kinds = {b.tokens.kind_name() for b in config.blocks if b.reduces_tokens}
            if config.per_image or len(kinds) != 1:  # priced per image; or a head / MLP baseline (no token op)
                continue
            kind = kinds.pop()
            ratio = self.predictor.predict(config, self.spec, self.job.batch).ms / self.dense_ms
            best[kind] = round(min(best.get(kind, ratio), ratio), 4)
        return best

    def images(self, which: str) -> ImageSet:
        """The calibration ("calib"), validation ("val") or fine-tuning ("train") images of the job."""
        return job_images(self.job, self.dense, which, self.cache_dir)

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def prepare(cls, job: JobSpec, registry: Registry | None = None, cache_dir: Path | None = None) -> JobContext:
        """Resolve a new job: check its inputs, price the dense model, check the budget can be met."""
        check_model_options(job)
        _check_held_out(job)
        dense, spec = _dense(job)
        registry = registry or Registry()
        space, predictor, predictors, dense_ms, budget_ms = _price(job, spec, registry)
        calib = job_images(job, dense, "calib", cache_dir)
        importance = None
        if job.space.heads or job.space.mlp:
            importance = calibrated_importance(dense, family_of(dense).blocks(dense), fit_batches(calib))
        margin = budget_margin(job, predictor, spec)
        return cls(
            job, dense, spec, space, predictor, budget_ms, dense_ms, calib, importance, predictors, cache_dir, margin,
            fully_integer=fully_integer(job, registry),
        )  # fmt: skip

    def save_to(self, study: optuna.Study) -> None:
        """Store on the study what a joining worker must share with this process."""
        study.set_user_attr("job", self.job.model_dump_json())
        study.set_user_attr("budget_ms", self.budget_ms)
        study.set_user_attr("budget_margin", self.margin)
        study.set_user_attr("dense_ms", self.dense_ms)
        study.set_user_attr("fully_integer", self.fully_integer)
        study.set_user_attr("table", self.predictor.table.model_dump(mode="json", by_alias=True))
        if self.predictors:
            tables = {p: t.table.model_dump(mode="json", by_alias=True) for p, t in self.predictors.items()}
            study.set_user_attr("precision_tables", tables)
        if self.importance is not None:
            study.set_user_attr(
                "importance",
                {
                    "heads": [t.tolist() for t in self.importance.heads],
                    "channels": [t.tolist() for t in self.importance.channels],
                    "criterion": self.importance.criterion,
                },
            )

    @classmethod
    def from_study(cls, study: optuna.Study, cache_dir: Path | None = None) -> JobContext:
        """The context of a job some other process created (a joining worker)."""
        attrs = study.user_attrs
        job = JobSpec.stored(attrs["job"])
        dense, spec = _dense(job)
        raw = attrs.get("importance")
        importance = None
        if raw:
            importance = Importance(
                heads=[torch.tensor(v) for v in raw["heads"]],
                channels=[torch.tensor(v) for v in raw["channels"]],
                criterion=raw["criterion"],
            )
        source = f"study {study.study_name}"
        table = LatencyTable.parse(attrs["table"], source=source)
        predictors = {
            precision: LatencyPredictor(LatencyTable.parse(raw_table, source=source))
            for precision, raw_table in attrs.get("precision_tables", {}).items()
        }
        calib = job_images(job, dense, "calib", cache_dir)
        space = TrialSpace(job.space, spec)
        return cls(
            job,
            dense,
            spec,
            space,
            LatencyPredictor(table),
            attrs["budget_ms"],
            attrs["dense_ms"],
            calib,
            importance,
            predictors or None,
            cache_dir,
            margin=attrs.get("budget_margin", 0.0),
            # A study from before the residual stream was quantised keeps computing it float.
            fully_integer=attrs.get("fully_integer", dict.fromkeys(attrs.get("integer_attention", ()))),
        )


def can_score(job: JobSpec, compute: str = "auto") -> bool:
    """Whether a process whose own compute is `compute` can score `job` (a job asking for a GPU needs one)."""
    try:
        compute_device(job.compute if job.compute != "auto" else compute)
    except ValueError:
        return False
    return True


def check_job(job: JobSpec, registry: Registry | None = None) -> tuple[float, float] | None:
    """Check a new job in seconds, before it waits in a queue: model and options, weights, images, device, budget.

    Returns (dense_ms, budget_ms), or None for the budget when a device that prices it is a measured
    one whose table is not measured yet (the worker measures it, then checks the budget).
    """
    check_model_options(job)  # before anything builds the model for real
    try:
        found = image_files(job.calib)
    except FileNotFoundError as error:
        raise JobInputError(str(error)) from None
    if not found:
        raise JobInputError(f"no images in {job.calib}: expected an ImageFolder (one folder of images per class)")
    _check_held_out(job)
    _, spec = _dense(job)
    TrialSpace(job.space, spec)  # a space that does not fit the model is refused now, not once a device is measured
    registry = registry or Registry()
    names = precision_devices(job, registry)
    if not job.table and not all(registry.ready(name, spec, [job.batch]) for name in names.values()):
        return None
    *_, dense_ms, budget_ms = _price(job, spec, registry)
    return dense_ms, budget_ms


def _price(
    job: JobSpec, spec: ModelSpec, registry: Registry
) -> tuple[TrialSpace, LatencyPredictor, dict[str, LatencyPredictor] | None, float, float]:
    """The job's search space, latency predictor (fp32), the quantised precisions' predictors, the dense
    fp32 latency and the budget (ms); fails if no config fits."""
    space = TrialSpace(job.space, spec)
    names = precision_devices(job, registry)
    table = LatencyTable.load(job.table) if job.table else registry.table(names[FLOAT], spec, [job.batch])
    predictor = LatencyPredictor(table)
    predictors = {p: registry.predictor(name, spec, [job.batch]) for p, name in names.items() if p != FLOAT}
    dense_ms = predictor.predict(PruneConfig.dense(spec), spec, job.batch).ms
    budget_ms = job.budget_ms if job.budget_ms is not None else job.budget_ratio * dense_ms
    budget_ms /= 1.0 + budget_margin(job, predictor, spec)
    _check_feasible(space, {FLOAT: predictor} | predictors, job, budget_ms)
    return space, predictor, predictors or None, dense_ms, budget_ms


def precision_devices(job: JobSpec, registry: Registry) -> dict[str, str]:
    """fp32 and each quantised precision the job searches -> the device name whose table prices it
    (`DeviceBackend.priced_as`); refuses a device or table file with no price for one of them."""
    quantised = [p for p in job.space.precisions if p != FLOAT]
    if job.table:
        if quantised:
            raise JobInputError(
                f"a table file prices float models; to search {', '.join(quantised)} too, name a device with a "
                f"quantised price ({INT8_PRICED}) instead of a table"
            )
        return {FLOAT: str(job.table)}
    names = {p: registry.priced_as(job.device, p) for p in (FLOAT, *quantised)}
    if missing := [p for p, name in names.items() if name is None]:
        raise JobInputError(
            f"{job.device} has no latency model for {', '.join(missing)} models (devices with a quantised price: "
            f"{INT8_PRICED}): search fp32 on {job.device}, or name such a device"
        )
    return names


def budget_margin(job: JobSpec, predictor: LatencyPredictor, spec: ModelSpec) -> float:
    """The share the search keeps below the job's budget: the job's own, or with 'auto' how far the
    table's check saw 95% of fresh configs run over its predictions (0 for a table without a check)."""
    if job.budget_margin != "auto":
        return job.budget_margin or 0.0
    calibration = calibration_for(predictor.table, spec, job.batch)
    return calibration.check.under_p95 if calibration is not None and calibration.check is not None else 0.0


def _dense(job: JobSpec) -> tuple[nn.Module, ModelSpec]:
    dense = create_model(
        job.model,
        weights=job.weights,
        pretrained=job.pretrained,  # local weights win (create_model)
        **job.model_kwargs,
    )
    return dense, describe(dense, job.model)


def fit_batches(images: ImageSet) -> list[torch.Tensor]:
    """Up to FIT_IMAGES images spread over the set (so over its classes), in batches of 32."""
    return [x for x, _ in _spread(images, FIT_IMAGES).batches(32)]


def fully_integer(job: JobSpec, registry: Registry) -> dict[str, int | None]:
    """The job's quantised precisions its device computes fully in integer -> its stream's channel shifts."""
    if job.table:
        return {}
    shifts = {p: registry.fully_integer(job.device, p) for p in job.space.precisions}
    return {p: k for p, k in shifts.items() if k is not None}


def quantisation_batches(images: ImageSet) -> list[torch.Tensor]:
    """Up to QUANTISATION_IMAGES images spread over the set, in batches of 32: what quantised trials and
    their Pareto models are calibrated on."""
    return [x for x, _ in _spread(images, QUANTISATION_IMAGES).batches(32)]


def _spread(images: ImageSet, limit: int | None) -> ImageSet:
    """At most `limit` images, evenly spread over the (class-ordered) set."""
    if limit is None or limit >= len(images):
        return images
    return images.subset(torch.linspace(0, len(images) - 1, limit).round().long().unique())


def job_images(job: JobSpec, dense: nn.Module, which: str, cache_dir: Path | None = None) -> ImageSet:
    """The job's calibration, validation or training images, decoded for `dense`.

    Without a validation folder, a seeded `holdout` share of the calibration folder is set aside
    for validation; the search never sees it. "train" is the folder `train` a fine-tuning job names.
    """
    data_config = eval_data_config(dense, describe(dense).image_size)
    if which == "train":
        return load_image_folder(job.train, data_config, class_map=job.class_map, cache_dir=cache_dir)
    limit = job.calib_images if which == "calib" else job.val_images
    if job.val is not None:
        root = job.calib if which == "calib" else job.val
        return load_image_folder(root, data_config, class_map=job.class_map, max_images=limit, cache_dir=cache_dir)
    everything = load_image_folder(job.calib, data_config, class_map=job.class_map, cache_dir=cache_dir)
    calib, val = everything.split(1.0 - job.holdout, seed=job.seed)
    return _spread(calib if which == "calib" else val, limit)


def _check_held_out(job: JobSpec) -> None:
    """The validation images share none with the calibration images (searched) or the training ones."""
    if job.val is not None:
        _check_apart(job.calib, job.val, "calibration", "validation")
    if job.train is not None:
        # Without a validation folder the validation images are a share of the calibration folder.
        held_out, name = (job.val, "validation") if job.val is not None else (job.calib, "calibration")
        _check_apart(job.train, held_out, "training", name)


def _check_apart(used: Path, held_out: Path, used_name: str, held_name: str) -> None:
    """Validation figures are only honest on images the search and the training never saw."""
    try:
        shared = shared_images(used, held_out)
    except FileNotFoundError as error:
        raise JobInputError(str(error)) from None
    if shared:
        example = sorted(shared)[0].name
        raise JobInputError(
            f"{used_name} ({used}) and {held_name} ({held_out}) share {len(shared)} images (e.g. {example}); "
            f"validation must be held out: give {used_name} images apart from them"
        )


def _check_feasible(space: TrialSpace, predictors: dict[str, LatencyPredictor], job: JobSpec, budget_ms: float) -> None:
    cheapest = space.config(space.cheapest_params())
    # A config with per-image counts is priced from the tokens it keeps; the floor assumes the fewest, one
    # per image. Other configs keep fixed counts, which the predictor reads from the config itself.
    kept = [1.0] * sum(b.reduces_tokens for b in cheapest.blocks) if cheapest.per_image else None
    dense = PruneConfig.dense(space.spec)
    # On a small model a token op can cost more than it saves: then the dense model (at some precision) is the floor.
    floor = min(
        min(
            predictor.predict(cheapest, space.spec, job.batch, kept_tokens=kept).ms,
            predictor.predict(dense, space.spec, job.batch).ms,
        )
        for precision, predictor in predictors.items()
        if precision in job.space.precisions
    )
    if floor > budget_ms:
        widen = ", ".join(op.widen for op in space.ops) or "search tokens"
        floor_text, budget_text = format_ms_apart(floor, budget_ms)
        raise InfeasibleJobError(
            f"no config can meet the budget: the cheapest config of the search space is predicted at "
            f"{floor_text} ms on {job.device} at batch {job.batch}, over the budget of {budget_text} ms; "
            f"raise the budget, or widen the space ({widen}, search heads or mlp)"
        )
