#!/usr/bin/env bash
# The comparison runs behind docs/MODEL_CARD.md: the same data, token budget and seed as the
# default model (seed 1), changing one thing each. Then scripts/model_card.py and scripts/peer_card.py measure them.
# DEVICE=cuda trains them on a GPU (in parallel); SEED and THREADS override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
STEPS=${STEPS:-1200}
mkdir -p runs/card
# (a run whose checkpoint exists is skipped: delete runs/card/NAME.pt to redo it). Each run writes NAME-full.pt
# (with its optimizer state) and NAME.pt, the shippable copy (16-bit weights) that is measured, as the shipped
# model is.
train() { name=$1; shift; [ -f "runs/card/$name.pt" ] && return 0; .venv/bin/edge-train --steps "$STEPS" \
  --seed "${SEED:-1}" --threads "${THREADS:-1}" --device "${DEVICE:-cpu}" --quiet --out "runs/card/$name-full.pt" \
  "$@" > "runs/card/$name.log" 2>&1 && .venv/bin/python scripts/ship_model.py "runs/card/$name-full.pt" "runs/card/$name.pt"; }
# the MoE without stickiness (the recipe before BlES: per-sequence load balancing 0.01)
train nobles --preset bles --bles-weight 0 &
train dense --dense &
wait
# PEER (issue 15; docs/MODEL_CARD.md, "PEER"): the shipped recipe with the middle layer's MoE replaced by a PEER
# layer of 256^2 single-neuron experts, 8 heads x top-16, key dim 128: the MACs of the MoE layer it replaces
train peer-mid --preset default --sticky-from 0.25 --ffn moe,moe,peer,moe --peer-experts 65536 --peer-heads 8 \
  --peer-topk 16 --peer-key-dim 128
# the same with a quarter of the pool (128^2: each expert retrieved 4x as often in training), key dim 172 to keep
# the MACs (+0.3%)
train peer-mid-128 --preset default --sticky-from 0.25 --ffn moe,moe,peer,moe --peer-experts 16384 --peer-heads 8 \
  --peer-topk 16 --peer-key-dim 172
# (e) without weight decay on the pool and the keys: AdamW's decay shrinks every row each step, retrieved or not,
# which keeps seldom-retrieved experts small and unretrieved
train peer-mid-nodecay --preset default --sticky-from 0.25 --ffn moe,moe,peer,moe --peer-experts 65536 \
  --peer-heads 8 --peer-topk 16 --peer-key-dim 128 --peer-weight-decay 0
# the previous default model (BlES, seed 0; the preset "bles"), as it was shipped
[ -f runs/card/bles.pt ] || git show 80f743e:models/cosmoe-default.pt > runs/card/bles.pt
for n in nobles bles dense peer-mid peer-mid-128 peer-mid-nodecay; do
  [ -f "runs/card/$n.pt" ] || { echo "runs/card/$n.pt was not written: see runs/card/$n.log" >&2; exit 1; }
done
