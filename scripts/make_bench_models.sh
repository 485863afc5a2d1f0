#!/usr/bin/env bash
# Build every artifact docs/BENCHMARKS.md measures, reproducibly, into runs/bench/ (nothing is downloaded):
#   default-int4, default-int8, default-fp32   the shipped model at each quantisation
#   nobles-int4                                 the same model trained without BlES (scripts/model_card_runs.sh)
#   wearable-int4                               the CoSMoE paper's wearable-scale shape, random weights
#   llamacpp-ref-int4                           a Mixtral shape (153M) for comparisons with llama.cpp, random weights
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
B=runs/bench
mkdir -p "$B"
export_() { .venv/bin/edge-export "$1" --quant "$2" --out "$B/$3" --force "${@:4}"; }
for q in int4 int8 fp32; do export_ models/cosmoe-default.pt "$q" "default-$q"; done
[ -f runs/card/nobles.pt ] || { echo "runs/card/nobles.pt missing: run scripts/model_card_runs.sh first"; exit 1; }
export_ runs/card/nobles.pt int4 nobles-int4
.venv/bin/python scripts/random_model.py --preset wearable --tokenizer-from models/cosmoe-default.pt --out "$B/wearable.pt"
export_ "$B/wearable.pt" int4 wearable-int4 --no-verify
.venv/bin/python scripts/random_model.py --preset llamacpp-ref --tokenizer-from models/cosmoe-default.pt --out "$B/llamacpp-ref.pt"
export_ "$B/llamacpp-ref.pt" int4 llamacpp-ref-int4 --no-verify
