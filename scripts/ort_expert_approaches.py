"""One SwiGLU expert of a given shape in onnxruntime, every way of making a miss cheaper that was tried:
what it costs to make the expert runnable (the miss) and what a call at T=1 then costs, in one process.
The figures behind the weights form (docs/EXPORT.md) and docs/RUNTIME.md's "Approaches measured".

Usage: python scripts/ort_expert_approaches.py [--shapes 256x384,448x1792] [--json docs/bench/ort_approaches.json]
       [--doc docs/RUNTIME.md]   (the table goes between its ort-approaches markers)
"""

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
MS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def options(threads=1, **config):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode, so.enable_cpu_mem_arena, so.log_severity_level = ort.ExecutionMode.ORT_SEQUENTIAL, False, 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    return so


def session(model, so):
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def timed(f, n) -> float:
    for _ in range(3):
        f()
    ts = []
    for _ in range(n):
        t = time.perf_counter_ns()
        f()
        ts.append(time.perf_counter_ns() - t)
    return statistics.median(ts) / 1e3


def swiglu(op, weights, inputs, inits, dim, **attrs):
    """x (T, dim) -> w2(silu(w1 x) * w3 x) with `op` for each matmul ([x, w, extra...] per weight)."""
    nodes = [helper.make_node(op, ["x", *weights["w1"]], ["a"], **attrs.get("w1", {})),
             helper.make_node(op, ["x", *weights["w3"]], ["b"], **attrs.get("w3", {})),
             helper.make_node("Sigmoid", ["a"], ["sa"]), helper.make_node("Mul", ["a", "sa"], ["silu"]),
             helper.make_node("Mul", ["silu", "b"], ["g"]),
             helper.make_node(op, ["g", *weights["w2"]], ["y"], **attrs.get("w2", {}))]
    for n in nodes:
        if n.op_type in ("DynamicQuantizeMatMul", "MatMulNBits"):
            n.domain = "com.microsoft"
    graph = helper.make_graph(nodes, "expert", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", dim]),
                                                *inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", dim])], inits)
    return helper.make_model(graph, opset_imports=MS)


def measure(D: int, H: int, n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    W = {"w1": rng.standard_normal((D, H)), "w3": rng.standard_normal((D, H)), "w2": rng.standard_normal((H, D))}
    W = {k: (v * 0.05).astype(np.float32) for k, v in W.items()}
    x = {"x": rng.standard_normal((1, D)).astype(np.float32)}
    tmp = tempfile.mkdtemp()
    rows = []

    def row(name, miss_us, call_us, file_bytes, note=""):
        rows.append({"approach": name, "miss_us": miss_us, "call_us": call_us, "file_bytes": file_bytes, "note": note})
        print(f"{name:58s} miss {miss_us:8.0f} us  call {call_us:7.1f} us  {file_bytes / 1e3:7.0f} KB  {note}")

    # the program form (int4 MatMulNBits, weights constant): what edge-export --quant int4 writes
    fp32 = swiglu("MatMul", {k: [k] for k in W}, [], [numpy_helper.from_array(v, k) for k, v in W.items()], D)
    q = MatMulNBitsQuantizer(fp32, bits=4, block_size=32, is_symmetric=True, accuracy_level=4)
    q.process()
    path = os.path.join(tmp, "e.onnx")
    onnx.save(q.model.model, path)
    size = os.path.getsize(path)
    s = session(path, options())
    today = s.run(None, x)[0]
    row("program int4: session from the file (today)", timed(lambda: session(path, options()), n),
        timed(lambda: s.run(None, x), 5 * n), size)
    data = open(path, "rb").read()
    row("program int4: session from bytes in memory", timed(lambda: session(data, options()), n),
        timed(lambda: s.run(None, x), 5 * n), size, "no read at all: creation alone")
    row("program int4: 2 threads per session", timed(lambda: session(path, options(2)), n),
        timed(lambda: s.run(None, x), 5 * n), size, "a thread pool per session")
    nopack = {"session.disable_prepacking": "1"}
    s2 = session(path, options(**nopack))
    row("program int4: prepacking disabled", timed(lambda: session(path, options(**nopack)), n),
        timed(lambda: s2.run(None, x), 5 * n), size)
    opt = os.path.join(tmp, "e.opt.onnx")
    so = options(**{"session.save_external_prepacked_constant_initializers": "1",
                    "session.optimized_model_external_initializers_file_name": "e.opt.bin",
                    "session.optimized_model_external_initializers_min_size_in_bytes": "64"})
    so.optimized_model_filepath = opt
    session(path, so)
    s3 = session(opt, options())
    assert np.array_equal(s3.run(None, x)[0], today)
    row("program int4: prepacked initializers saved, mapped at load", timed(lambda: session(opt, options()), n),
        timed(lambda: s3.run(None, x), 5 * n), os.path.getsize(opt) + os.path.getsize(os.path.join(tmp, "e.opt.bin")))
    ortp = os.path.join(tmp, "e.ort")
    so = options(**{"session.save_model_format": "ORT"})
    so.optimized_model_filepath = ortp
    session(path, so)
    ort_bytes = open(ortp, "rb").read()
    direct = {"session.use_ort_model_bytes_directly": "1", "session.use_ort_model_bytes_for_initializers": "1"}
    s4 = session(ort_bytes, options(**direct))
    row("program int4: .ort format, bytes used in place", timed(lambda: session(ort_bytes, options(**direct)), n),
        timed(lambda: s4.run(None, x), 5 * n), len(ort_bytes))

    # the weights form: weights as inputs of one shared session; a miss is getting the bytes
    q8 = {}
    for k, v in W.items():
        scale = np.abs(v).max(0) / 127.0
        q8[k], q8[k + ".scale"] = np.round(v / scale).astype(np.int8), scale.astype(np.float32)
    wpath = os.path.join(tmp, "w.bin")
    np.concatenate([q8[k].ravel().view(np.uint8) for k in q8] + [q8[k + ".scale"].view(np.uint8) for k in W]).tofile(wpath)
    inputs = [helper.make_tensor_value_info(k, TensorProto.INT8 if v.dtype == np.int8 else TensorProto.FLOAT, v.shape)
              for k, v in q8.items()]
    slot = session(swiglu("DynamicQuantizeMatMul", {k: [k, k + ".scale"] for k in W}, inputs, [], D).SerializeToString(),
                   options())
    feeds = x | q8
    read = timed(lambda: np.fromfile(wpath, np.uint8), n)
    row("weights int8 as inputs (DynamicQuantizeMatMul), shared session", read, timed(lambda: slot.run(None, feeds), 5 * n),
        os.path.getsize(wpath), "miss = reading the bytes (page cache)")
    consts = [numpy_helper.from_array(v, k) for k, v in q8.items()]
    const = swiglu("DynamicQuantizeMatMul", {k: [k, k + ".scale"] for k in W}, [], consts, D)
    for t in const.graph.initializer:  # data supplied at session creation (add_external_initializers)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for key, val in (("location", "w.safetensors"), ("offset", "0"), ("length", "0")):
            t.external_data.add(key=key, value=val)
    const_bytes = const.SerializeToString()

    def promoted():
        so = options()
        so.add_external_initializers(list(q8), [ort.OrtValue.ortvalue_from_numpy(v) for v in q8.values()])
        return session(const_bytes, so)

    s5 = promoted()
    assert np.array_equal(s5.run(None, x)[0], slot.run(None, feeds)[0])
    row("weights int8 as initializers of its own session (promoted)", timed(promoted, n),
        timed(lambda: s5.run(None, x), 5 * n), os.path.getsize(wpath), "bit-identical to the shared session")
    nb_inputs, nb_feeds, nb_attrs = [], dict(x), {}
    for k, v in W.items():
        kk, nn = v.shape
        blocks = kk // 32
        qv = np.clip(np.round(v / (np.abs(v).reshape(blocks, 32, nn).max(1, keepdims=True) / 7).repeat(32, 1)
                              .reshape(kk, nn)), -8, 7).astype(np.int8) + 8
        packed = (qv[0::2] | (qv[1::2] << 4)).astype(np.uint8).T.reshape(nn, blocks, 16)
        nb_feeds[k], nb_feeds[k + ".scale"] = packed, (np.abs(v).reshape(blocks, 32, nn).max(1) / 7).T.ravel().astype(np.float32)
        nb_inputs += [helper.make_tensor_value_info(k, TensorProto.UINT8, packed.shape),
                      helper.make_tensor_value_info(k + ".scale", TensorProto.FLOAT, [nn * blocks])]
        nb_attrs[k] = {"K": kk, "N": nn, "bits": 4, "block_size": 32, "accuracy_level": 4}
    s6 = session(swiglu("MatMulNBits", {k: [k, k + ".scale"] for k in W}, nb_inputs, [], D, **nb_attrs).SerializeToString(),
                 options())
    row("weights int4 as inputs (MatMulNBits), shared session", read / 2, timed(lambda: s6.run(None, nb_feeds), n),
        size, "dequantises the whole matrix every call")
    f32_inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in W.items()]
    s7 = session(swiglu("MatMul", {k: [k] for k in W}, f32_inputs, [], D).SerializeToString(), options())
    row("weights fp32 as inputs (MatMul), shared session", read * 4, timed(lambda: s7.run(None, x | W), 5 * n),
        sum(v.nbytes for v in W.values()), "4x the bytes to read (miss scaled from int8)")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="256x384,448x1792", help="dim x expert hidden: shipped model, wearable")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--json", type=Path, default=Path("docs/bench/ort_approaches.json"))
    ap.add_argument("--doc", type=Path, default=None)
    a = ap.parse_args()
    shapes = [tuple(map(int, t.split("x"))) for t in a.shapes.split(",")]
    res = {f"{d}x{h}": measure(d, h, a.n) for d, h in shapes}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"onnxruntime": ort.__version__, "cores": os.cpu_count(),
                                  "date": time.strftime("%Y-%m-%d"), "shapes": res}, indent=1))
    if a.doc:
        sys.path.insert(0, str(Path(__file__).parent))
        from doc_figures import write_between_markers

        head = "| approach | " + " | ".join(f"{k}: miss us / call us / KB" for k in res) + " | note |"
        lines = [head, "|---|" + "---:|" * len(res) + "---|"]
        for i, r in enumerate(next(iter(res.values()))):
            cells = [f"{v[i]['miss_us']:.0f} / {v[i]['call_us']:.0f} / {v[i]['file_bytes'] / 1e3:.0f}" for v in res.values()]
            lines.append(f"| {r['approach']} | " + " | ".join(cells) + f" | {r['note']} |")
        lines += ["", f"`scripts/ort_expert_approaches.py --doc docs/RUNTIME.md`: one SwiGLU expert (dim x hidden), "
                  f"random weights, onnxruntime {ort.__version__}, one thread, medians of {a.n} creations and "
                  f"{5 * a.n} calls, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}."]
        write_between_markers(a.doc, "\n".join(lines), "ort-approaches", "### Approaches measured (onnxruntime)")


if __name__ == "__main__":
    main()
