"""edge-convert: a CoSMoE checkpoint in a format other engines read."""

from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from cosmoe_edge.errors import exit_error

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


fail = partial(exit_error, "edge-convert")  # one line on stderr, exit code 2 (or the one given)


@app.command(help="Write MODEL (a model.pt with plain SwiGLU experts) in a format other engines read: --to hf, a "
                  "transformers Mixtral folder (config.json, model.safetensors in fp32, tokenizer.json), whose "
                  "MixtralForCausalLM gives the eager model's logits; --to gguf, one fp32 GGUF file for llama.cpp "
                  "(llama architecture with experts, the byte-level BPE as a gpt2 vocabulary; quantise it with "
                  "llama-quantize). Models with weight-decomposed experts or a shared expert have no Mixtral form "
                  "and are refused; a sticky top-k model (the shipped one) converts with --plain-top-k, routing "
                  "each token on its own as Mixtral does.")
def main(
    model: Annotated[Path, typer.Argument(help="Checkpoint written by edge-train (e.g. models/cosmoe-default.pt).")],
    out: Annotated[Path, typer.Option(help="Folder (hf) or file (gguf) to write.")],
    to: Annotated[str, typer.Option(help="hf (a transformers MixtralForCausalLM folder) or gguf (a llama.cpp file).")] = "hf",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    plain_top_k: Annotated[bool, typer.Option("--plain-top-k", help="Convert a sticky top-k model without its rule "
                                              "(Mixtral and llama.cpp take each token's top-k on its own; the "
                                              "eager model with the rule off is what they then compute).")] = False,
):
    from cosmoe_edge.errors import EdgeError
    from cosmoe_edge.export.mixtral import to_gguf, to_hf_folder

    if to not in ("hf", "gguf"):
        fail(f"unknown --to {to!r}; choose hf (a transformers Mixtral folder) or gguf (a llama.cpp file)")
    if not model.is_file():
        fail(f"model not found: {model}")
    if to == "gguf" and out.is_dir():
        fail(f"{out} is a folder; --to gguf writes one file")
    if out.exists() and not force and (to == "gguf" or not out.is_dir() or any(out.iterdir())):
        fail(f"{out} exists{'' if to == 'gguf' else ' and is not empty'}; pass --force to replace it")
    try:
        if to == "gguf":
            to_gguf(model, out, plain_top_k)
        else:
            to_hf_folder(model, out, plain_top_k)
    except EdgeError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {e.filename or out}: {e.strerror or e}")
    if to == "gguf":
        print(f"wrote {out} (GGUF, llama architecture with experts, fp32): quantise it with llama-quantize")
    else:
        print(f"wrote {out} (MixtralForCausalLM, fp32): load it with "
              f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


if __name__ == "__main__":
    app()
