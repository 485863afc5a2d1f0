"""Does one call per layer holding all of its experts beat two calls to the two chosen experts? (the
fused per-layer path of docs/RUNTIME.md, measured before building it). For the ONNX int4 experts of
ARTIFACT: each layer's expert programs merged into one graph (`onnx.compose`, the token dimension
renamed per expert so each can be empty), then per layer, for random top-2 choices: two calls to the
chosen experts' own sessions against one call to the merged session with (0, D) inputs for the rest.
Threads: 1; 2 in one shared intra-op pool; 2 in the parallel executor (the two experts side by side).
ExecuTorch is not measured: XNNPACK takes no empty tensors.
Usage: python scripts/fused_experts_probe.py ARTIFACT [--layers 8]; prints one JSON line per mode.
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def merged(artifact, experts, layer):
    import onnx
    from onnx import compose

    out = None
    for e in experts:
        m = compose.add_prefix(onnx.load(f"{artifact}/{e['path']}"), f"e{e['expert']}_")
        for vi in [*m.graph.input, *m.graph.output, *m.graph.value_info]:
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param:
                    d.dim_param = f"e{e['expert']}_{d.dim_param}"
        out = m if out is None else compose.merge_models(out, m, io_map=[])
    return out.SerializeToString()


def measure(artifact: str, layers: int, mode: str) -> dict:
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state

    threads = 1 if mode == "1 thread" else 2
    parallel = mode == "2 threads, parallel executor"
    if threads > 1:
        _pybind_state.set_global_thread_pool_sizes(1 if parallel else 2, 2 if parallel else 1)

    def session(model):
        so = ort.SessionOptions()
        so.enable_cpu_mem_arena = False
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if parallel:
            so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        if threads > 1:
            so.use_per_session_threads = False
        else:
            so.intra_op_num_threads = so.inter_op_num_threads = 1
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    manifest = json.load(open(f"{artifact}/manifest.json"))
    E, D = manifest["model"]["num_experts"], manifest["model"]["dim"]
    experts = manifest["backends"]["onnx"]["experts"]
    layers = min(layers, manifest["model"]["n_layers"])
    by_layer = [[e for e in experts if e["layer"] == li] for li in range(layers)]
    single = [[session(f"{artifact}/{e['path']}") for e in by] for by in by_layer]
    fused = [session(merged(artifact, by, li)) for li, by in enumerate(by_layer)]
    x, empty = np.random.default_rng(0).standard_normal((1, D), dtype=np.float32), np.zeros((0, D), np.float32)
    picks = [[np.random.default_rng(i * 97 + li).choice(E, 2, replace=False) for li in range(layers)]
             for i in range(200)]
    a, b = picks[0][0]
    same = np.array_equal(fused[0].run(None, {f"e{e}_x": x if e in (a, b) else empty for e in range(E)})[a],
                          single[0][a].run(None, {"x": x})[0])
    best = {"two calls": 1e9, "one fused call": 1e9}
    for _ in range(3):
        t = time.perf_counter()
        for p in picks:
            for li, (a, b) in enumerate(p):
                single[li][a].run(None, {"x": x})
                single[li][b].run(None, {"x": x})
        best["two calls"] = min(best["two calls"], (time.perf_counter() - t) / len(picks) / layers * 1e6)
        t = time.perf_counter()
        for p in picks:
            for li, (a, b) in enumerate(p):
                fused[li].run(None, {f"e{e}_x": x if e in (a, b) else empty for e in range(E)})
        best["one fused call"] = min(best["one fused call"], (time.perf_counter() - t) / len(picks) / layers * 1e6)
    return {"mode": mode, "us_per_layer": {k: round(v, 1) for k, v in best.items()},
            "fused_over_two_calls": round(best["one fused call"] / best["two calls"], 2),
            "fused_output_equals_single": bool(same)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--mode")
    a = ap.parse_args()
    if a.mode:  # one mode per process: onnxruntime's shared thread pool is sized once
        print(json.dumps(measure(a.artifact, a.layers, a.mode)))
        return
    for mode in ("1 thread", "2 threads, one pool", "2 threads, parallel executor"):
        subprocess.run([sys.executable, __file__, a.artifact, "--layers", str(a.layers), "--mode", mode], check=True)


if __name__ == "__main__":
    main()
