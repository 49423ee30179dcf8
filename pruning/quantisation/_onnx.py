"""The quantised model as ONNX QDQ: the float graph with QuantizeLinear/DequantizeLinear around every
quantised layer, carrying the model's own scales and int8 weight codes.

onnxruntime (and the NPU toolchains that read QDQ) fuse a DequantizeLinear pair around a MatMul, Gemm or
Conv (the patch embedding, quantised for a fully integer device) into an integer kernel, so the file runs
in int8 where the runtime can, and computes what `QuantisedLinear` simulates everywhere.

The torch exporter names the weights of most layers by a number and stores them transposed, so each
quantised layer is found in the graph by its weight's values (which are its int8 codes times its
scales, so no two layers of a real model share them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pruning.model import PrunedViT
from pruning.quantisation._linear import QuantisedConv2d, QuantisedLinear
from pruning.quantisation._quantise import QuantisationError, quantised_layers

__all__ = ["add_qdq", "float_layers"]


@contextlib.contextmanager
def float_layers(pruned: PrunedViT) -> Iterator[None]:
    """Compute the quantised layers in float for a while (the graph `add_qdq` then rewrites)."""
    layers = list(quantised_layers(pruned.model).values())
    for layer in layers:
        layer.simulate = False
    try:
        yield
    finally:
        for layer in layers:
            layer.simulate = True


def add_qdq(path: str | Path, pruned: PrunedViT) -> int:
    """Rewrite the float ONNX file at `path`, exported from `pruned` in float, as QDQ; returns the number of
    layers rewritten. Raises QuantisationError if a quantised layer is not found in the graph."""
    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    layers = {
        _fingerprint(layer.weight.detach().numpy()): (name, layer)
        for name, layer in quantised_layers(pruned.model).items()
    }
    new_nodes, found = [], set()
    for node in graph.node:
        match = _quantised_input(node, initializers, layers)
        if match is not None:
            weight_input, transposed, (name, layer) = match
            found.add(name)
            prefix = f"qdq/{name}"
            new_nodes += _activation_qdq(node, prefix, layer, graph)
            new_nodes.append(_weight_dq(node, weight_input, prefix, layer, transposed, graph))
        new_nodes.append(node)
    missing = sorted({name for name, _ in layers.values()} - found)
    if missing:
        raise QuantisationError(f"quantised layer(s) not found in the exported graph: {', '.join(missing)}")
    used = {name for node in new_nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(found)


def _fingerprint(weight: np.ndarray) -> tuple:
    return weight.shape, weight.astype(np.float32).tobytes()


def _quantised_input(node, initializers, layers):
    """(input index of the weight, whether it is stored transposed, (name, layer)) of a MatMul/Gemm/Conv node
    computing a quantised layer; None for any other node."""
    if node.op_type not in ("MatMul", "Gemm", "Conv"):
        return None
    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)
    init = initializers.get(node.input[1]) if len(node.input) > 1 else None
    values = numpy_helper.to_array(init) if init is not None else None
    if values is None or values.ndim != (4 if node.op_type == "Conv" else 2):
        return None
    if node.op_type == "Conv":  # stored as torch stores it, (out, in, height, width)
        layer = layers.get(_fingerprint(values))
        return None if layer is None else (1, False, layer)
    weight = values if trans_b else values.T  # torch's (out, in)
    layer = layers.get(_fingerprint(np.ascontiguousarray(weight)))
    return None if layer is None else (1, not trans_b, layer)


def _activation_qdq(node, prefix: str, layer: QuantisedLinear | QuantisedConv2d, graph) -> list:
    """Quantize then dequantize the node's activation input with the layer's input scale (uint8)."""
    source = node.input[0]
    scale = numpy_helper.from_array(np.array(layer.input_scale.item(), dtype=np.float32), f"{prefix}/input_scale")
    point = numpy_helper.from_array(
        np.array(layer.input_zero_point.item(), dtype=np.uint8), f"{prefix}/input_zero_point"
    )
    graph.initializer.extend([scale, point])
    quantised, restored = f"{prefix}/input_q", f"{prefix}/input_dq"
    node.input[0] = restored
    return [
        helper.make_node("QuantizeLinear", [source, scale.name, point.name], [quantised], name=f"{prefix}/Q"),
        helper.make_node("DequantizeLinear", [quantised, scale.name, point.name], [restored], name=f"{prefix}/DQ"),
    ]


def _weight_dq(node, index: int, prefix: str, layer: QuantisedLinear | QuantisedConv2d, transposed: bool, graph):
    """The weight as int8 codes and a per-channel DequantizeLinear (channel axis 1 when stored (in, out))."""
    codes = layer.weight_codes().numpy()
    codes = codes.T.copy() if transposed else codes
    weight = numpy_helper.from_array(codes, f"{prefix}/weight_codes")
    scale = numpy_helper.from_array(layer.weight_scale.detach().numpy().astype(np.float32), f"{prefix}/weight_scale")
    point = numpy_helper.from_array(
        np.zeros(codes.shape[1 if transposed else 0], dtype=np.int8), f"{prefix}/weight_zero_point"
    )
    graph.initializer.extend([weight, scale, point])
    restored = f"{prefix}/weight_dq"
    node.input[index] = restored
    inputs = [weight.name, scale.name, point.name]
    return helper.make_node(
        "DequantizeLinear", inputs, [restored], name=f"{prefix}/weight_DQ", axis=1 if transposed else 0
    )
