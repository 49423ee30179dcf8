"""Quantisation: int8 weights and activations (W8A8), with any scales or powers of two (RAPQ's
constraint), or 4-bit weights (W4A8), simulated in PyTorch exactly as an integer device computes and
exported as ONNX QDQ.

Names are imported on first use, so `pruning.quantisation.precisions` loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pruning._lazy import lazy_exports

_EXPORTS = {
    "PRECISIONS": "pruning.quantisation.precisions",
    "QuantisedConv2d": "pruning.quantisation._linear",
    "QuantisedLinear": "pruning.quantisation._linear",
    "QuantisationError": "pruning.quantisation._quantise",
    "attach_products": "pruning.quantisation._quantise",
    "attach_stream_grids": "pruning.quantisation._quantise",
    "block_sensitivity": "pruning.quantisation._sensitivity",
    "kept_float": "pruning.quantisation._quantise",
    "most_sensitive_blocks": "pruning.quantisation._sensitivity",
    "quantise": "pruning.quantisation._quantise",
    "quantised_layers": "pruning.quantisation._quantise",
    "wrap_linears": "pruning.quantisation._quantise",
    "wrap_patch_embedding": "pruning.quantisation._quantise",
}

__all__ = [
    "PRECISIONS",
    "QuantisationError",
    "QuantisedConv2d",
    "QuantisedLinear",
    "attach_products",
    "attach_stream_grids",
    "block_sensitivity",
    "kept_float",
    "most_sensitive_blocks",
    "quantise",
    "quantised_layers",
    "wrap_linears",
    "wrap_patch_embedding",
]

if TYPE_CHECKING:
    from pruning.quantisation._linear import QuantisedConv2d, QuantisedLinear
    from pruning.quantisation._quantise import (
        QuantisationError,
        attach_products,
        attach_stream_grids,
        kept_float,
        quantise,
        quantised_layers,
        wrap_linears,
        wrap_patch_embedding,
    )
    from pruning.quantisation._sensitivity import block_sensitivity, most_sensitive_blocks
    from pruning.quantisation.precisions import PRECISIONS

__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
