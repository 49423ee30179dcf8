"""A job's `model_kwargs`, checked before its model is built for real.

timm hands model_kwargs to the model's constructor, which fails on an unknown or ill-typed option
with whatever error it happens to hit (TypeError, AssertionError, ZeroDivisionError, ...), and
builds a model of any size it is asked for (embed_dim=40000 is 200 billion parameters: building
it for real would take the machine down). Both are refused here, with a message that names the
options, by every entry point that checks or prepares a job (`check_job`, `JobContext.prepare`):
`vitprune search`, the REST API (and so `vitprune submit`) and the workers.
"""

from __future__ import annotations

import timm
import torch

from search.job import JobSpec

__all__ = ["MAX_DEPTH", "ModelOptionsError", "check_model_options"]

MAX_DEPTH = 256
"""More blocks than any ViT has; building costs time per block even on the meta device (~5 ms), so
depth=10**6 would take an hour and a half just to be refused."""


class ModelOptionsError(ValueError):
    """model_kwargs that do not build the model, or build one the weights cannot be for."""


def check_model_options(job: JobSpec) -> None:
    """Build the model with the job's model_kwargs on the meta device: shapes only, no memory, milliseconds."""
    if not job.model_kwargs:
        return
    depth = job.model_kwargs.get("depth")
    if isinstance(depth, int) and depth > MAX_DEPTH:
        raise ModelOptionsError(
            f"model_kwargs depth={depth} is more blocks than any ViT has; vitprune takes models of up to "
            f"{MAX_DEPTH} blocks: give the depth the weights were trained with"
        )
    try:
        with torch.device("meta"):
            model = timm.create_model(job.model, pretrained=False, **job.model_kwargs)
    except Exception as error:
        try:
            with torch.device("meta"):
                timm.create_model(job.model, pretrained=False)
        except Exception:
            return  # not the options' fault (e.g. an unknown model name): building it for real says what is wrong
        raise ModelOptionsError(
            f"model_kwargs {job.model_kwargs} do not build {job.model} ({type(error).__name__}: {error}); "
            "give only timm.create_model options of this model, with values of their type, e.g. "
            '{"num_classes": 10, "img_size": 224}'
        ) from error
    weights = job.weights
    if weights is not None and weights.is_file():
        # Each parameter takes at least one byte in any weights file that could load into this model.
        params, size = sum(p.numel() for p in model.parameters()), weights.stat().st_size
        if params > size:
            raise ModelOptionsError(
                f"model_kwargs {job.model_kwargs} make {job.model} a model of {params:,} parameters, more than "
                f"the weights file ({size:,} bytes) can hold; give the options the weights were trained with"
            )
