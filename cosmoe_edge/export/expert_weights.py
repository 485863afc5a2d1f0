"""ONNX experts in the weights form (`--quant int8`): each expert is only its weights, one safetensors
file of int8 matrices with one fp32 scale per output column, and every expert of a layer shape runs
through one shared graph of onnxruntime's DynamicQuantizeMatMul that takes them as inputs. A miss then
costs reading the file, not creating a program (~1-3 ms); the runtime may also give a hot expert a
session of its own from the same bytes (the const graph: the weights as initializers, prepacked), which
computes bit-identical outputs with the same kernels.

Tensor names follow the expert module: `w1.weight` (a plain linear) or `w1.0.weight`, `w1.1.weight`
(the factors of a `wd` expert), each stored as `<name>` (int8, (in, out)) and `<name>.scale` (fp32, (out,)).
"""

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def quantize_columns(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """nn.Linear weight (out, in) -> int8 (in, out) and one symmetric fp32 scale per output column."""
    w = weight.detach().float().t().contiguous().numpy()
    scale = np.maximum(np.abs(w).max(0), 1e-12) / 127.0
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def factors(expert) -> dict[str, list[str]]:
    """Per matrix of the SwiGLU (w1, w3, w2), the names of its linear factors in the order they apply."""
    names = [n for n, m in expert.named_modules() if isinstance(m, torch.nn.Linear)]
    return {w: sorted((n for n in names if n == w or n.startswith(w + ".")), key=lambda n: n.split(".")[-1])
            for w in ("w1", "w3", "w2")}


def expert_tensors(expert) -> dict[str, np.ndarray]:
    out = {}
    for names in factors(expert).values():
        for n in names:
            q, s = quantize_columns(expert.get_submodule(n).weight)
            out[f"{n}.weight"], out[f"{n}.weight.scale"] = q, s
    return out


def expert_graph(expert, dim: int, constant: bool) -> onnx.ModelProto:
    """x (T, dim) -> y (T, dim) = w2(silu(w1 x) * w3 x), each linear a DynamicQuantizeMatMul. The weights
    are graph inputs (the shared slot graph), or, with `constant`, initializers whose data the runtime
    supplies from the expert's file (onnxruntime's add_external_initializers) so that they are prepacked."""
    tensors = expert_tensors(expert)
    nodes, inputs, inits = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", dim])], []
    for name, arr in tensors.items():
        if constant:
            t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype), dims=arr.shape)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", "expert.safetensors"), ("offset", "0"), ("length", str(arr.nbytes))):
                t.external_data.add(key=k, value=v)
            inits.append(t)
        else:
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))

    def chain(src: str, w: str) -> str:
        for n in factors(expert)[w]:
            out = f"{n}.out"
            nodes.append(helper.make_node("DynamicQuantizeMatMul", [src, f"{n}.weight", f"{n}.weight.scale"], [out],
                                          domain="com.microsoft"))
            src = out
        return src

    a, b = chain("x", "w1"), chain("x", "w3")
    nodes += [helper.make_node("Sigmoid", [a], ["gate"]), helper.make_node("Mul", [a, "gate"], ["silu"]),
              helper.make_node("Mul", ["silu", b], ["h"])]
    y = chain("h", "w2")
    nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(nodes, "expert_const" if constant else "expert_slot", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", dim])], inits)
    return helper.make_model(graph, opset_imports=OPSETS)
