"""edge-carve: a dense model.pt -> an MoE model.pt whose experts are the dense FFN's neurons (CMoE)."""

import time
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from cosmoe_edge.errors import exit_error

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


fail = partial(exit_error, "edge-carve")  # one line on stderr, exit code 2 (or the one given)


def training_texts() -> list[str]:
    """The corpus's training documents (evaluation reads the validation documents, so neither calibration
    nor the fine-tune sees them)."""
    from cosmoe_edge.model.data import find_corpus, read_documents, split_documents

    return split_documents(read_documents(find_corpus()))[0]


def calibration(tok, texts: list[str], tokens: int, window: int, eos):
    """(N, window) token windows from the start of `texts`."""
    import torch

    from cosmoe_edge.errors import RequestError

    ids: list[int] = []
    for text in texts:
        ids += tok.encode(text).ids + ([eos] if eos is not None else [])
        if len(ids) >= tokens:
            break
    n = min(tokens, len(ids)) // window
    if n == 0:
        raise RequestError(f"the calibration text holds {len(ids)} tokens, fewer than one window of {window}")
    return torch.tensor(ids[:n * window]).view(n, window)


@app.command(help="Carve MODEL, a dense model.pt (edge-import a Llama/Qwen2 checkpoint), into an MoE without "
                  "training (CMoE, Pei et al. 2025): each FFN's neurons are grouped by how they fire on calibration "
                  "text into --experts groups of equal width; the --shared most active groups' worth of neurons "
                  "become an always-on expert, the rest routed experts, --active of them chosen per token by a "
                  "training-free router built from each group's representative neuron. Active FFN share: "
                  "(shared + active) / experts. The result exports per expert like any MoE.")
def main(
    model: Annotated[Path, typer.Argument(help="Dense model.pt (from edge-import or edge-train's dense baseline).")],
    experts: Annotated[int, typer.Option(help="Experts per layer, shared ones included (divides the FFN width).")] = 8,
    shared: Annotated[int, typer.Option(help="How many of them are merged into the always-on shared expert.")] = 2,
    active: Annotated[int, typer.Option(help="Routed experts chosen per token.")] = 2,
    out: Annotated[Path, typer.Option(help="Carved model.pt to write.")] = Path("carved.pt"),
    calib: Annotated[Path | None, typer.Option(help="Calibration text file (default: the training corpus's "
                                                    "training documents).")] = None,
    calib_tokens: Annotated[int, typer.Option(help="Calibration tokens, in windows of 512.")] = 4096,
    k_act: Annotated[int, typer.Option(help="Neurons each calibration token marks as active (the paper's K_a).")] = 10,
    finetune_minutes: Annotated[float, typer.Option(help="Then fine-tune the routers (rows and weight scales) and "
                                                         "the norms on the corpus's training documents for this "
                                                         "many minutes of wall time, the selection bias stepped "
                                                         "towards balance (CMoE's light fine-tune); 0: none.")] = 0.0,
    finetune_lr: Annotated[float, typer.Option(help="Learning rate of the fine-tune (AdamW).")] = 1e-3,
    lora_rank: Annotated[int, typer.Option(help="During the fine-tune, also train LoRA adapters of this rank "
                                                "(peft) on attention and every expert, merged into their "
                                                "weights at the end (the official code uses 8); 0: none.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
):
    import torch
    from rich.progress import Progress

    from cosmoe_edge.errors import EdgeError
    from cosmoe_edge.model.carve import carve, check_shape, finetune
    from cosmoe_edge.model.checkpoint import load_model, save_checkpoint
    from cosmoe_edge.model.model import format_summary, param_summary
    from cosmoe_edge.model.tokenizer import eos_id

    if out.exists() and not force:
        fail(f"{out} exists; pass --force to replace it")
    if calib is not None and not calib.is_file():
        fail(f"calibration file not found: {calib}")
    if calib_tokens < 1:
        fail("--calib-tokens must be positive")
    if finetune_minutes < 0 or finetune_lr <= 0:
        fail("--finetune-minutes must be >= 0 and --finetune-lr positive")
    if lora_rank < 0 or lora_rank and not finetune_minutes:
        fail("--lora-rank must be >= 0, and applies with --finetune-minutes only")
    t0 = time.perf_counter()
    try:
        dense, tok, ckpt = load_model(model)
        check_shape(dense.cfg, experts, shared, active)
        window = min(512, dense.cfg.max_seq_len)
        corpus = training_texts() if calib is None or finetune_minutes > 0 else None  # read once for both
        texts = [calib.read_text(encoding="utf-8", errors="replace")] if calib is not None else corpus
        x = calibration(tok, texts, calib_tokens, window, eos_id(tok, ckpt["meta"]))
        torch.set_grad_enabled(False)
        with Progress(transient=True) as bar:
            task = bar.add_task(f"carving {dense.cfg.n_layers} layers on {x.numel():,} tokens",
                                total=dense.cfg.n_layers)
            cfg, facts = carve(dense, x, experts, shared, active, k_act,
                               progress=lambda done, total: bar.update(task, completed=done))
        seconds = round(time.perf_counter() - t0, 1)
        tuned = None
        if finetune_minutes > 0:
            from cosmoe_edge.model.data import encode_stream

            stream = encode_stream(tok, corpus, eos_id(tok, ckpt["meta"]))
            with Progress(transient=True) as bar:
                task = bar.add_task(f"fine-tuning for {finetune_minutes:g} min", total=1.0)
                tuned = finetune(dense, stream, finetune_minutes, lr=finetune_lr, lora_rank=lora_rank,
                                 progress=lambda done, loss: bar.update(task, completed=done,
                                                                        description=f"fine-tuning, loss {loss:.3f}"))
        meta = ckpt["meta"] | {"carved_from": model.name, "finetune": tuned, "carve": {
            "experts": experts, "shared": shared, "active": active, "k_act": k_act,
            "calibration": str(calib) if calib else "corpus training documents", "calibration_tokens": x.numel(),
            "active_ffn_share": (shared + active) / experts, "seconds": seconds, "layers": facts}}
        save_checkpoint(out, dense, ckpt["tokenizer"], meta)
    except EdgeError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot read or write {e.filename or out}: {e.strerror or e}")
    print(format_summary(cfg, param_summary(dense)))
    print(f"wrote {out}: S{shared}A{active}E{experts}, {(shared + active) / experts:.0%} of each FFN active, carved "
          f"in {seconds:.0f}s on {x.numel():,} calibration tokens"
          + (f"; fine-tuned {tuned['steps']} steps in {tuned['seconds']:.0f}s (loss {tuned['loss_first']} -> "
             f"{tuned['loss_last_10']})" if tuned else ""))


if __name__ == "__main__":
    app()
