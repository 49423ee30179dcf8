"""Moved to latency_models.profiling (temporary alias while the analytic models are written)."""

from latency_models.profiling import *  # noqa: F403
from latency_models.profiling import SHAPES, Shape, entry_id, plan  # noqa: F401
