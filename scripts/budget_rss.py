"""Peak RSS against the expert budget on a model whose experts dominate its size (the wearable-scale
shape), warm page cache, one fresh process per cell; written between the budget-rss markers of
docs/RUNTIME.md. Usage: python scripts/budget_rss.py [runs/bench/wearable-int4] [--tokens 32]
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from doc_figures import write_between_markers

from cosmoe_edge.runtime.cli import command
from cosmoe_edge.runtime.options import RunOptions


def edge_run(artifact: Path, backend: str, budget: str, tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        rep = Path(d) / "r.json"
        options = RunOptions(prompt="The list type is", backend=backend, memory_budget=budget, max_new_tokens=tokens,
                             verify=False)
        subprocess.run(command(artifact, options, report=rep), check=True, stdout=subprocess.DEVNULL)
        return json.loads(rep.read_text())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path, nargs="?", default=Path("runs/bench/wearable-int4"))
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("docs/RUNTIME.md"))
    a = ap.parse_args()
    m = json.loads((a.artifact / "manifest.json").read_text())
    lines = [f"`scripts/budget_rss.py {a.artifact}`: the wearable-scale shape (random weights, int4), {a.tokens} new "
             "tokens, one fresh process per cell, warm page cache.", "",
             "| backend | budget | resident experts, peak | RSS after backbone load | peak RSS | decode tok/s | hit rate |",
             "|---|---|---|---|---|---|---|"]
    for backend in ("onnx", "executorch"):
        if backend not in m["backends"]:
            continue
        for budget in ("100%", "50%", "25%", "12.5%"):
            r = edge_run(a.artifact, backend, budget, a.tokens)
            lines.append(f"| {backend} | {budget} of {r['expert_bytes_total'] / 1e6:.0f} MB | "
                         f"{r['resident_expert_bytes_peak'] / 1e6:.0f} MB | {r['rss_after_load_bytes'] / 1e6:.0f} MB | "
                         f"{r['peak_rss_bytes'] / 1e6:.0f} MB | {r['decode_tokens_per_s']:.0f} | "
                         f"{r['expert_hit_rate']:.0%} |")
    body = "\n".join(lines)
    write_between_markers(a.out, body, "budget-rss", "### Peak RSS against the budget, wearable scale")
    print(body)


if __name__ == "__main__":
    main()
