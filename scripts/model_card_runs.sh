#!/usr/bin/env bash
# The comparison runs behind docs/MODEL_CARD.md: the same data, token budget and seed as the
# default model, changing one thing each. Then scripts/model_card.py measures them all.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
STEPS=${STEPS:-1200}
mkdir -p runs/card
# (a run whose checkpoint exists is skipped: delete runs/card/NAME.pt to redo it)
train() { name=$1; shift; [ -f "runs/card/$name.pt" ] && return 0; .venv/bin/edge-train --preset default --steps "$STEPS" --seed 0 --threads "${THREADS:-1}" \
  --quiet --out "runs/card/$name.pt" "$@" > "runs/card/$name.log" 2>&1; }
train nobles --bles-weight 0 &
train dense --dense &
# wd experts with the default's parameter count: rank r = dim/2 = 128, r*(256+512) = 256*384 per matrix
train wd --expert-kind wd --wd-rank 128 --expert-hidden 512 &
wait

