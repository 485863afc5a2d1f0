"""Does llama.cpp run the converted weights as the eager model does? Converts a checkpoint with
`edge-convert --to gguf` (fp32), builds llama.cpp (cosmoe_edge/bench/llamacpp.py, cached), and compares
llama-completion's greedy continuations with the eager PyTorch model's, as text, on the verification
prompts. Writes the result into docs/EXPORT.md ("gguf-parity" markers).

Usage: python scripts/llamacpp_parity.py [models/cosmoe-default.pt] [--tokens 32]
"""

import argparse
import tempfile
from datetime import date
from pathlib import Path

from doc_figures import write_between_markers

from cosmoe_edge.bench.llamacpp import VERSION, build, complete
from cosmoe_edge.export.mixtral import to_gguf
from cosmoe_edge.export.verify import PROMPTS
from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.generate import generate


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, nargs="?", default=Path("models/cosmoe-default.pt"))
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("docs/EXPORT.md"))
    a = ap.parse_args()
    bindir = build()
    model, tok, _ = load_model(a.model)
    rows, same = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        gguf = to_gguf(a.model, Path(tmp) / "model.gguf")
        for prompt in PROMPTS:
            eager = tok.decode(generate(model, tok.encode(prompt).ids, a.tokens))
            theirs = complete(bindir, gguf, prompt, a.tokens)
            same += theirs == eager
            rows.append(f"| `{prompt!r}` | {'identical' if theirs == eager else 'DIFFERENT'} | `{theirs[:60]!r}` |")
            print(rows[-1])
    body = "\n".join([f"Measured {date.today()} by `scripts/llamacpp_parity.py {a.model}`: llama.cpp (vendored in "
                      f"llama-cpp-python {VERSION}) on `edge-convert --to gguf` (fp32), greedy, {a.tokens} new tokens, "
                      f"against the eager PyTorch model: **{same} of {len(PROMPTS)}** continuations identical as text.",
                      "", "| prompt | llama.cpp vs eager | llama.cpp's continuation (start) |", "|---|---|---|", *rows])
    write_between_markers(a.out, body, "gguf-parity", "### llama.cpp on the converted weights")


if __name__ == "__main__":
    main()
