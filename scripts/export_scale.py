"""Export time and peak memory against model size (docs/EXPORT.md, "Export at scale"). Each
checkpoint is exported in a fresh process tree (`edge-export CKPT --quant int4`, both backends); the
resident memory of the exporter and all its workers is summed every 50 ms (VmRSS from /proc), and the
peak of that sum is reported beside the wall time.

Usage: python scripts/export_scale.py LABEL=CKPT [LABEL=CKPT ...] [--no-verify LABEL ...] [--out docs/EXPORT.md]
  e.g. shipped=models/cosmoe-default.pt llamacpp-ref=runs/bench/llamacpp-ref.pt wearable=runs/bench/wearable.pt
       moe-1.2b=runs/bench/moe-1.2b.pt  (random checkpoints: scripts/random_model.py --preset ...)
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from doc_figures import write_between_markers

from cosmoe_edge.model.checkpoint import load_checkpoint
from cosmoe_edge.model.config import ModelConfig
from cosmoe_edge.model.model import CoSMoE, param_summary
from cosmoe_edge.runtime.metrics import run_with_tree_peak


def export(ckpt: Path, verify: bool) -> dict:
    out = Path(tempfile.mkdtemp(prefix="scale.")) / "artifact"
    cmd = [str(Path(sys.executable).parent / "edge-export"), str(ckpt), "--quant", "int4", "--out", str(out)]
    if not verify:
        cmd.append("--no-verify")
    t0 = time.perf_counter()
    p, peak = run_with_tree_peak(cmd)
    seconds = time.perf_counter() - t0
    if p.returncode not in (0, 3):  # 3: written, verification missed its goal (random weights may)
        raise SystemExit(f"{ckpt}: edge-export failed ({p.returncode}): {p.stderr[-2000:]}")
    m = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out.parent)
    return {"seconds": seconds, "peak_rss": peak, "export": m["export"], "verified": verify,
            "verification": {b: v["heldout"]["ppl_change"] for b, v in m.get("verification", {}).items()},
            "built": {b: s["built"] for b, s in m["backends"].items()},
            "bytes": {b: sum(f["bytes"] for f in s["backbone"]["files"]) + sum(e["bytes"] for e in s["experts"])
                      for b, s in m["backends"].items()}}


def per_part(built: dict) -> str:
    return " / ".join(f"{built[k]:.2f}" if k in built else "-" for k in ("lowered_median_s", "template_median_s"))


def params(ckpt: Path) -> int:
    with torch.device("meta"):
        return param_summary(CoSMoE(ModelConfig.from_dict(load_checkpoint(ckpt, mmap=True)["config"])))["total"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="LABEL=CKPT")
    ap.add_argument("--no-verify", nargs="*", default=[], help="labels exported with --no-verify")
    ap.add_argument("--out", type=Path, default=Path("docs/EXPORT.md"))
    a = ap.parse_args()
    rows = []
    for spec in a.models:
        label, path = spec.split("=", 1)
        r = export(Path(path), label not in a.no_verify) | {"label": label, "params": params(Path(path))}
        print(json.dumps(r), flush=True)
        rows.append(r)
    lines = [f"Measured {date.today()} by `scripts/export_scale.py` on this {os.cpu_count()}-core machine: "
             "`edge-export CKPT --quant int4`, both backends, default `--jobs`; peak RSS is the exporter and its "
             "workers together (VmRSS summed every 50 ms).", "",
             "| model | params | verified | wall time | peak RSS, all processes | workers | worst worker (VmHWM) "
             "| parts lowered / templated | s per part lowered / templated, executorch; onnx (medians) "
             "| artifact (executorch, onnx) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        x = r["export"]
        lines.append(f"| {r['label']} | {r['params'] / 1e6:.0f}M | {'yes' if r['verified'] else 'no'} | "
                     f"{r['seconds'] / 60:.1f} min | {r['peak_rss'] / 1e9:.2f} GB | {x['jobs']} | "
                     f"{x['worker_peak_rss_bytes'] / 1e9:.2f} GB | {x['parts']['lowered']} / {x['parts']['template']} | "
                     f"{per_part(r['built']['executorch'])}; {per_part(r['built']['onnx'])} | "
                     f"{r['bytes']['executorch'] / 1e6:.0f} MB, {r['bytes']['onnx'] / 1e6:.0f} MB |")
    write_between_markers(a.out, "\n".join(lines), "export-scale", "## Export at scale")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
