"""The side-by-side tables of `edge-bench --peer llama.cpp` runs (scripts/side_by_side.sh), written between
the side-by-side markers of docs/BENCHMARKS.md: per model, every configuration at full RAM and under each
cap, the goal ratios, and llama-bench's figures; and each run's plot, drawn again from its results.
Usage: python scripts/side_by_side_tables.py docs/bench/side-by-side [--out docs/BENCHMARKS.md]
"""

import argparse
import json
from pathlib import Path

from doc_figures import write_between_markers

from cosmoe_edge.bench.side_by_side import FOOTPRINT, path_of

ORDER = ["default", "llamacpp-ref", "wearable", "moe-1.2b"]


def mb(b) -> str:
    return f"{b / 1e6:.0f}"


def path(r) -> str:
    return path_of(r["backend"], r.get("runtime", ""))


def best(rows, engine, cap_pct, threads=None, variants=None, cap_of="", backend=None):
    """The fastest row of `engine` at this cap (and thread count), or None. backend: a path(r) or a backend."""
    ok = [r for r in rows if r["engine"] == engine and r["cap_pct"] == cap_pct and "decode_tokens_per_s" in r
          and (threads is None or r["threads"] == threads) and (variants is None or r["variant"] in variants)
          and r.get("cap_of", "") == cap_of and (backend is None or backend in (r["backend"], path(r)))]
    return max(ok, key=lambda r: r["decode_tokens_per_s"], default=None)


def ratio(a, b) -> str:
    if a is None or b is None:
        return "n/a"
    return (f"**{a['decode_tokens_per_s'] / b['decode_tokens_per_s']:.2f}x** ({a['label']} "
            f"{a['decode_tokens_per_s']:.0f} / {b['label']} {b['decode_tokens_per_s']:.0f} tok/s)")


def goals(rows) -> list[str]:
    ours = ("preload",)
    top = ratio(best(rows, "cosmoe-edge", None, None, ours), best(rows, "llama.cpp", None))
    out = [f"- full RAM, each at its best thread count: {top}"]
    for t in sorted({r["threads"] for r in rows}):
        out.append(f"- full RAM, {t} thread{'s' if t > 1 else ''}: "
                   f"{ratio(best(rows, 'cosmoe-edge', None, t, ours), best(rows, 'llama.cpp', None, t))}")
    same = next((r["cap_of"] for r in rows if r.get("cap_of") and r["cap_of"] != FOOTPRINT), None)
    for p in sorted({r["cap_pct"] for r in rows if r.get("cap_of") == FOOTPRINT}, reverse=True):
        ram = next(r["ram_cap"] for r in rows if r.get("cap_of") == FOOTPRINT and r["cap_pct"] == p)
        ours, theirs = (best(rows, e, p, cap_of=FOOTPRINT) for e in ("cosmoe-edge", "llama.cpp"))
        out.append(f"- cap {p:g}% of llama.cpp's footprint ({mb(ram)} MB for every engine), best of each: "
                   + (ratio(ours, theirs) if theirs else
                      f"cosmoe-edge {ours['label']} {ours['decode_tokens_per_s']:.1f} tok/s; llama.cpp: no run finished"
                      if ours else "no run finished"))
    for p in sorted({r["cap_pct"] for r in rows if r["cap_pct"] is not None and r.get("cap_of") != FOOTPRINT},
                    reverse=True):
        out.append(f"- cap +{p:g}%, each engine at its own cap, best of each: "
                   f"{ratio(best(rows, 'cosmoe-edge', p), best(rows, 'llama.cpp', p))}")
        if same:
            out.append(f"- cap +{p:g}%, the same RAM (cosmoe-edge {same}'s cap), best of each: "
                       f"{ratio(best(rows, 'cosmoe-edge', p, backend=same), best(rows, 'llama.cpp', p, cap_of=same))}")
    return out


