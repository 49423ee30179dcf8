"""latency_models: what a pruned ViT costs on a device.

- `schema`: the latency table (versioned JSON, pydantic-validated)
- `profiling`: measures a table; needs only torch, so it runs on the user's own device. Its `ops`
  package holds what prices each token op (one module per op, found by a registry)
- `predictor`: latency of a PruneConfig = the sum of its parts, interpolated from a table
- `analytic`: phone-CPU and FPGA models that write tables for hardware we cannot time
- `devices`: device kinds behind one protocol (measured host CPU / CUDA, analytic presets,
  imported tables), one module per kind
- `registry`: device profiles by name, asking the device kinds
- `validate`: random pruned models measured here against a table's predictions

Nothing is imported here, so that `python -m latency_models.profiling` needs torch alone.
"""
