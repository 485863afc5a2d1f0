#!/usr/bin/env bash
# The comparison runs behind docs/MODEL_CARD.md: the same data, token budget and seed as the
# default model (seed 1), changing one thing each. Then scripts/model_card.py measures them all.
# DEVICE=cuda trains them on a GPU (in parallel); SEED and THREADS override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
STEPS=${STEPS:-1200}
mkdir -p runs/card
# (a run whose checkpoint exists is skipped: delete runs/card/NAME.pt to redo it)
train() { name=$1; shift; [ -f "runs/card/$name.pt" ] && return 0; .venv/bin/edge-train --steps "$STEPS" \
  --seed "${SEED:-1}" --threads "${THREADS:-1}" --device "${DEVICE:-cpu}" --quiet --out "runs/card/$name.pt" "$@" \
  > "runs/card/$name.log" 2>&1; }
# the MoE without stickiness (the recipe before BlES: per-sequence load balancing 0.01)
train nobles --preset bles --bles-weight 0 &
train dense --dense &
wait
# the previous default model (BlES, seed 0; the preset "bles"), as it was shipped
[ -f runs/card/bles.pt ] || git show 80f743e:models/cosmoe-default.pt > runs/card/bles.pt
for n in nobles bles dense; do
  [ -f "runs/card/$n.pt" ] || { echo "runs/card/$n.pt was not written: see runs/card/$n.log" >&2; exit 1; }
done
