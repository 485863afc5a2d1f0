"""Why an imported GGUF model loses quality at --quant int4: its weights already sit on a 4-bit grid
(Q4_1: w = m + d * q, q in 0..15, groups of 32 along the input), which the exporter's symmetric int4 does
not reproduce. Per linear weight: distinct values per group of 32, and the relative error (||W' - W|| /
||W||) of W re-quantised three ways: symmetric (scale absmax / 7.5, q in -8..7, close to the exporter's),
asymmetric with an integer zero point (MatMulNBits' uint8 zero points), and the Q4_1 form (float minimum
and step, what a per-group offset would give). Then onnxruntime's MatMulNBits timed with no, uint8 and
float zero points (float ones reproduce Q4_1 exactly, but run a slow path).
Usage: python scripts/int4_grid_probe.py MODEL.pt [--layers 2]; prints JSON lines.
"""

import argparse
import json
import time

import numpy as np
import torch

from cosmoe_edge.model.checkpoint import load_model

G = 32


def groups(w):
    return w.reshape(w.shape[0], -1, G)


def symmetric(w):
    g = groups(w)
    s = g.abs().amax(-1, keepdim=True) / 7.5
    return (torch.round(g / s).clamp(-8, 7) * s).reshape(w.shape)


def asymmetric_integer_zero(w):
    g = groups(w)
    lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
    s = (hi - lo) / 15
    z = torch.round(-lo / s).clamp(0, 15)
    return ((torch.round(g / s + z).clamp(0, 15) - z) * s).reshape(w.shape)


def q4_1(w):
    g = groups(w)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    s = (hi - lo) / 15
    return (torch.round((g - lo) / s).clamp(0, 15) * s + lo).reshape(w.shape)


def matmulnbits_us(n: int, k: int, zero_points: str, tokens: int = 1, reps: int = 50) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    blocks = k // G
    q = rng.integers(0, 16, (n, blocks, G)).astype(np.uint8)
    inits = [numpy_helper.from_array((q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8), "B"),
             numpy_helper.from_array(rng.uniform(0.01, 0.05, n * blocks).astype(np.float32), "scales")]
    if zero_points == "float":
        inits.append(numpy_helper.from_array(rng.uniform(0, 15, n * blocks).astype(np.float32), "zp"))
    elif zero_points == "uint8":
        z = rng.integers(0, 16, (n, blocks + blocks % 2)).astype(np.uint8)
        inits.append(numpy_helper.from_array((z[:, 0::2] | (z[:, 1::2] << 4)).reshape(-1), "zp"))
    node = helper.make_node("MatMulNBits", ["x"] + [i.name for i in inits], ["y"], domain="com.microsoft", K=k, N=n,
                            bits=4, block_size=G, accuracy_level=4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    for _ in range(5):
        sess.run(None, {"x": x})
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            sess.run(None, {"x": x})
        best = min(best, (time.perf_counter() - t) / reps)
    return round(best * 1e6, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args()
    model, _, _ = load_model(a.model)
    for name, p in model.named_parameters():
        if p.ndim != 2 or p.shape[1] % G or not name.startswith(tuple(f"layers.{i}." for i in range(a.layers))):
            continue
        w = p.detach().float()
        levels = float(np.mean([len(torch.unique(g)) for g in w.reshape(-1, G)[:512]]))
        err = {f.__name__: round(((f(w) - w).norm() / w.norm()).item(), 4)
               for f in (symmetric, asymmetric_integer_zero, q4_1)}
        print(json.dumps({"weight": name, "shape": list(w.shape), "values_per_group": round(levels, 1),
                          "relative_error": err}), flush=True)
    n, k = model.cfg.dense_hidden or model.cfg.expert_hidden, model.cfg.dim
    print(json.dumps({"matmulnbits_us_one_token": {"shape": [n, k], **{z: matmulnbits_us(n, k, z)
                                                                        for z in ("none", "uint8", "float")}}}))


if __name__ == "__main__":
    main()
