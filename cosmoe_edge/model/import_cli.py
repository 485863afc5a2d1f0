"""edge-import: a transformers checkpoint folder or a GGUF file -> model.pt."""

import sys
import time
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from cosmoe_edge.errors import exit_error

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


fail = partial(exit_error, "edge-import")  # one line on stderr, exit code 2 (or the one given)


@app.command(help="Import SOURCE, a transformers checkpoint folder (config.json, safetensors, tokenizer) or a "
                  ".gguf file (dequantised to fp32 by transformers), as a model.pt that edge-export, edge-run's "
                  "eager model and edge-convert read, and edge-export for MoE models. Supported: Llama (SmolLM2, "
                  "Llama without RoPE scaling) and Qwen2 as dense models, Mixtral and Qwen2-MoE as MoE models; "
                  "anything else is refused in one line. Nothing is downloaded: the files must be on disk.")
def main(
    source: Annotated[Path, typer.Argument(help="A transformers folder, a .gguf file, or a folder holding one.")],
    out: Annotated[Path, typer.Option(help="model.pt to write.")] = Path("model.pt"),
    max_seq_len: Annotated[int, typer.Option(help="Context length the model is built for (the KV cache's rows). "
                                                  "0: the model's own, capped at 2048.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
):
    from cosmoe_edge.errors import EdgeError
    from cosmoe_edge.model.checkpoint import save_checkpoint
    from cosmoe_edge.model.importer import load
    from cosmoe_edge.model.model import CoSMoE, format_summary, param_summary

    if max_seq_len < 0:
        fail("--max-seq-len must be positive (or 0 for the model's own)")
    if out.exists() and not force:
        fail(f"{out} exists; pass --force to replace it")
    if out.is_dir():
        fail(f"{out} is a folder; --out names the model.pt to write")
    t0 = time.perf_counter()
    try:
        print(f"reading {source} through transformers ...", file=sys.stderr)
        cfg, weights, tokenizer_json, meta = load(source, max_seq_len)
        model = CoSMoE(cfg)
        model.load_state_dict(weights)
        meta["import_seconds"] = round(time.perf_counter() - t0, 1)
        save_checkpoint(out, model, tokenizer_json, meta)
    except EdgeError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot read or write {e.filename or out}: {e.strerror or e}")
    print(format_summary(cfg, param_summary(model)))
    allowed = meta["max_position_embeddings"]
    print(f"wrote {out} ({meta['architecture']} from {meta['format']}, fp32, context {cfg.max_seq_len} of the "
          f"{allowed} the model allows) in {meta['import_seconds']:.0f}s")


if __name__ == "__main__":
    app()
