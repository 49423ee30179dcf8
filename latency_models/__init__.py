"""latency_models: not built yet (see the issues)."""
