"""Graph fusion of an exported classifier for onnxruntime's CPU kernels (used by hf_meta/export.py).

`torch.onnx.export` writes attention as the primitive ops of `scaled_dot_product_attention` (matmuls, a mask
`Where`, a softmax, transposes) and GELU as `Erf` arithmetic. onnxscript's onnxruntime rewriter
(`onnxscript.rewriter.ort_fusions`) replaces those patterns with onnxruntime's fused operators (`Attention`,
`SkipLayerNormalization`, `BiasGelu`, of the `com.microsoft` domain). The fused graph computes the same function with
fewer, larger kernels, and onnxruntime's dynamic quantiser turns a fused `Attention` into `QAttention`, whose query,
key and value projection then runs in int8 too; on the unfused graph those three projections were the only weight
matrices quantized one by one, and the attention arithmetic around them stayed in float.

The fused graph runs in onnxruntime only (other ONNX runtimes lack the `com.microsoft` operators); `export_onnx(...,
fuse=False)` keeps the standard-ops graph.
"""

from __future__ import annotations

from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)


def fuse_for_onnxruntime(source: Path, destination: Path, external_data: str | None = None) -> dict[str, int]:
    """Write the onnxruntime-fused graph of `source` to `destination`; return the count of each fusion applied.

    Args:
        source: an ONNX file written by `torch.onnx.export(dynamo=True)`.
        destination: where the fused graph goes (it may be `source`).
        external_data: the file name (beside `destination`) for the weights, for graphs over protobuf's 2 GiB.

    Raises whatever the rewriter raises on a graph it cannot handle; the caller keeps the unfused graph then.
    """
    from onnxscript import ir, optimizer
    from onnxscript.rewriter import ort_fusions

    model = ir.load(str(source))
    fused = ort_fusions.optimize_for_ort(model)
    model, applied = fused if isinstance(fused, tuple) else (fused, {})  # older onnxscript returns the model alone
    # The fused `Attention` takes one query-key-value weight, which the rewriter builds as a `Concat` of the three
    # projections: fold it into one constant, so the quantiser sees a weight matrix it can quantize.
    optimizer.fold_constants(model, input_size_limit=2**31, output_size_limit=2**31)
    ir.passes.common.RemoveUnusedNodesPass()(model)
    _drop_equal_qkv_sizes(model)
    ir.save(model, str(destination), external_data=external_data)
    return {name: count for name, count in applied.items() if count}


def _drop_equal_qkv_sizes(model) -> None:
    """Drop an `Attention` node's `qkv_hidden_sizes` where the three sizes are equal (the operator's default).

    onnxruntime's quantiser leaves an `Attention` with that attribute in float (its `QAttention` has no such
    attribute); with three equal sizes the attribute says what the operator assumes without it.
    """
    for node in model.graph:
        if node.op_type != "Attention" or node.domain != "com.microsoft":
            continue
        sizes = node.attributes.get("qkv_hidden_sizes")
        if sizes is not None and len(set(sizes.as_ints())) == 1:
            del node.attributes["qkv_hidden_sizes"]
