"""The figures of docs/RUNTIME.md, measured in fresh processes on this machine and written between the
figure markers. Usage: python scripts/runtime_figures.py [--bench runs/bench] [--repeats 3]

Needs the artifacts of scripts/make_bench_models.sh (default-int4, nobles-int4, wearable-int4) and the
checkpoints for the eager baseline (models/cosmoe-default.pt, runs/bench/wearable.pt).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from doc_figures import write_between_markers

from cosmoe_edge.runtime.cli import command
from cosmoe_edge.runtime.options import RunOptions

PROMPT = "The list type is"


def edge_run(artifact, backend, budget="all", cold=False, preload=False, policy="lru", prefetch=False, tokens=128):
    with tempfile.TemporaryDirectory() as d:
        rep = Path(d) / "r.json"
        options = RunOptions(prompt=PROMPT, backend=backend, memory_budget=budget, cache_policy=policy,
                             max_new_tokens=tokens, prefetch=prefetch, cold=cold, preload=preload)
        subprocess.run(command(artifact, options, report=rep), check=True, stdout=subprocess.DEVNULL)
        return json.loads(rep.read_text())


def eager(model, tokens=128):
    with tempfile.TemporaryDirectory() as d:
        rep = Path(d) / "r.json"
        subprocess.run([sys.executable, "-m", "cosmoe_edge.bench.eager", str(model), "--prompt", PROMPT, "--max-new-tokens",
                        str(tokens), "--report", str(rep)], check=True, stdout=subprocess.DEVNULL)
        return json.loads(rep.read_text())


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def repeat(n, f, *a, **kw):
    return [f(*a, **kw) for _ in range(n)]


def MODELS(bench: Path):
    return (("default (11M)", bench / "default-int4", Path("models/cosmoe-default.pt")),
            ("llama.cpp reference shape (153M, random)", bench / "llamacpp-ref-int4", bench / "llamacpp-ref.pt"),
            ("wearable-scale (392M, random)", bench / "wearable-int4", bench / "wearable.pt"))


def decode_profile(bench: Path) -> list[str]:
    """Per decode step: time inside program calls against time in the Python loop around them."""
    rows = ["| model | backend | ms/token | in program calls | Python loop | calls/token | us per layer / expert / head "
            "call |", "|---|---|---|---|---|---|---|"]
    for name, art, _ in MODELS(bench):
        if not art.exists():
            continue
        for b in ("executorch", "onnx"):
            out = subprocess.run([sys.executable, "scripts/decode_profile.py", str(art), b], capture_output=True,
                                 text=True, check=True).stdout
            p = json.loads(out.strip().splitlines()[-1])
            us = p["us_per_call"]
            rows.append(f"| {name} | {b} | {p['ms_per_token']:.2f} | {p['calls_ms_per_token']:.2f} ms | "
                        f"{p['python_ms_per_token']:.2f} ms | {p['calls_per_token']:.0f} | "
                        f"{us['layer']:.0f} / {us['expert']:.0f} / {us['head']:.0f} |")
    return rows


def fixed_cost() -> list[str]:
    """RSS of a process that has imported what each backend needs, before loading anything."""
    probes = {"onnx (numpy + onnxruntime + tokenizers)":
              "import numpy, onnxruntime, tokenizers, cosmoe_edge.runtime.engine",
              "executorch (+ torch, executorch.runtime)":
              "import cosmoe_edge.runtime.engine; from cosmoe_edge.runtime.backends import silenced_stderr\n"
              "with silenced_stderr(python_logging=True):\n    import torch, executorch.runtime"}
    rows = ["| backend | RSS after imports |", "|---|---|"]
    for name, code in probes.items():
        out = subprocess.run([sys.executable, "-c", code + "\nfrom cosmoe_edge.runtime.metrics import rss_bytes\n"
                              "print(rss_bytes())"], capture_output=True, text=True, check=True).stdout
        rows.append(f"| {name} | {int(out.split()[-1]) / 1e6:.0f} MB |")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", type=Path, default=Path("runs/bench"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("docs/RUNTIME.md"))
    a = ap.parse_args()
    n = a.repeats
    cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
               if ln.startswith("model name"))
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {cpu} ({__import__('os').cpu_count()} cores) by "
             f"`scripts/runtime_figures.py --repeats {n}`: medians of {n} fresh processes, 128 new tokens after the "
             f"prompt \"{PROMPT}\", one thread per program call.", ""]

    lines += ["### Decode speed, all experts resident (int4), against eager PyTorch fp32 in the same run", "",
              "| model | eager fp32 tok/s | executorch tok/s (x eager) | onnx tok/s (x eager) |", "|---|---|---|---|"]
    for name, art, model in MODELS(a.bench):
        if not art.exists():
            lines.append(f"| {name} | not built | | |")
            continue
        e = median(repeat(n, eager, model), "decode_tokens_per_s")
        cells = []
        for b in ("executorch", "onnx"):
            t = median(repeat(n, edge_run, art, b), "decode_tokens_per_s")
            cells.append(f"{t:.0f} ({t / e:.2f}x)")
        lines.append(f"| {name} | {e:.0f} | {cells[0]} | {cells[1]} |")

    lines += ["", "### Where a decode step's time goes (all experts resident; `scripts/decode_profile.py`)", ""]
    lines += decode_profile(a.bench)

    lines += ["", "### Budgets, cold (page cache dropped before each run), LRU, int4", "",
              "| model | backend | budget | decode tok/s | of 100% | storage read | hit rate | peak RSS |",
              "|---|---|---|---|---|---|---|---|"]
    for name in ("default-int4", "nobles-int4"):
        art = a.bench / name
        if not art.exists():
            continue
        for b in ("executorch", "onnx"):
            full = None
            for budget in ("100%", "50%", "25%", "12.5%"):
                runs = repeat(n, edge_run, art, b, budget, cold=True)
                t = median(runs, "decode_tokens_per_s")
                full = full or t
                label = "sticky (default)" if name.startswith("default") else "no stickiness"
                lines.append(f"| {label} | {b} | {budget} | {t:.0f} | "
                             f"{t / full:.0%} | {median(runs, 'storage_read_bytes') / 1e6:.1f} MB | "
                             f"{median(runs, 'expert_hit_rate'):.1%} | {median(runs, 'peak_rss_bytes') / 1e6:.0f} MB |")

    lines += ["", "### Time to first token: lazy experts against loading every expert up front (warm page cache)", "",
              "| backend | lazy: load + TTFT | up front: load + TTFT | runtime import (apart) |", "|---|---|---|---|"]
    art = a.bench / "default-int4"
    for b in ("executorch", "onnx"):
        lazy = repeat(n, edge_run, art, b, tokens=8)
        pre = repeat(n, edge_run, art, b, preload=True, tokens=8)
        lines.append(f"| {b} | {median(lazy, 'load_ms'):.0f} + {median(lazy, 'ttft_ms'):.0f} ms | "
                     f"{median(pre, 'load_ms'):.0f} + {median(pre, 'ttft_ms'):.0f} ms | "
                     f"{median(lazy, 'runtime_import_ms'):.0f} ms |")

    lines += ["", "### Prefetch at 25% (warm), does the guess pay?", "",
              "| backend | decode tok/s without | with prefetch | guesses issued / useful |", "|---|---|---|---|"]
    for b in ("executorch", "onnx"):
        off = repeat(n, edge_run, art, b, "25%")
        on = repeat(n, edge_run, art, b, "25%", prefetch=True)
        lines.append(f"| {b} | {median(off, 'decode_tokens_per_s'):.0f} | {median(on, 'decode_tokens_per_s'):.0f} | "
                     f"{statistics.median(r['prefetch']['issued'] for r in on):.0f} / "
                     f"{statistics.median(r['prefetch']['useful'] for r in on):.0f} |")

    lines += ["", "### Fixed cost of the runtime itself", ""] + fixed_cost()
    body = "\n".join(lines)
    write_between_markers(a.out, body)
    print(body)


if __name__ == "__main__":
    main()
