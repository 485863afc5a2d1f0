"""Make a shippable copy of a checkpoint: 16-bit weights, no optimizer state (atomic write)."""

import sys
from pathlib import Path

import torch

from cosmoe_edge.model.checkpoint import build_model, load_checkpoint, save_checkpoint


def main(src: str, dst: str):
    ckpt = load_checkpoint(src)
    model = build_model(ckpt)
    meta = {k: v for k, v in ckpt["meta"].items() if k != "history"} | {"shipped_from": Path(src).name,
                                                                        "weights_dtype": "float16"}
    meta["history"] = ckpt["meta"].get("history", [])
    save_checkpoint(dst, model, ckpt["tokenizer"], meta, dtype=torch.float16)
    print(f"wrote {dst} ({Path(dst).stat().st_size / 1e6:.1f} MB, float16 weights)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
