"""latency_models: what a pruned ViT costs on a device.

- `schema`: the latency table (versioned JSON, pydantic-validated)
- `profiling`: measures a table; needs only torch, so it runs on the user's own device
- `predictor`: latency of a PruneConfig = the sum of its parts, interpolated from a table
- `analytic`: phone-CPU and FPGA models that write tables for hardware we cannot time
- `registry`: device profiles by name (host-cpu, cuda, analytic presets, imported tables)
- `validate`: random pruned models measured here against a table's predictions

Nothing is imported here, so that `python -m latency_models.profiling` needs torch alone.
"""
