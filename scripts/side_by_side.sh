#!/usr/bin/env bash
# cosmoe-edge and llama.cpp on the same weights (docs/BENCHMARKS.md, "Side by side with llama.cpp"):
#   default        the shipped model (trained: greedy decoding)
#   llamacpp-ref   a 153M Mixtral shape, random weights routed like a trained model (switch rate 0.32)
#   wearable       the 392M CoSMoE wearable shape, the same
#   moe-1.2b       a 1.2B MoE, the same, under caps of 60% and 40% of llama.cpp's own footprint (GGUF + fixed
#                  cost): a model larger than the RAM, the same absolute cap for every engine
# cosmoe-edge runs as edge-run's native engine and as edge-run-native (the core with no Python in the process,
# "host") on ExecuTorch, each artifact prepared first (edge-prepare), and as the Python engine on ONNX.
# The others: full RAM, then caps of each engine's fixed cost + backbone + P% of its expert bytes, threads 1
# and 2, llama.cpp Q4_0 with and without its repack. Needs root or a delegated cgroup for the caps;
# builds llama.cpp once (runs/llamacpp). Then the tables and the plots.
# Usage: scripts/side_by_side.sh [default llamacpp-ref wearable moe-1.2b]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
B=runs/bench
OUT=docs/bench/side-by-side
mkdir -p "$B" "$OUT"
models=("${@:-default llamacpp-ref wearable moe-1.2b}")
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
  [ -f "$art/manifest.json" ] && [ -z "$(find cosmoe_edge/export -name '*.py' -newer "$art/manifest.json")" ] \
    || .venv/bin/edge-export "$ckpt" --quant int4 --out "$art" --force --no-verify
  .venv/bin/edge-prepare "$art"
  case "$name" in  # what each section of docs/BENCHMARKS.md ran (2026-12-07); thrashing runs are cut short
    moe-1.2b) caps=(--backends executorch --footprint-caps 60%,40% --max-new-tokens 32 --peer-timeout 120 --repeats 2) ;;
    default) caps=(--backends executorch,onnx --ram-cap 100%,50%,25% --max-new-tokens 64 --repeats 2) ;;
    *) caps=(--backends executorch --ram-cap 50%,25% --max-new-tokens 64 --peer-timeout 60 --repeats 1) ;;
  esac
  .venv/bin/edge-bench "$art" --model "$ckpt" --peer llama.cpp --engines default,host --threads 1,2 \
      --peer-variants repack,no-repack --temperature "$temp" "${caps[@]}" --out "$OUT/$name"
done
.venv/bin/python scripts/side_by_side_tables.py "$OUT"
