"""Check a written artifact against the eager model, through the edge runtime itself.

fp32: greedy tokens identical to eager for 32 new tokens on 3 prompts, max |logit diff| <= 1e-3.
int8/int4: top-1 agreement with eager fp32 over held-out text, and held-out perplexity against eager
fp32 (goals: within 1% for int8, within 5% for int4).

The eager reference is computed one layer at a time from the mapped checkpoint (all held-out windows
go through layer i before layer i+1 is read), so verifying a model costs one layer of memory, not the
model; only fp32's greedy check builds the whole eager model (it decodes through its KV cache).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from cosmoe_edge.export.source import Source
from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.generate import generate as eager_generate
from cosmoe_edge.model.model import rope_tables
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.generate import Sampler, generate

PROMPTS = ["The list type is", "To read a file, use", "def main():\n    "]
NEW_TOKENS = 32
LOGIT_TOL = 1e-3
PPL_GOAL = {"fp32": 0.001, "int8": 0.01, "int4": 0.05}
WINDOW, WINDOWS = 128, 8


def heldout_windows(tokenizer, meta: dict) -> list[list[int]]:
    """Held-out token windows: the validation text the checkpoint carries, else the corpus's split."""
    text = meta.get("val_text")
    if not text:
        from cosmoe_edge.model.data import find_corpus, read_documents, split_documents

        text = "\n".join(split_documents(read_documents(find_corpus()))[1])
    ids = tokenizer.encode(text).ids
    n = min(WINDOWS, len(ids) // (WINDOW + 1))
    return [ids[i * (WINDOW + 1):(i + 1) * (WINDOW + 1)] for i in range(n)]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@torch.no_grad()
def eager_logits(source: Source, windows) -> list[np.ndarray]:
    """The eager fp32 model's logits on each window (its first WINDOW tokens), layer by layer."""
    cfg = source.cfg
    x = torch.tensor([w[:-1] for w in windows])
    h = F.embedding(x, source.tensor("tok_emb.weight"))
    cos, sin = (t[:x.shape[1]] for t in rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta))
    for i in range(cfg.n_layers):
        h, _ = source.block(i, experts=True)(h, cos, sin)
    head = source.head_program()
    return [head.lm_head(head.norm(row)).numpy() for row in h]


def heldout(engine: Engine, eager: list[np.ndarray], windows) -> dict:
    nll_e = nll_a = 0.0
    agree = count = 0
    for w, ref in zip(windows, eager, strict=True):
        x, y = w[:-1], np.asarray(w[1:])
        engine.reset()
        art = engine.forward(x, all_logits=True)
        rows = np.arange(len(y))
        nll_e -= log_softmax(ref)[rows, y].sum()
        nll_a -= log_softmax(art)[rows, y].sum()
        agree += int((ref.argmax(-1) == art.argmax(-1)).sum())
        count += len(y)
    ppl_e, ppl_a = math.exp(nll_e / count), math.exp(nll_a / count)
    return {"tokens": count, "top1_agreement": agree / count, "ppl_eager_fp32": ppl_e, "ppl_artifact": ppl_a,
            "ppl_change": ppl_a / ppl_e - 1}


@torch.no_grad()
def greedy(engine: Engine, model, tokenizer) -> dict:
    match, worst = True, 0.0
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt).ids
        want, want_logits = eager_generate(model, ids, NEW_TOKENS, return_logits=True)
        got, _, got_logits = generate(engine, ids, NEW_TOKENS, Sampler(), keep_logits=True)
        match &= got == want
        n = min(len(got), len(want))
        worst = max(worst, float(np.abs(got_logits[:n] - want_logits[:n].numpy()).max()))
    return {"prompts": len(PROMPTS), "new_tokens": NEW_TOKENS, "greedy_identical": match, "max_logit_diff": worst}


def verify_artifact(artifact, ckpt_path, scheme: str, backends: list[str]) -> dict:
    with Source(ckpt_path) as source:
        tokenizer = source.tokenizer
        windows = heldout_windows(tokenizer, source.meta)
        eager = eager_logits(source, windows)
    model = load_model(ckpt_path)[0] if scheme == "fp32" else None
    out = {}
    for b in backends:
        engine = Engine(artifact, b, verify=False)
        res = {"heldout": heldout(engine, eager, windows)}
        if scheme == "fp32":
            res["greedy"] = greedy(engine, model, tokenizer)
            res["passed"] = res["greedy"]["greedy_identical"] and res["greedy"]["max_logit_diff"] <= LOGIT_TOL
        else:
            res["goal_ppl_change"] = PPL_GOAL[scheme]
            res["passed"] = res["heldout"]["ppl_change"] <= PPL_GOAL[scheme]
        engine.close()
        out[b] = res
    return out
