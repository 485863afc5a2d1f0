"""Eager generation with the KV cache: the reference the exported artifact is checked against."""

import sys
from pathlib import Path
from typing import Annotated

import torch
import typer

from cosmoe_edge.errors import CheckpointError
from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.tokenizer import eos_id
from cosmoe_edge.runtime.text import TextStream


def sample(logits, temperature: float, top_k: int, top_p: float, gen: torch.Generator | None) -> int:
    """Greedy at temperature 0; otherwise temperature, then top-k, then nucleus (top-p) filtering."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = (logits.float() / temperature).softmax(-1)
    order = probs.argsort(descending=True)
    p = probs[order]
    keep = torch.ones_like(p, dtype=torch.bool)
    if top_k > 0:
        keep[top_k:] = False
    if top_p < 1.0:
        keep &= (p.cumsum(0) - p) < top_p  # keep the smallest prefix whose mass reaches top_p
    p = torch.where(keep, p, torch.zeros_like(p))
    return int(order[torch.multinomial(p / p.sum(), 1, generator=gen)])


@torch.no_grad()
def generate(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, eos: int | None = None, on_token=None,
             return_logits: bool = False):
    """Prefill the prompt, then decode one token at a time. Returns the new ids (and, with
    return_logits, the logits that chose each of them)."""
    if len(prompt_ids) + max_new_tokens > model.cfg.max_seq_len:
        max_new_tokens = model.cfg.max_seq_len - len(prompt_ids)
    model.setup_cache(1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor([prompt_ids])
    pos = torch.arange(len(prompt_ids))
    out, all_logits = [], []
    for _ in range(max_new_tokens):
        logits, _ = model(x, pos)
        last = logits[0, -1]
        all_logits.append(last)
        nxt = sample(last, temperature, top_k, top_p, gen)
        out.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if nxt == eos:
            break
        x, pos = torch.tensor([[nxt]]), pos[-1:] + 1
    return (out, torch.stack(all_logits)) if return_logits else out


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help="Generate text with the eager PyTorch model (the reference, not the edge runtime).")
def main(
    model_path: Annotated[Path, typer.Argument(help="model.pt written by edge-train.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")],
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample from the k most likely tokens (0: all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
):
    if not prompt:
        print("error: --prompt is empty", file=sys.stderr)
        raise typer.Exit(2)
    try:
        model, tok, ckpt = load_model(model_path)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    ids = tok.encode(prompt).ids
    sys.stdout.write(prompt)
    generate(model, ids, max_new_tokens, temperature, top_k, top_p, seed, eos_id(tok, ckpt["meta"]),
             on_token=TextStream(tok, sys.stdout))
    sys.stdout.write("\n")


if __name__ == "__main__":
    app()
