#!/usr/bin/env bash
# Issue 16's speed question for sweep models: decode at a 25% budget, cold, against the shipped model, same run.
# Usage: scripts/bles_speed.sh MODEL.pt [MODEL.pt ...]   (checkpoints from scripts/bles_sweep.py)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
ARTS=()
[ -f artifact/manifest.json ] || $BIN/edge-export models/cosmoe-default.pt --quant int4 --out artifact --force
ARTS+=(artifact)
for m in "$@"; do
    out="${m%.pt}-int4"
    [ -f "$out/manifest.json" ] || $BIN/edge-export "$m" --quant int4 --out "$out" --force
    ARTS+=("$out")
done
$BIN/edge-bench "${ARTS[@]}" --budgets 25% --backends onnx,executorch --policies lru --cold --repeats 3 \
    --quality-tokens 1024 --out "${OUT:-runs/bles/speed}"
