"""Export programs to ONNX (torch.onnx dynamo exporter) and quantise them for onnxruntime."""

import io
import logging
import warnings
from contextlib import redirect_stdout

import torch

from cosmoe_edge.errors import ExportError
from cosmoe_edge.export.quantize import count_ops, onnx_quantize


def to_onnx(module, example, input_names, output_names, dynamic_shapes):
    """One self-contained ModelProto (weights inline: each expert file must stand alone)."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, example, dynamo=True, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic_shapes, verbose=False)
    return without_debug_info(program.model_proto)


def without_debug_info(proto):
    """Drop the exporter's per-node debug metadata (source file paths, stack traces, module names): an
    artifact's bytes should depend on the model, not on the folder the exporter ran from."""
    for node in proto.graph.node:
        node.ClearField("metadata_props")
        node.ClearField("doc_string")
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info, *proto.graph.initializer]:
        value.ClearField("metadata_props")
        value.ClearField("doc_string")
    return proto


# The IR version written: 9 (onnx 1.15) holds every graph the exporter makes (no 4-bit tensor types; MatMulNBits
# packs into uint8), and onnxruntime before 1.18 refuses 10, which the exporter would otherwise stamp
IR_VERSION = 9


def quantize(model, scheme: str, group_size: int, expected_matmuls: int, what: str):
    """Quantise per scheme and check that every linear layer became a MatMulNBits node."""
    model.ir_version = IR_VERSION
    if scheme == "fp32":
        return model, 0
    model = onnx_quantize(model, 4 if scheme == "int4" else 8, group_size)
    model.ir_version = IR_VERSION
    n = count_ops(model, "MatMulNBits")
    if n != expected_matmuls:
        raise ExportError(f"{what}: {n} MatMulNBits nodes after quantisation, expected {expected_matmuls} (a linear "
                          "layer the quantiser did not take would stay fp32)", "quantization_incomplete")
    return model, n
