#!/usr/bin/env bash
# The int4-head and layer-call figures of docs/RUNTIME.md ("What the figures say"), on the llamacpp-ref
# shape (random weights, routing calibrated to a 0.32 switch rate): the same model exported with an int8
# and an int4 LM head, decode profiled three times each (scripts/decode_profile.py), then one layer call
# timed with warm and with swept caches (scripts/layer_call_probe.py). Prints JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
B=runs/bench
PY=.venv/bin/python
mkdir -p "$B"
[ -f "$B/llamacpp-ref-s32.pt" ] || $PY scripts/random_model.py --preset llamacpp-ref --switch-rate 0.32 \
  --tokenizer-from models/cosmoe-default.pt --out "$B/llamacpp-ref-s32.pt"
for hq in int8 int4; do
  [ -f "$B/ref-head-$hq/manifest.json" ] || .venv/bin/edge-export "$B/llamacpp-ref-s32.pt" --quant int4 \
    --head-quant "$hq" --no-verify --out "$B/ref-head-$hq" --force > /dev/null
done
for rep in 1 2 3; do for hq in int8 int4; do for b in executorch onnx; do
  echo "{\"rep\": $rep, \"head\": \"$hq\", \"backend\": \"$b\", \"profile\": $($PY scripts/decode_profile.py "$B/ref-head-$hq" $b)}"
done; done; done
for b in onnx executorch; do $PY scripts/layer_call_probe.py "$B/ref-head-int8" $b; done
