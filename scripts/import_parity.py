"""An imported model against transformers on the same checkpoint: held-out perplexity on the same windows,
the largest logit difference, tokenization of the held-out text, and greedy continuations.
Usage: python scripts/import_parity.py SOURCE MODEL.pt [--windows 8] [--window 256] [--prompt TEXT]
(SOURCE: what edge-import read, a transformers folder or a .gguf file); prints one JSON object.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.data import heldout_text
from cosmoe_edge.model.generate import generate
from cosmoe_edge.model.importer import locate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("source", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--prompt", default="The capital of France is")
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    folder, extra = locate(a.source)
    hf_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32, **extra).eval()
    ours, tok, _ = load_model(a.model)

    # held-out text: the project corpus's validation documents (none of it trained either model here)
    text = heldout_text(200_000)
    ids_ours, ids_hf = tok.encode(text).ids, hf_tok(text).input_ids
    n = a.window + 1
    ids = torch.tensor(ids_ours[:a.windows * n]).view(a.windows, n)
    nll, diff, t = {"cosmoe": 0.0, "transformers": 0.0}, 0.0, {}
    for name, run in (("cosmoe", lambda x: ours(x)[0]), ("transformers", lambda x: hf(x).logits)):
        start = time.perf_counter()
        logits = torch.cat([run(row[None, :-1]) for row in ids])
        t[name] = round(time.perf_counter() - start, 1)
        nll[name] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()
        if name == "cosmoe":
            first = logits
        else:
            diff = (first - logits).abs().max().item()
    prompt = tok.encode(a.prompt).ids
    mine = generate(ours, prompt, 16)
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt):].tolist()
    print(json.dumps({
        "source": a.source.name, "tokens_scored": a.windows * a.window,
        "ppl": {k: round(math.exp(v), 4) for k, v in nll.items()},
        "ppl_relative_difference": abs(math.exp(nll["cosmoe"] - nll["transformers"]) - 1),
        "max_abs_logit_difference": diff, "tokenization_identical": ids_ours == ids_hf,
        "tokens_in_text": len(ids_ours), "eval_seconds": t,
        "greedy": {"prompt": a.prompt, "cosmoe": tok.decode(mine[:16]), "transformers": tok.decode(theirs),  # may stop at its EOS
                   "identical": mine[:len(theirs)] == theirs}}, indent=1))


if __name__ == "__main__":
    main()
