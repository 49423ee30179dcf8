"""One trial: a config from the sampler, priced from the device table, scored on real images.

Order of work, cheapest first: a config already evaluated (by any worker of the job) reuses its
result; a top-k or merge config (fixed token counts) whose predicted latency is over budget
costs no forward pass (its accuracy is recorded as 0 and the budget constraint marks it
infeasible, so every sampler ranks it behind all feasible trials); with cheap-first evaluation a
config clearly dominated on a sample of the images stops there; everything else is scored on the
whole calibration set.
Threshold configs are priced after their forward pass, from the token counts they really kept.

A trial's first value is the job's objective (`search.objectives`, a score in percent); top-1,
agreement and KL are recorded beside it whatever the objective.

A trial is a config at a precision (`TrialSpace.precision`): a quantised one is scored as the device
computes it (`pruning.quantisation`) and priced from the table of the dtype that runs it; one that
keeps its most sensitive blocks float (`SearchSpace.keep_float`) prices those from the float table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from latency_models.mixed import MixedPrecisionPredictor
from latency_models.predictor import LatencyPredictor
from pruning import PruneConfig
from pruning.tokens import padded_widths
from search.evaluator import Evaluation, TrialEvaluator
from search.job import FLOAT
from search.objectives import DEFAULT_OBJECTIVE, objective
from search.space import TrialSpace

__all__ = [
    "BUDGET_CONSTRAINT",
    "SLOT_ATTR",
    "TrialObjective",
    "calib_accuracy",
    "is_pareto_candidate",
    "trial_float_blocks",
    "trial_key",
    "trial_precision",
]

BUDGET_CONSTRAINT = "over_budget_ms"
"""Optuna constraint: predicted latency minus the budget (feasible when <= 0)."""

SLOT_ATTR = "slot"
"""User attribute of the trials a job enqueues up front: only those run, so the total is exact."""


def trial_key(config: PruneConfig, precision: str, float_blocks: Sequence[int] = ()) -> str:
    """What tells trials apart: the config's key, and the precision when it is not the float model's
    (so the keys of float trials are the configs' own, as before precisions were searched), and the
    blocks a quantised model keeps float."""
    key = config.key() if precision == FLOAT else f"{config.key()}+{precision}"
    return f"{key}+float{','.join(map(str, float_blocks))}" if float_blocks else key


def trial_precision(trial: FrozenTrial) -> str:
    """The precision of a trial (fp32 for one of a job from before precisions were searched)."""
    return trial.user_attrs.get("precision", FLOAT)


def trial_float_blocks(trial: FrozenTrial) -> list[int]:
    """The blocks a quantised trial keeps float (none: the whole model at its precision)."""
    return trial.user_attrs.get("float_blocks", [])


class TrialObjective:
    """The callable given to `study.optimize`: returns (the objective's calibration score %, predicted ms).

    `predictors`: the quantised precisions' predictors, by precision; `predictor` prices fp32.
    """

    def __init__(
        self,
        space: TrialSpace,
        predictor: LatencyPredictor,
        evaluator: TrialEvaluator,
        *,
        batch: int,
        budget_ms: float,
        cheap_images: int | None = None,
        objective_name: str = DEFAULT_OBJECTIVE,
        predictors: Mapping[str, LatencyPredictor] | None = None,
    ) -> None:
        self.space = space
        self.predictors = {FLOAT: predictor, **(predictors or {})}
        self.evaluator = evaluator
        self.batch = batch
        self.budget_ms = budget_ms
        self.cheap_images = cheap_images
        self.objective = objective(objective_name)
        self.evaluated: dict[str, FrozenTrial] = {}

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        if not trial.user_attrs.get(SLOT_ATTR):
            # Another worker took the job's last slot between our check and this trial's creation.
            raise optuna.TrialPruned("every trial of this job is already taken")
        config = self.space.suggest(trial)
        precision = self.space.precision(trial.params)
        count = self.space.float_count(trial.params)
        float_blocks = self.evaluator.sensitive_blocks(precision, count) if count else []
        key = trial_key(config, precision, float_blocks)
        trial.set_user_attr("config", config.model_dump(mode="json"))
        trial.set_user_attr("config_key", key)
        if precision != FLOAT:
            trial.set_user_attr("precision", precision)
        predictor = self.predictors[precision]
        if float_blocks:
            trial.set_user_attr("float_blocks", float_blocks)
            predictor = MixedPrecisionPredictor(predictor, self.predictors[FLOAT], float_blocks)

        earlier = self._earlier(trial.study, key)
        if earlier is not None:
            for name, value in earlier.user_attrs.items():
                if name not in ("config", "config_key"):
                    trial.set_user_attr(name, value)
            trial.set_user_attr("duplicate_of", earlier.number)
            trial.set_constraint(BUDGET_CONSTRAINT, earlier.constraints[BUDGET_CONSTRAINT])
            return tuple(earlier.values)

        spec = self.space.spec
        predicted = None  # a threshold config's cost depends on the tokens it keeps: priced after its forward pass
        if not config.per_image:
            predicted = predictor.predict(config, spec, self.batch).ms
            if predicted > self.budget_ms:
                return self._result(trial, 0.0, predicted, evaluated=False)

        evaluation = self._evaluate(config, predicted, precision, float_blocks)
        if config.per_image:
            widths = padded_widths(evaluation.counts, self.batch)
            predicted = predictor.predict(config, spec, self.batch, kept_tokens=widths).ms
            trial.set_user_attr("kept_tokens", [round(w, 2) for w in widths])
        elif evaluation.counts is not None:
            trial.set_user_attr("kept_tokens", evaluation.counts[0].tolist())
        for name, value in evaluation.metrics.to_dict().items():
            trial.set_user_attr(name, value)
        trial.set_user_attr("eval_images", evaluation.images)
        trial.set_user_attr("first_pruned_block", evaluation.first_block)
        trial.set_user_attr("eval_s", round(evaluation.seconds, 3))
        trial.set_user_attr("build_s", round(evaluation.build_seconds, 4))
        return self._result(trial, self.objective.score(evaluation.metrics), predicted, evaluated=True)

    def _evaluate(
        self, config: PruneConfig, predicted: float | None, precision: str, float_blocks: Sequence[int]
    ) -> Evaluation:
        """Cheap-first: a sample of the images, and the rest only if the sample is not clearly dominated."""
        at = {"precision": precision, "float_blocks": float_blocks}
        if not self.cheap_images or self.cheap_images >= len(self.evaluator):
            return self.evaluator.evaluate(config, **at)
        sample = self.evaluator.evaluate(config, max_images=self.cheap_images, **at)
        if predicted is not None and self._clearly_dominated(sample, predicted):
            return sample
        return self.evaluator.evaluate(config, sample=sample, **at)

    def _clearly_dominated(self, sample: Evaluation, predicted: float) -> bool:
        """Some full evaluation is at least as fast and better by two standard errors of the sample."""
        score = self.objective.score(sample.metrics)
        # A sample that happens to agree everywhere has standard error 0, which proves nothing:
        # then one image's worth stands in.
        margin = 2 * (self.objective.standard_error(sample.metrics) or 100 / sample.images)
        return any(
            t.values[1] <= predicted and t.values[0] >= score + margin
            for t in self.evaluated.values()
            if t.user_attrs.get("eval_images", 0) >= len(self.evaluator)
        )

    def _result(self, trial: optuna.Trial, accuracy: float, predicted: float, evaluated: bool) -> tuple[float, float]:
        trial.set_user_attr("predicted_ms", round(predicted, 4))
        trial.set_user_attr("evaluated", evaluated)
        trial.set_constraint(BUDGET_CONSTRAINT, predicted - self.budget_ms)
        return accuracy, predicted

    def _earlier(self, study: optuna.Study, key: str) -> FrozenTrial | None:
        """A finished trial of this job (from any worker) with the same config."""
        if key not in self.evaluated:
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                self.evaluated.setdefault(t.user_attrs.get("config_key", ""), t)
        return self.evaluated.get(key)


def calib_accuracy(trial: FrozenTrial) -> float | None:
    """Calibration top-1 (%) of a scored trial (agreement with dense for unlabelled images), whatever
    the objective; 0 for a trial priced over budget (never scored), None before it completes."""
    if trial.state != TrialState.COMPLETE:
        return None
    if not trial.user_attrs.get("evaluated"):
        return 0.0
    top1 = trial.user_attrs.get("top1")
    return top1 if top1 is not None else trial.user_attrs.get("agreement")


def is_pareto_candidate(trial: FrozenTrial) -> bool:
    """A completed, fully evaluated trial within budget."""
    return (
        trial.state == TrialState.COMPLETE
        and trial.user_attrs.get("evaluated", False)
        and all(v <= 0 for v in trial.constraints.values())
    )
