"""The reference for a carved model's fine-tune: the dense model before carving, fine-tuned the same way
(carve.finetune: norms and LoRA adapters on the same corpus windows, same wall time and learning rate),
so that what the fine-tune gains by fitting the corpus is told apart from what it repairs of the carving.
Usage: python scripts/dense_finetune_reference.py DENSE.pt OUT.pt [--minutes 10] [--lora-rank 8]
(then score OUT.pt with scripts/carve_eval.py).
"""

import argparse

from cosmoe_edge.model.carve import finetune
from cosmoe_edge.model.carve_cli import training_texts
from cosmoe_edge.model.checkpoint import load_model, save_checkpoint
from cosmoe_edge.model.data import encode_stream
from cosmoe_edge.model.tokenizer import eos_id


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dense")
    ap.add_argument("out")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    model, tok, ckpt = load_model(a.dense)
    stream = encode_stream(tok, training_texts(), eos_id(tok, ckpt["meta"]))
    facts = finetune(model, stream, a.minutes, lr=a.lr, lora_rank=a.lora_rank)
    save_checkpoint(a.out, model, ckpt["tokenizer"], ckpt["meta"] | {"finetune": facts})
    print(f"wrote {a.out}: fine-tuned {facts['steps']} steps in {facts['seconds']:.0f}s "
          f"(loss {facts['loss_first']} -> {facts['loss_last_10']})")


if __name__ == "__main__":
    main()
