"""The RAM-cap table of an `edge-bench --ram-cap` run (its results.json), written between the ram-cap
markers of docs/BENCHMARKS.md: per artifact, budget and cap, decode speed against the same budget
uncapped and against all experts resident, with the switch rate and what the cap saw.
Usage: python scripts/ramcap_tables.py docs/bench/ramcap [--out docs/BENCHMARKS.md]
"""

import argparse
import json
from pathlib import Path

from doc_figures import write_between_markers


def mb(b) -> str:
    return f"{b / 1e6:.0f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    a = ap.parse_args()
    d = json.loads((a.results / "results.json").read_text())
    hw, rows = d["machine"], d["rows"]
    ok = [r for r in rows if "decode_tokens_per_s" in r]
    full = {(r["artifact"], r["backend"]): r for r in ok if r["budget"] == "all" and r["policy"] != "none"
            and not r.get("ram_cap")}
    uncapped = {(r["artifact"], r["backend"], r["budget"], r["policy"]): r for r in ok if not r.get("ram_cap")}
    lines = ["| artifact | budget | RAM cap MB | decode tok/s [min-max] | vs uncapped | vs all resident | hit rate "
             "| switch rate | peak RSS MB | cgroup peak MB | read KB/token | of bound |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["policy"] == "none":
            continue
        name, cap = Path(r["artifact"]).name, mb(r["ram_cap"]) if r.get("ram_cap") else "none"
        if "decode_tokens_per_s" not in r:
            lines.append(f"| {name} | {r['budget']} | {cap} | **{r.get('status', 'failed')}** | | | | | | | | |")
            continue
        base = uncapped.get((r["artifact"], r["backend"], r["budget"], r["policy"]))
        top = full.get((r["artifact"], r["backend"]))
        vs_un = f"{r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}" if base and r.get("ram_cap") else ""
        vs_full = f"{r['decode_tokens_per_s'] / top['decode_tokens_per_s']:.2f}" if top else ""
        lines.append(
            f"| {name} | {r['budget']} | {cap} | {r['decode_tokens_per_s']:.1f} [{r['decode_tokens_per_s_min']:.1f}-"
            f"{r['decode_tokens_per_s_max']:.1f}] | {vs_un} | {vs_full} | {r['expert_hit_rate']:.0%} | "
            f"{r['expert_switch_rate']:.2f} | {mb(r['peak_rss_bytes'])} | "
            f"{mb(r['cgroup_peak_bytes']) if 'cgroup_peak_bytes' in r else ''} | "
            f"{r['storage_read_bytes'] / max(1, r['generated_tokens']) / 1e3:.0f} | "
            f"{format(r['fraction_of_bound'], '.0%') if 'fraction_of_bound' in r else ''} |")
    lines += ["", f"Measured {hw['date']} on {hw['cpu']} ({hw['cores']} cores), memory {hw['memory_gbps']:.1f} GB/s, "
              f"storage {hw['storage_gbps']:.2f} GB/s; cold (the artifact dropped from the page cache before each run), "
              f"sampling at temperature {hw.get('temperature', 0)} (seed 0: the same tokens in every configuration), "
              f"{ok[0]['generated_tokens']:.0f} new tokens, medians of {ok[0]['runs']} runs, nextuse policy. "
              "\"of bound\": measured speed over the bandwidth bound (docs/BENCHMARKS.md, \"The physical limit\")."]
    write_between_markers(a.out, "\n".join(lines), "ram-cap", "## Under a hard RAM cap")
    print(f"wrote the ram-cap table into {a.out}")


if __name__ == "__main__":
    main()
