"""The figures of docs/EXPORT.md, read from an artifact's manifest (sizes, delegation, verification,
export time) and from per-call timings measured here, written between the figure markers.
Usage: python scripts/export_figures.py ARTIFACT [--out docs/EXPORT.md]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from doc_figures import write_between_markers

from cosmoe_edge.runtime.backends import open_program
from cosmoe_edge.runtime.kv import attention_mask, rope_rows


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def call_us(artifact: Path, m: dict, backend: str, pos0: int = 20, calls: int = 300) -> dict:
    """Median wall time of one decode-sized call (T = 1) of layer_0, head and expert (0, 0)."""
    cfg, section = m["model"], m["backends"][backend]
    D, kv, hd = cfg["dim"], cfg["n_kv_heads"], cfg["head_dim"]
    cos, sin = rope_rows(hd, cfg["max_seq_len"], cfg["rope_theta"])
    h = np.random.default_rng(0).standard_normal((1, D)).astype(np.float32)
    past = np.zeros((pos0, kv, hd), np.float32)
    layer_in = [h, cos[pos0:pos0 + 1], sin[pos0:pos0 + 1], past, past,
                attention_mask(pos0, 1, cfg["n_heads"] // kv)]
    parts = section["backbone"]["parts"]
    expert = next(e for e in section["experts"] if e["layer"] == 0 and e["expert"] == 0)
    out = {}
    for name, path, method, inputs in (("layer", parts["layer_0"]["path"], parts["layer_0"]["method"], layer_in),
                                       ("head", parts["head"]["path"], parts["head"]["method"], [h]),
                                       ("expert", expert["path"], "forward", [h])):
        prog = open_program(backend, artifact / path, [method], expert=name == "expert")
        times = []
        for _ in range(calls):
            t = time.perf_counter_ns()
            prog.run(method, inputs)
            times.append(time.perf_counter_ns() - t)
        prog.release()
        out[name] = statistics.median(times[calls // 10:]) / 1e3
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/EXPORT.md"))
    a = ap.parse_args()
    m = json.loads((a.artifact / "manifest.json").read_text())
    emb = m["embedding"]["bytes"]
    lines = [f"Measured {time.strftime('%Y-%m-%d')} by `scripts/export_figures.py` on the shipped model's "
             f"{m['quant']['scheme']} artifact (`edge-export models/cosmoe-default.pt --quant {m['quant']['scheme']} "
             f"--jobs 2`, both backends): export took **{m['export_seconds']:.0f} s** on this 2-core machine, "
             "verification included.", "",
             "| | executorch | onnx |", "|---|---|---|"]
    rows = {k: [] for k in ("backbone program(s)", "+ embedding table (int8 rows, shared)", "LM head inside the backbone",
                            "all experts", "one expert", "expert share of the model", "linear layers lowered",
                            "LM head: --head-quant auto's int4 trial, perplexity", "held-out perplexity vs eager fp32",
                            "top-1 agreement with eager fp32",
                            "decode call: layer / expert / head (T = 1, pos 20)")}
    for b in ("executorch", "onnx"):
        s = m["backends"][b]
        backbone = sum(f["bytes"] for f in s["backbone"]["files"])
        experts = sum(e["bytes"] for e in s["experts"])
        head = next(f["bytes"] for f in s["backbone"]["files"] if f["path"].rsplit("/", 1)[-1].startswith("head."))
        if b == "onnx":
            d = s["matmulnbits"]["backbone"]
            done, total = sum(v["matmulnbits"] for v in d.values()), sum(v["linear_layers"] for v in d.values())
            lowered = f"MatMulNBits {done}/{total} in the backbone, {s['matmulnbits']['per_expert']} per expert"
        else:
            dl = s["delegation"]
            lowered = (f"{dl['xnnpack_ops']} ops in XNNPACK, {sum(dl['portable_ops'].values())} portable; "
                       f"1 delegate call per method")
        v = m.get("verification", {}).get(b, {}).get("heldout", {})
        us = call_us(a.artifact, m, b)
        rows["backbone program(s)"].append(mb(backbone))
        rows["+ embedding table (int8 rows, shared)"].append(f"{mb(emb)} ({emb / (backbone + emb):.0%} of backbone)")
        rows["LM head inside the backbone"].append(f"{mb(head)} ({head / (backbone + emb):.0%})")
        rows["all experts"].append(mb(experts))
        rows["one expert"].append(f"{s['experts'][0]['bytes'] / 1e3:.0f} KB")
        rows["expert share of the model"].append(f"{experts / (experts + backbone + emb):.0%}")
        rows["linear layers lowered"].append(lowered)
        c = m["quant"].get("head_choice", {})
        rows["LM head: --head-quant auto's int4 trial, perplexity"].append(
            f"{c[b]:.3f} vs {c['fp32']:.3f} with the fp32 head ({c[b] / c['fp32'] - 1:+.2%}): "
            f"{m['quant']['head']} kept" if b in c else m["quant"]["head"])
        rows["held-out perplexity vs eager fp32"].append(
            f"{v['ppl_artifact']:.3f} vs {v['ppl_eager_fp32']:.3f} ({v['ppl_change']:+.2%})" if v else "not verified")
        rows["top-1 agreement with eager fp32"].append(f"{v['top1_agreement']:.1%}" if v else "")
        rows["decode call: layer / expert / head (T = 1, pos 20)"].append(
            f"{us['layer']:.0f} / {us['expert']:.0f} / {us['head']:.0f} us")
    lines += [f"| {k} | {' | '.join(v)} |" for k, v in rows.items()]
    lines += ["", f"Verification: {v.get('tokens', 0)} tokens of held-out text, one passage scored with the "
              "full context (so its perplexity is not the model card's, which averages short windows). "
              "The head's trial scores the same held-out text through the eager model with only the head "
              f"quantised; int4 is kept when it adds at most {m['quant'].get('head_choice', {}).get('tolerance', 0):.1%} "
              "on every backend. Call times are medians of 300 calls in one process, one thread, after warm-up."]
    body = "\n".join(lines)
    write_between_markers(a.out, body)
    print(body)


if __name__ == "__main__":
    main()
