"""PEER against MoE on flash (issue 15, step 5): bytes loaded from storage per decode token, and decode tokens/s,
against the memory budget, for the PEER model (runs/card/peer-mid.pt: its middle layer a pool of 256^2 single-
neuron experts) and the MoE model of equal active FLOPs (the shipped model), both exported int8 for onnxruntime.

Every run is cold (the artifact dropped from the page cache) and in a fresh process; the configurations are
interleaved (the machine drifts). Bytes loaded are counted where they are read, per layer: an expert's file on
each miss (what a device without spare RAM reads again), a PEER layer's pages (4 KiB each) on each row miss;
storage_read_bytes (/proc/self/io, the OS's own count) is kept beside them. Writes runs/peer-bench/results.json,
docs/bench/peer_bench.png and the table between the "peer-bench" markers of docs/BENCHMARKS.md.

Usage: python scripts/peer_bench.py [--moe runs/peer-bench/moe-int8] [--peer runs/peer-bench/peer-mid-int8]
       [--budgets 100,50,25,10,5] [--tokens 128] [--repeats 1]
(the two artifacts: edge-export MODEL --quant int8 --backend onnx --out ARTIFACT)
       python scripts/peer_bench.py --edge-bench docs/bench/peer
writes the whole-model table of an edge-bench run of the same two artifacts (its loaded KB per decode token and
decode tokens/s; the command is in the text) between the "peer-edge-bench" markers.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

PROMPTS = ["The list type is", "To read a file, use", "def main():\n    ", "A dictionary maps keys to"]
LAYER = 2  # the layer PEER replaces


def one(artifact: str, budget: str, prompt: str, tokens: int) -> dict:
    """One cold run in this process: decode tokens/s and bytes loaded per layer, prompt and decode apart."""
    from tokenizers import Tokenizer

    from cosmoe_edge.runtime.engine import Engine
    from cosmoe_edge.runtime.generate import Sampler, generate
    from cosmoe_edge.runtime.manifest import artifact_files, backend_section, lazy_bytes, load_manifest
    from cosmoe_edge.runtime.metrics import drop_page_cache, peak_rss_bytes, storage_read_bytes
    from cosmoe_edge.runtime.options import parse_budget

    art = Path(artifact)
    m = load_manifest(art)
    section = backend_section(m, "onnx")
    drop_page_cache(artifact_files(art, m))
    read0 = storage_read_bytes()
    file_bytes = {(e["layer"], e["expert"]): e["bytes"] for e in section["experts"]}
    phase = ["prompt"]
    loaded = {"prompt": Counter(), "decode": Counter()}

    def on_event(kind, key, _resident):
        if kind == "miss":
            loaded[phase[0]][key[0]] += file_bytes[key]

    engine = Engine(art, "onnx", budget_bytes=parse_budget(budget, lazy_bytes(m, section)), on_cache_event=on_event)
    rows_at = {}

    def on_token(_token):
        if phase[0] == "prompt":
            phase[0] = "decode"
            if engine.peer:
                rows_at["prompt"] = engine.peer.cache.bytes_read

    ids = Tokenizer.from_file(str(art / "tokenizer.json")).encode(prompt).ids
    out, timings, _ = generate(engine, ids, tokens, Sampler(0.0, 0, 1.0, 0), None, on_token)
    peer_layers = sorted(engine.peer.layers) if engine.peer else []
    for layer in peer_layers:  # one PEER layer here: its cache's reads are that layer's
        loaded["decode"][layer] += engine.peer.cache.bytes_read - rows_at["prompt"]
        loaded["prompt"][layer] += rows_at["prompt"]
    c = engine.cache
    result = {"decode_tokens": len(timings.token_ns), "decode_s": sum(timings.token_ns) / 1e9,
              "loaded_decode": dict(loaded["decode"]), "loaded_prompt": dict(loaded["prompt"]),
              "storage_read_bytes": storage_read_bytes() - read0, "peak_rss_bytes": peak_rss_bytes(),
              "budget_bytes": engine.budget, "lazy_bytes": engine.expert_bytes_total,
              "expert_hits": c.hits, "expert_misses": c.misses, "peer_layers": peer_layers}
    if engine.peer:
        rc = engine.peer.cache
        result |= {"row_hits": rc.hits, "row_misses": rc.misses, "rows_budget_bytes": rc.budget}
    engine.close()
    return result


def bench(artifacts: dict, budgets: list[str], tokens: int, repeats: int) -> dict:
    runs = {(name, b): [] for name in artifacts for b in budgets}
    todo = [(name, b, p) for _ in range(repeats) for p in PROMPTS for b in budgets for name in artifacts]
    for i, (name, b, p) in enumerate(todo):
        r = subprocess.run([sys.executable, __file__, "one", artifacts[name], f"{b}%", p, str(tokens)],
                           capture_output=True, text=True)
        if r.returncode:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            runs[(name, b)].append({"error": last})
            print(f"[{i + 1}/{len(todo)}] {name} {b}%: {last}", flush=True)
            continue
        runs[(name, b)].append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"[{i + 1}/{len(todo)}] {name} {b}%", flush=True)
    out = {}
    for (name, b), rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out.setdefault(name, {})[b] = {"error": rs[0]["error"] if rs else "not run"}
            continue
        n = sum(r["decode_tokens"] for r in ok)
        layers = sorted({int(k) for r in ok for k in r["loaded_decode"]})
        per_layer = {layer: sum(r["loaded_decode"].get(str(layer), 0) for r in ok) / n for layer in layers}
        out.setdefault(name, {})[b] = {
            "runs": len(ok), "decode_tokens": n,
            "decode_tokens_per_s": statistics.median(r["decode_tokens"] / r["decode_s"] for r in ok),
            "loaded_per_token": sum(per_layer.values()), "loaded_per_token_by_layer": per_layer,
            "storage_read_bytes": statistics.median(r["storage_read_bytes"] for r in ok),
            "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in ok),
            "budget_bytes": ok[0]["budget_bytes"], "lazy_bytes": ok[0]["lazy_bytes"],
            "expert_hit_rate": sum(r["expert_hits"] for r in ok) / max(1, sum(r["expert_hits"] + r["expert_misses"]
                                                                              for r in ok)),
            **({"row_hit_rate": sum(r["row_hits"] for r in ok) / max(1, sum(r["row_hits"] + r["row_misses"]
                                                                             for r in ok)),
                "rows_budget_bytes": ok[0]["rows_budget_bytes"]} if "row_hits" in ok[0] else {})}
    return out


def table(results: dict, budgets: list[str]) -> str:
    moe, peer = results["moe"], results["peer"]
    kb = lambda v: f"{v / 1e3:,.0f}"  # noqa: E731
    lines = ["| budget | MoE model: budget MB | KB/token (all layers) | layer 2 (MoE) | decode tok/s | PEER model: "
             "budget MB (rows) | KB/token (all layers) | layer 2 (PEER rows) | row hit rate | decode tok/s | "
             "layer 2: MoE / PEER |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in budgets:
        m, p = moe.get(b, {}), peer.get(b, {})
        cells = [f"{b}%"]
        for r, layer_note in ((m, ""), (p, "row")):
            if "error" in r or not r:
                why = r.get("error", "not run")
                if "below the minimum of" in why:  # the engine's budget_too_small line
                    least = int(why.split("minimum of ")[1].split()[0].replace(",", ""))
                    why = f"cannot run: below its minimum, {least / 1e3:,.0f} KB"
                cells += [why, "", "", ""] + ([""] if layer_note else [])
                continue
            budget = f"{r['budget_bytes'] / 1e6:.2f}" + (f" ({r['rows_budget_bytes'] / 1e6:.2f})" if layer_note else "")
            cells += [budget, kb(r["loaded_per_token"]), kb(r["loaded_per_token_by_layer"].get(LAYER, 0)),
                      f"{r['decode_tokens_per_s']:.0f}"]
            if layer_note:
                cells.insert(-1, f"{r['row_hit_rate']:.0%}")
        ml = m.get("loaded_per_token_by_layer", {}).get(LAYER)
        pl = p.get("loaded_per_token_by_layer", {}).get(LAYER)
        cells.append(f"{ml / pl:.1f}x" if ml and pl else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def edge_bench_table(folder: Path) -> str:
    d = json.loads((folder / "results.json").read_text())
    hw, rows = d["machine"], [r for r in d["rows"] if "decode_tokens_per_s" in r and r["policy"] not in ("none",)]
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    by = {(Path(r["artifact"]).name, r["budget"]): r for r in rows}
    names = list(dict.fromkeys(Path(r["artifact"]).name for r in rows))
    failed = {(Path(r["artifact"]).name, r["budget"]) for r in d["rows"] if r.get("status") != "ok"}
    prompts = [p for p in (folder / "prompts.txt").read_text().splitlines() if p.strip()]
    lines = [f"The same two artifacts in one edge-bench run ({hw['date']}, {hw['cpu']}, {hw['cores']} cores; "
             f"`edge-bench runs/peer-bench/moe-int8 runs/peer-bench/peer-mid-int8 --backends onnx --policies nextuse "
             f"--budgets {','.join(b for b in budgets if b != 'all')} --cold --repeats {rows[0]['runs'] // len(prompts)} "
             f"--max-new-tokens {int(rows[0]['generated_tokens'])} --prompts {folder}/prompts.txt --out {folder}`, "
             f"{len(prompts)} prompts, one line each): "
             "whole models, loaded KB per decode token (missed experts' files and PEER pages) / decode tokens/s "
             "(median).", "", "| budget | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for b in budgets:
        cells = []
        for n in names:
            r = by.get((n, b))
            cells.append(f"{r['loaded_kb_per_token']:,.0f} / {r['decode_tokens_per_s']:.0f}" if r
                         else "cannot run" if (n, b) in failed else "")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", f"![loaded per token]({folder.relative_to('docs')}/loaded_per_token.png)"])


def plot(results: dict, budgets: list[str], path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"moe": ("tab:blue", "MoE model (shipped)"), "peer": ("tab:red", "PEER model (peer-mid)")}
    for name, (color, label) in styles.items():
        pts = [(float(x), r) for x, r in results[name].items() if "error" not in r]
        xs = [x for x, _ in pts]
        a.plot(xs, [r["loaded_per_token"] / 1e3 for _, r in pts], "o-", color=color, label=f"{label}: all layers")
        a.plot(xs, [r["loaded_per_token_by_layer"].get(LAYER, 0) / 1e3 for _, r in pts], "s--", color=color,
               label=f"{label}: layer {LAYER}" + (" (PEER rows)" if name == "peer" else " (MoE)"))
        b.plot(xs, [r["decode_tokens_per_s"] for _, r in pts], "o-", color=color, label=label)
    for ax, ylabel in ((a, "KB loaded from storage per decode token"), (b, "decode tokens/s")):
        ax.set_xscale("log")
        ax.set_xticks([float(x) for x in budgets], [f"{x}%" for x in budgets])
        ax.invert_xaxis()
        ax.set_xlabel("memory budget (% of experts' and rows' bytes)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    a.set_yscale("log")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        print(json.dumps(one(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe", default="runs/peer-bench/moe-int8")
    ap.add_argument("--peer", default="runs/peer-bench/peer-mid-int8")
    ap.add_argument("--budgets", default="100,50,25,10,5")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="runs/peer-bench/results.json")
    ap.add_argument("--render", action="store_true", help="only redraw the plot and table from --out")
    ap.add_argument("--edge-bench", type=Path, help="an edge-bench output folder: write its table and stop")
    a = ap.parse_args()
    if a.edge_bench:
        sys.path.insert(0, str(Path(__file__).parent))
        from doc_figures import write_between_markers

        write_between_markers(Path("docs/BENCHMARKS.md"), edge_bench_table(a.edge_bench), "peer-edge-bench")
        return
    budgets = a.budgets.split(",")
    sys.path.insert(0, str(Path(__file__).parent))
    from doc_figures import write_between_markers

    from cosmoe_edge.bench.cli import machine

    if a.render:
        saved = json.loads(Path(a.out).read_text())
        where, seconds, results, budgets = saved["machine"], saved["seconds"], saved["results"], saved["budgets"]
        a.tokens, a.repeats = saved["tokens"], saved["repeats"]
    else:
        t0 = time.time()
        results = bench({"moe": a.moe, "peer": a.peer}, budgets, a.tokens, a.repeats)
        hw = machine()
        where, seconds = f"{hw['cpu']} ({hw['cores']} cores), {hw['date']}", round(time.time() - t0)
        Path(a.out).write_text(json.dumps({"machine": where, "seconds": seconds, "tokens": a.tokens, "prompts": PROMPTS,
                                           "repeats": a.repeats, "budgets": budgets, "results": results}, indent=1))
    for rs in results.values():  # a saved file's layer keys are strings
        for r in rs.values():
            if "loaded_per_token_by_layer" in r:
                r["loaded_per_token_by_layer"] = {int(k): v for k, v in r["loaded_per_token_by_layer"].items()}
    plot(results, budgets, Path("docs/bench/peer_bench.png"), f"PEER vs MoE, int8 onnxruntime, cold - {where}")
    text = (f"{where}; `python scripts/peer_bench.py --tokens {a.tokens} --budgets {','.join(budgets)} --repeats "
            f"{a.repeats}` ({seconds} s): {len(PROMPTS)} prompts x {a.tokens} greedy tokens x {a.repeats} repeats per "
            "configuration, each run cold in a fresh process, 1 thread; decode tokens/s the median over runs, bytes "
            "summed over them.\n\n"
            + table(results, budgets) + "\n\n![PEER vs MoE](bench/peer_bench.png)\n")
    write_between_markers(Path("docs/BENCHMARKS.md"), text, "peer-bench",
                          "## PEER against MoE: bytes from storage per token (issue 15)")
    print(table(results, budgets))


if __name__ == "__main__":
    main()
