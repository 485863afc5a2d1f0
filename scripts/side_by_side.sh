#!/usr/bin/env bash
# cosmoe-edge and llama.cpp on the same weights (docs/BENCHMARKS.md, "Side by side with llama.cpp"):
#   default        the shipped model (trained: greedy decoding)
#   llamacpp-ref   a 153M Mixtral shape, random weights routed like a trained model (switch rate 0.32)
#   wearable       the 392M CoSMoE wearable shape, the same
# Each: full RAM, then RAM caps of each engine's fixed cost + backbone + 100/50/25% of its expert bytes,
# threads 1 and 2, both cosmoe-edge backends, llama.cpp Q4_0 with and without its repack. Needs root or a
# delegated cgroup for the caps; builds llama.cpp once (runs/llamacpp). Then the tables and the plots.
# Usage: scripts/side_by_side.sh [default llamacpp-ref wearable]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
B=runs/bench
OUT=docs/bench/side-by-side
mkdir -p "$B" "$OUT"
models=("${@:-default llamacpp-ref wearable}")
read -r -a models <<< "${models[*]}"
for name in "${models[@]}"; do
  if [ "$name" = default ]; then
    ckpt=models/cosmoe-default.pt temp=0
  else
    ckpt="$B/$name-s32.pt" temp=1
    [ -f "$ckpt" ] || .venv/bin/python scripts/random_model.py --preset "$name" --switch-rate 0.32 \
        --tokenizer-from models/cosmoe-default.pt --out "$ckpt"
  fi
  art="$B/$(basename "$ckpt" .pt)-int4"
  [ -f "$art/manifest.json" ] && [ "$art/manifest.json" -nt cosmoe_edge/export/programs.py ] \
    || .venv/bin/edge-export "$ckpt" --quant int4 --out "$art" --force --no-verify
  .venv/bin/edge-bench "$art" --model "$ckpt" --peer llama.cpp --backends executorch,onnx --threads 1,2 \
      --peer-variants repack,no-repack --ram-cap 100%,50%,25% --temperature "$temp" --max-new-tokens 64 \
      --repeats 3 --out "$OUT/$name"
done
.venv/bin/python scripts/side_by_side_tables.py "$OUT"
