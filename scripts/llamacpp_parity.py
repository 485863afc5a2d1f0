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
    sticky = model.cfg.sticky_delta
    model.set_sticky(0.0)  # llama.cpp takes each token's top-k on its own: compare with the rule off
    rows, same = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        gguf = to_gguf(a.model, Path(tmp) / "model.gguf", plain_top_k=True)
        for prompt in PROMPTS:
            eager = tok.decode(generate(model, tok.encode(prompt).ids, a.tokens))
            for _ in range(5):  # its stdout can lose its last lines at exit (llama.cpp issue 22142): run again
                theirs = complete(bindir, gguf, prompt, a.tokens)
                if theirs == eager or not eager.startswith(theirs):
                    break
            same += theirs == eager
            rows.append(f"| `{prompt!r}` | {'identical' if theirs == eager else 'DIFFERENT'} | `{theirs[:60]!r}` |")
            print(rows[-1])
    body = "\n".join([f"Measured {date.today()} by `scripts/llamacpp_parity.py {a.model}`: llama.cpp (vendored in "
                      f"llama-cpp-python {VERSION}) on `edge-convert --to gguf{' --plain-top-k' if sticky else ''}` (fp32), "
                      f"greedy, {a.tokens} new tokens, against the eager PyTorch model"
                      f"{' with its sticky rule off (as llama.cpp routes)' if sticky else ''}: "
                      f"**{same} of {len(PROMPTS)}** continuations identical as text (a llama.cpp run whose text is "
                      "a strict prefix of the eager one is run again, up to 5 times: its stdout can lose its last "
                      "lines at exit, llama.cpp issue 22142).",
                      "", "| prompt | llama.cpp vs eager | llama.cpp's continuation (start) |", "|---|---|---|", *rows])
    write_between_markers(a.out, body, "gguf-parity", "### llama.cpp on the converted weights")


if __name__ == "__main__":
    main()
