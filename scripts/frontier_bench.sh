#!/usr/bin/env bash
# The speed-quality frontier of docs/BENCHMARKS.md: the shipped model with compressed experts
# (scripts/compressed_experts.py fine-tunes it: runs/ce/ce1-vectors.pt), exported int4, run cold at 25% and
# 12.5% of its experts' bytes with each way of choosing which experts run, each also scored by edge-eval.
# k2 is the shipped model as it was trained (top-2, a miss waits); default is top-1 + compressed experts.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
MODEL=runs/ce/ce1-vectors.pt
ART=runs/ce/ce1-int4
OUT=${OUT:-runs/ce/frontier}
[ -f "$MODEL" ] || $BIN/python scripts/compressed_experts.py
[ -f "$ART/manifest.json" ] || $BIN/edge-export "$MODEL" --quant int4 --out "$ART" --force
$BIN/edge-bench "$ART" --budgets 25%,12.5% --backends onnx,executorch --policies lru --cold --repeats 3 \
    --max-new-tokens 128 --quality-tokens 1024 --out "$OUT" \
    --selections "k2,k2+compressed,k2+skip,k2+bias=1,k2+bias=3,k2+compressed+bias=1,default,k1+bias=1"
$BIN/python scripts/frontier_tables.py "$OUT"
