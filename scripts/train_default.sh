#!/usr/bin/env bash
# Train the shipped default model reproducibly and write models/cosmoe-default.pt (16-bit weights,
# no optimizer state): the preset "default" (sticky top-k, docs/MODEL_CARD.md) with the sticky rule ramped
# in after a quarter of the steps, seed 1. About 45 minutes on this project's 2-core machines (single
# thread), ~25 with THREADS=2. Extra arguments go to edge-train; OUT, SEED and THREADS override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
STEPS=${STEPS:-1200}
RUN=${RUN:-runs/default}
mkdir -p "$RUN"
.venv/bin/edge-train --preset default --steps "$STEPS" --sticky-from 0.25 --seed "${SEED:-1}" \
  --threads "${THREADS:-1}" --out "$RUN/model.pt" "$@"
.venv/bin/python scripts/ship_model.py "$RUN/model.pt" "${OUT:-models/cosmoe-default.pt}"
