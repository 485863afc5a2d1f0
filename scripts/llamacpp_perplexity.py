"""An imported GGUF model's held-out perplexity through llama.cpp's own `llama-perplexity` against the
imported model.pt in our eager runtime, on the same text, the same tokens and llama-perplexity's scheme:
chunks of --ctx tokens, each scored on its second half (BOS in front of each chunk when the GGUF asks for
one). llama.cpp runs the GGUF's quantised weights with its own kernels; ours runs their dequantised fp32
values (edge-import), so the difference is llama.cpp's arithmetic.
Usage: python scripts/llamacpp_perplexity.py MODEL.gguf MODEL.pt [--ctx 256] [--chunks 16] [--threads 2]
Prints one JSON object.
"""

import argparse
import json
import math
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cosmoe_edge.bench import llamacpp
from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.data import heldout_text


def gguf_add_bos(path: Path) -> bool:
    import gguf

    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field.parts[field.data[0]][0]) if field else False


def llama_tokens(bindir: Path, gguf_path: Path, text_file: Path) -> list[int]:
    r = subprocess.run([str(bindir / "llama-tokenize"), "-m", str(gguf_path), "-f", str(text_file), "--ids", "--no-escape",
                        "--log-disable"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def llama_perplexity(bindir: Path, gguf_path: Path, text_file: Path, ctx: int, chunks: int, threads: int) -> dict:
    start = time.perf_counter()
    r = subprocess.run([str(bindir / "llama-perplexity"), "-m", str(gguf_path), "-f", str(text_file), "-c", str(ctx),
                        "-b", str(ctx), "--no-escape", "--chunks", str(chunks), "-t", str(threads)],
                       capture_output=True, text=True)
    m = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", r.stdout + r.stderr)
    if not m:
        raise SystemExit(f"llama-perplexity gave no estimate (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return {"ppl": float(m.group(1)), "stderr": float(m.group(2)), "seconds": round(time.perf_counter() - start, 1)}


def ours_perplexity(model, tokens: list[int], ctx: int, chunks: int, bos: int | None) -> dict:
    """llama-perplexity's loop (tools/perplexity/perplexity.cpp) in our eager model."""
    start, nll, count, first = time.perf_counter(), 0.0, 0, ctx // 2
    for i in range(chunks):
        chunk = torch.tensor(tokens[i * ctx:(i + 1) * ctx])
        inp = chunk.clone()
        if bos is not None:
            inp[0] = bos
        logits = model(inp[None])[0][0]
        nll += F.cross_entropy(logits[first:ctx - 1], chunk[first + 1:], reduction="sum").item()
        count += ctx - 1 - first
    return {"ppl": round(math.exp(nll / count), 4), "tokens_scored": count,
            "seconds": round(time.perf_counter() - start, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    bindir = llamacpp.build()
    model, tok, _ = load_model(a.model)
    # the held-out text of scripts/import_parity.py: the corpus's validation documents
    text = heldout_text(200_000)
    add_bos = gguf_add_bos(a.gguf)
    bos = None
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "heldout.txt"
        f.write_text(text)
        theirs = llama_tokens(bindir, a.gguf, f)
        ref = llama_perplexity(bindir, a.gguf, f, a.ctx, a.chunks, a.threads)
    mine = tok.encode(text).ids
    if add_bos:
        bos = theirs[0]
        mine = [bos] + mine
    n = a.ctx * a.chunks
    ours = ours_perplexity(model, theirs, a.ctx, a.chunks, bos)
    print(json.dumps({
        "source": a.gguf.name, "engine": llamacpp.engine_version(bindir), "ctx": a.ctx, "chunks": a.chunks,
        "add_bos": add_bos, "tokenization_identical_scored": mine[:n] == theirs[:n],
        "tokenization_identical_all": mine == theirs, "tokens_in_text": len(theirs),
        "llama_perplexity": ref, "cosmoe_eager": ours,
        "relative_difference": round(ours["ppl"] / ref["ppl"] - 1, 5)}, indent=1))


if __name__ == "__main__":
    main()