def table(name: str, d: dict) -> list[str]:
    rows, hw = d["rows"], d["machine"]
    ours = next(r for r in rows if r["engine"] == "cosmoe-edge")
    theirs = next(r for r in rows if r["engine"] == "llama.cpp")
    fixed = {}
    for r in rows:
        if r["cap_pct"] is None and r.get("fixed_bytes") is not None:
            fixed[path(r) if r["engine"] == "cosmoe-edge" else "llama.cpp"] = r["fixed_bytes"]
    lines = [f"### {name}", "",
             f"Weights: cosmoe-edge int4 {mb(ours['backbone_bytes'])} MB backbone + {mb(ours['expert_bytes'])} MB "
             f"experts ({ours['backend']}); llama.cpp Q4_0 GGUF {mb(theirs['backbone_bytes'])} MB + "
             f"{mb(theirs['expert_bytes'])} MB (each without its token embedding, which both page in by rows). "
             "Fixed cost (least peak RSS minus weight bytes at full RAM): "
             + ", ".join(f"{k} {mb(v)} MB" for k, v in fixed.items()) + ".", "",
             *goals(rows), "",
             "| engine / variant | threads | RAM cap MB | decode tok/s [min-max] | prefill tok/s | TTFT ms "
             "| peak RSS MB | cgroup peak MB | read MB | status |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r.get("cap_of") == FOOTPRINT, -(r["cap_pct"] or 1000), r["engine"], r["label"])):
        cap = ("full RAM" if r["cap_pct"] is None else f"{r['cap_pct']:g}% of llama.cpp: {mb(r['ram_cap'])}"
               if r.get("cap_of") == FOOTPRINT else f"+{r['cap_pct']:g}%: {mb(r['ram_cap'])}")
        if r.get("budget"):
            cap += f" (experts {mb(float(r['budget']))})"
        if "decode_tokens_per_s" not in r:
            why = f"; {r['error'][:90]}" if r.get("error") and r["status"] == "failed" else ""
            lines.append(f"| {r['label']} | {r['threads']} | {cap} | | | | | | | **{r['status']}** "
                         f"({r.get('oom_runs', 0)} oom, {r.get('timeout_runs', 0)} timeout of {r['runs']}{why}) |")
            continue
        status = r["status"] if r["status"] == "ok" else (f"**{r['status']}** ({r['oom_runs']} oom, "
                                                          f"{r['timeout_runs']} timeout of {r['runs']})")
        lines.append(
            f"| {r['label']} | {r['threads']} | {cap} | {r['decode_tokens_per_s']:.1f} "
            f"[{r['decode_tokens_per_s_min']:.1f}-{r['decode_tokens_per_s_max']:.1f}] | "
            f"{r['prefill_tokens_per_s']:.0f} | {r['ttft_ms']:.1f} | {mb(r['peak_rss_bytes'])} | "
            f"{mb(r['cgroup_peak_bytes']) if 'cgroup_peak_bytes' in r else ''} | "
            f"{mb(r['storage_read_bytes']) if r.get('storage_read_bytes', -1) >= 0 else ''} | {status} |")
    bench = [b for b in d["llama_bench"] if "error" not in b]
    if bench:
        lines += ["", "llama-bench (full RAM, " + f"{bench[0]['commit']}): " + "; ".join(
            f"{b['test']} t{b['threads']} {'repack' if b['repack'] else 'no-repack'} {b['tokens_per_s']:.0f}" for b in bench)
            + " tok/s."]
    lines += ["", f"![{name}](bench/side-by-side/{name}/side_by_side.png)", "",
              f"Measured {hw['date']} on {hw['cpu']} ({hw['cores']} cores); {d['version']}; prompt "
              f"{hw['prompt']!r}, {hw['max_new_tokens']} new tokens, temperature {hw['temperature']:g} (seed 0), "
              f"medians of {rows[0]['runs']} fresh processes, each started cold.", ""]
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    a = ap.parse_args()
    found = {p.parent.name: json.loads(p.read_text()) for p in a.results.glob("*/side_by_side.json")}
    if not found:
        raise SystemExit(f"no */side_by_side.json under {a.results}")
    from cosmoe_edge.bench.side_by_side import plot, plot_title

    lines = []
    for name in found:  # the plots again from the results, so a change of the plot needs no re-run
        plot(found[name]["rows"], a.results / name / "side_by_side.png", plot_title(name, found[name]))
    for name in sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        lines += table(name, found[name])
    write_between_markers(a.out, "\n".join(lines).rstrip(), "side-by-side", "## Side by side with llama.cpp")
    print(f"wrote the side-by-side tables ({', '.join(found)}) into {a.out}")


if __name__ == "__main__":
    main()
