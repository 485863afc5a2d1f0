"""edge-convert: a CoSMoE checkpoint in a format other engines read."""

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def fail(msg: str, code: int = 2):
    print(f"edge-convert: error: {msg}", file=sys.stderr)
    raise typer.Exit(code)


@app.command(help="Write MODEL (a model.pt with plain SwiGLU experts) as a transformers Mixtral folder: "
                  "config.json, model.safetensors (fp32), tokenizer.json. The weights are the same, so "
                  "transformers' MixtralForCausalLM gives the eager model's logits. Models with weight-"
                  "decomposed experts or a shared expert have no Mixtral form and are refused.")
def main(
    model: Annotated[Path, typer.Argument(help="Checkpoint written by edge-train (e.g. models/cosmoe-default.pt).")],
    out: Annotated[Path, typer.Option(help="Folder to write.")],
    to: Annotated[str, typer.Option(help="Target format: hf (a transformers MixtralForCausalLM folder).")] = "hf",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
):
    from cosmoe_edge.errors import EdgeError
    from cosmoe_edge.export.mixtral import to_hf_folder

    if to != "hf":
        fail(f"unknown --to {to!r}; this version writes hf (a transformers Mixtral folder)")
    if not model.is_file():
        fail(f"model not found: {model}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        fail(f"{out} exists and is not empty; pass --force to replace it")
    try:
        to_hf_folder(model, out)
    except EdgeError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {e.filename or out}: {e.strerror or e}")
    print(f"wrote {out} (MixtralForCausalLM, fp32): load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


if __name__ == "__main__":
    app()
