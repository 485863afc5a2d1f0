"""edge-train: train a CoSMoE (or its FLOP-matched dense baseline) on real text.

Single process on CPU by default; `torchrun --nproc-per-node N -m cosmoe_edge.model.train ...` runs the same
command under DDP (gloo on CPU, nccl on GPUs), each rank drawing its own batches.
"""

import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated

import torch
import torch.distributed as dist
import torch.nn.functional as F
import typer

from cosmoe_edge.errors import CheckpointError, EdgeError, exit_error
from cosmoe_edge.model.checkpoint import build_model, load_checkpoint, save_checkpoint
from cosmoe_edge.model.config import PRESETS, ModelConfig
from cosmoe_edge.model.data import (
    encode_stream,
    eval_windows,
    find_corpus,
    random_batch,
    read_documents,
    split_documents,
)
from cosmoe_edge.model.evaluate import evaluate
from cosmoe_edge.model.losses import bles_distribution, bles_loss, load_balance_loss, reuse_loss, router_z_loss
from cosmoe_edge.model.model import CoSMoE, format_summary, param_summary
from cosmoe_edge.model.tokenizer import eos_id, load_tokenizer, train_tokenizer

VAL_TEXT_CHARS = 24_000


@dataclass
class TrainOptions:
    steps: int = 3000
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    peer_weight_decay: float | None = None  # on PEER pools and product keys (None: weight_decay)
    grad_clip: float = 1.0
    eval_every: int = 500
    eval_windows: int = 64
    seed: int = 0
    sticky_from: float = 0.0  # the share of steps trained before BlES, the reuse reward and the sticky rule start
    device: str = "cpu"


def lr_at(step: int, o: TrainOptions) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr at the last step."""
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    t = (step - o.warmup) / max(1, o.steps - o.warmup)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def sticky_scale(step: int, o: TrainOptions) -> float:
    """The share of ModelConfig.sticky_delta in force at `step`: 0 before sticky_from, then a linear ramp
    over a quarter of the steps (a rule that fires at full strength on an untrained router would freeze it)."""
    return min(1.0, max(0.0, (step - o.sticky_from * o.steps) / (0.25 * o.steps)))


def router_aux_loss(routings, cfg: ModelConfig, sticky: bool = True):
    """Mean over MoE layers of lb_weight * balance + router_z_weight * z-loss, and, when `sticky` (after
    TrainOptions.sticky_from), bles_weight * BlES + reuse_weight * reuse."""
    moe = [r for r in routings if r is not None]
    if not moe:
        return torch.zeros(())
    total = 0.0
    for r in moe:
        if cfg.lb_weight:
            total = total + cfg.lb_weight * load_balance_loss(r.probs, r.experts, cfg.lb_scope)
        if cfg.router_z_weight:
            total = total + cfg.router_z_weight * router_z_loss(r.logits)
        if sticky and cfg.bles_weight:
            total = total + cfg.bles_weight * bles_loss(bles_distribution(r.logits, cfg.bles_form), r.experts)
        if sticky and cfg.reuse_weight:
            total = total + cfg.reuse_weight * reuse_loss(r.probs, r.experts)
    return total / len(moe)


# what `edge-train --init-from` trains: compressed-expert vectors only, with the routers and norms, or all
TRAINABLE = {"vectors": (".ffn.compressed",), "routers": (".ffn.compressed", ".ffn.router.", "norm.weight"), "all": ("",)}


def freeze_except(model, train: str) -> list[str]:
    """requires_grad only on the parameters whose names contain one of TRAINABLE[train]; returns their names."""
    keep = [n for n, _ in model.named_parameters() if any(s in n for s in TRAINABLE[train])]
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    return keep


def init_from_checkpoint(path: Path, changes: dict) -> dict:
    """A trained checkpoint as the start of a fine-tune (the checkpoint's dict plus "model" and "path"), its
    config updated by `changes` (loss weights, top_k, k_main); compressed experts it lacks start at ones."""
    ckpt = load_checkpoint(path)
    cfg = ModelConfig.from_dict(ckpt["config"] | changes)
    model = CoSMoE(cfg)
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if unexpected or any(".ffn.compressed" not in n for n in missing):
        raise CheckpointError(f"{path}'s weights do not match its config")
    return ckpt | {"model": model, "path": str(path)}


PEER_POOL = (".ffn.w_in.weight", ".ffn.w_out.weight", ".ffn.sub_keys")  # what --peer-weight-decay acts on


def make_optimizer(model, o: TrainOptions):
    # compressed-expert vectors start at ones and act multiplicatively: decay would pull them to zero
    # PEER pools and keys may take their own decay: AdamW's decay shrinks every row each step, retrieved or not
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    pool = PEER_POOL if o.peer_weight_decay is not None else ()
    in_pool = lambda n: any(n.endswith(s) for s in pool)  # noqa: E731
    decay = [p for n, p in params if p.dim() >= 2 and ".ffn.compressed" not in n and not in_pool(n)]
    no_decay = [p for n, p in params if (p.dim() < 2 or ".ffn.compressed" in n) and not in_pool(n)]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if pool:
        groups.append({"params": [p for n, p in params if in_pool(n)], "weight_decay": o.peer_weight_decay})
    return torch.optim.AdamW(groups, lr=o.lr, betas=(0.9, 0.95))


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().numpy().tobytes())
    return h.hexdigest()[:16]


class Dist:
    """Rank/world from torchrun's environment; a no-op when run as a single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1:
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self):
        if self.world > 1:
            dist.destroy_process_group()


def log(d: Dist, msg: str):
    if d.main:
        print(msg, file=sys.stderr, flush=True)


def run(cfg: ModelConfig, o: TrainOptions, out: Path, corpus: Path | None, resume: Path | None,
        quiet: bool = False, start: dict | None = None, train: str = "all") -> dict:
    """Train and write `out`; `start` (init_from()) fine-tunes a trained model, its `train` parameters only.
    Returns the checkpoint's meta."""
    d = Dist()
    torch.manual_seed(o.seed)
    start_step, train_state, ckpt = 0, None, None
    if start is not None:
        tokenizer_json = start["tokenizer"]
    if resume is not None:
        ckpt = load_checkpoint(resume)
        cfg = ModelConfig.from_dict(ckpt["config"])
        if "train_state" not in ckpt:
            raise CheckpointError(f"{resume} holds no optimizer state (a shipped model?); cannot resume")
        train_state = ckpt["train_state"]
        train = ckpt["meta"].get("trained", "all")  # the optimizer state holds exactly those parameters
        start_step = int(train_state["step"])
        tokenizer_json = ckpt["tokenizer"]
    corpus_path = Path(corpus) if corpus is not None else find_corpus()
    train_texts, val_texts = split_documents(read_documents(corpus_path))
    if resume is None and start is None:
        # rank 0 trains the tokenizer; the others receive its JSON, so all ranks share one vocabulary
        tokenizer_json = train_tokenizer(train_texts, cfg.vocab_size).to_str() if d.main else None
        tokenizer_json = d.broadcast(tokenizer_json)
    tok = load_tokenizer(tokenizer_json)
    if tok.get_vocab_size() > cfg.vocab_size:
        raise CheckpointError(f"tokenizer has {tok.get_vocab_size()} tokens, model only {cfg.vocab_size}")
    eos = eos_id(tok)
    train_ids = encode_stream(tok, train_texts, eos)
    val_x, val_y = eval_windows(encode_stream(tok, val_texts, eos), o.seq_len, o.eval_windows)
    log(d, f"corpus {corpus_path}: {len(train_ids):,} train tokens, {val_x.numel():,} validation tokens")

    model = build_model(ckpt) if ckpt is not None else start["model"] if start is not None else CoSMoE(cfg)
    model.to(o.device).train()
    val_x, val_y = val_x.to(o.device), val_y.to(o.device)
    trained = freeze_except(model, train)
    log(d, format_summary(cfg, param_summary(model)))
    opt = make_optimizer(model, o)
    if train_state is not None:
        opt.load_state_dict(train_state["optimizer"])
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if d.world > 1 else model

    history = list(train_state["history"]) if train_state else []
    if d.main and start_step == 0:  # the untrained model's loss: the baseline every later figure improves on
        ev = evaluate(model, val_x, val_y)
        model.train()
        history.append({"step": 0, "train_loss": None, "val_loss": ev["loss"], "val_ppl": ev["ppl"],
                        "switch_rate": ev.get("switch_rate_mean")})
    tokens_per_step = o.batch_size * o.seq_len * d.world
    t0, last = time.perf_counter(), None
    progress = None
    if d.main and not quiet:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), transient=False)
        progress.start()
        task = progress.add_task("train", total=o.steps, completed=start_step, info="")
    # a fine-tune of a model trained with the sticky rule keeps it at full strength (no ramp from 0)
    keeps_rule = start is not None and start["config"].get("sticky_delta") == cfg.sticky_delta
    try:
        for step in range(start_step, o.steps):
            # per-step generator: a resumed run draws exactly the batches the original would have
            gen = torch.Generator().manual_seed(o.seed * 1_000_003 + d.rank * 10_007 + step)
            x, y = (t.to(o.device) for t in random_batch(train_ids, o.batch_size, o.seq_len, gen))
            for g in opt.param_groups:
                g["lr"] = lr_at(step, o)
            if cfg.sticky_delta:
                model.set_sticky(1.0 if keeps_rule else sticky_scale(step, o))
            logits, routings = ddp(x)
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            loss = ce + router_aux_loss(routings, cfg, sticky=step >= o.sticky_from * o.steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
            now = time.perf_counter()
            tps = tokens_per_step / (now - last) if last else 0.0
            last = now
            if progress is not None:
                progress.update(task, advance=1, info=f"loss {ce.item():.3f}  {tps:,.0f} tok/s  lr {lr_at(step, o):.1e}")
            if d.main and ((step + 1) % o.eval_every == 0 or step + 1 == o.steps):
                ev = evaluate(model, val_x, val_y)
                model.train()
                history.append({"step": step + 1, "train_loss": ce.item(), "val_loss": ev["loss"],
                                "val_ppl": ev["ppl"], "switch_rate": ev.get("switch_rate_mean")})
                sw = f", switch rate {ev['switch_rate_mean']:.3f}" if "switch_rate_mean" in ev else ""
                msg = f"step {step + 1}: val loss {ev['loss']:.4f}, ppl {ev['ppl']:.2f}{sw}"
                progress.console.print(msg) if progress is not None else log(d, msg)
    finally:
        if progress is not None:
            progress.stop()

    elapsed = time.perf_counter() - t0
    if d.world > 1:
        print(f"[rank {d.rank}] final weights digest {weights_digest(model)}", file=sys.stderr, flush=True)
    meta = {}
    if d.main:
        ev = evaluate(model, val_x, val_y)
        counts = param_summary(model)
        prev = ckpt["meta"] if ckpt is not None else {}
        meta = ({"init_from": start["path"], "init_from_meta": {k: v for k, v in start["meta"].items()
                                                                  if k not in ("history", "val_text")},
                 "trained": train, "trained_params": sum(p.numel() for n, p in model.named_parameters()
                                                         if n in trained)} if start is not None else {})
        meta |= {
            "corpus": str(corpus_path), "train_tokens_available": len(train_ids), "val_tokens": val_x.numel(),
            "steps": o.steps, "tokens_seen": o.steps * tokens_per_step, "options": vars(o) | {"world": d.world},
            "train_seconds": prev.get("train_seconds", 0.0) + elapsed, "params": counts,
            "val_loss": ev["loss"], "val_ppl": ev["ppl"], "expert_usage": ev.get("expert_usage"),
            "switch_rate": ev.get("switch_rate"), "switch_rate_mean": ev.get("switch_rate_mean"),
            "peer_usage": ev.get("peer_usage"), "history": history,
            # a held-out sample travels with the model, so edge-export can verify without the corpus
            "val_text": "\n".join(val_texts)[:VAL_TEXT_CHARS],
        }
        save_checkpoint(out, model, tokenizer_json, meta,
                        train_state={"step": o.steps, "optimizer": opt.state_dict(), "history": history})
        print_result(meta, out)
    d.close()
    return meta


def print_result(meta: dict, out: Path):
    lines = [f"wrote {out}", f"validation perplexity {meta['val_ppl']:.2f} (loss {meta['val_loss']:.4f}) "
             f"after {meta['tokens_seen']:,} tokens in {meta['train_seconds']:.0f}s"]
    if meta["switch_rate"]:
        lines.append("expert switch rate per layer: " + ", ".join(f"{s:.3f}" for s in meta["switch_rate"])
                     + f" (mean {meta['switch_rate_mean']:.3f})")
        for i, u in enumerate(meta["expert_usage"]):
            lines.append(f"  layer {i} expert usage: " + " ".join(f"{x:.2f}" for x in u))
    for i, u in enumerate(meta.get("peer_usage") or []):
        lines.append(f"PEER layer {i}: {u['used']:.1%} of the pool retrieved, KL from uniform {u['kl_uniform']:.3f}")
    print("\n".join(lines), flush=True)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help="Train a CoSMoE language model on a text corpus and write model.pt.\n\n"
                  "Without --corpus it uses the Python documentation that Debian's python3.11-doc "
                  "installs (`make setup`). Under torchrun it trains data-parallel (DDP).")
def main(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (atomically).")] = Path("model.pt"),
    corpus: Annotated[Path | None, typer.Option(help="Text file or folder of .txt/.rst/.md files.")] = None,
    preset: Annotated[str, typer.Option(help=f"Model shape and losses to start from: {', '.join(PRESETS)} (default: "
                                             "the shipped recipe, sticky top-k; train it with --sticky-from 0.25 "
                                             "as scripts/train_default.sh does; bles: the one shipped before).")
                      ] = "default",
    dense: Annotated[bool, typer.Option("--dense", help="Train the FLOP-matched dense baseline of the preset.")] = False,
    ffn: Annotated[str | None, typer.Option(help="Feed-forward of every layer: moe, dense or peer, or one per layer "
                                                 "comma-separated (moe,moe,peer,moe).")] = None,
    peer_experts: Annotated[int | None, typer.Option(help="PEER: single-neuron experts in a layer's pool (a perfect "
                                                          "square: product keys).")] = None,
    peer_heads: Annotated[int | None, typer.Option(help="PEER: retrieval heads (each its own query).")] = None,
    peer_topk: Annotated[int | None, typer.Option(help="PEER: experts each head retrieves (at most sqrt(pool)).")]
    = None,
    peer_key_dim: Annotated[int | None, typer.Option(help="PEER: query and product-key width (even).")] = None,
    peer_query_norm: Annotated[bool | None, typer.Option(help="PEER: BatchNorm on the query (the paper's default).")]
    = None,
    dim: Annotated[int | None, typer.Option(help="Model width.")] = None,
    layers: Annotated[int | None, typer.Option(help="Number of layers.")] = None,
    experts: Annotated[int | None, typer.Option(help="Routed experts per layer.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Experts each token uses.")] = None,
    expert_hidden: Annotated[int | None, typer.Option(help="Hidden width of one expert.")] = None,
    expert_kind: Annotated[str | None, typer.Option(help="swiglu, or wd (weight-decomposed, low rank).")] = None,
    wd_rank: Annotated[int | None, typer.Option(help="Rank of each factored matrix of a wd expert.")] = None,
    shared_expert_hidden: Annotated[int | None, typer.Option(help="Width of an always-on shared expert (0: none).")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="BPE vocabulary size.")] = None,
    bles_weight: Annotated[float | None, typer.Option(help="Weight of the block-wise expert selection loss (0: off).")] = None,
    lb_weight: Annotated[float | None, typer.Option(help="Weight of the per-sequence load-balancing loss.")] = None,
    bles_form: Annotated[str | None, typer.Option(help="BlES distribution: standardized (scale-invariant) or softmax.")] = None,
    reuse_weight: Annotated[float | None, typer.Option(help="Weight of the reuse reward: -log of the probability "
                                                            "token t puts on token t-1's experts (0: off).")] = None,
    router_z_weight: Annotated[float | None, typer.Option(help="Weight of the router z-loss (0: off).")] = None,
    lb_scope: Annotated[str | None, typer.Option(help="Load balancing per sequence or over the batch.")] = None,
    sticky_delta: Annotated[float | None, typer.Option(help="Sticky top-k: each token's top-k is taken of its router "
                                                            "logits plus this for the experts the previous token "
                                                            "selected (weights unbiased); part of the model, the "
                                                            "runtime applies it too (0: off).")] = None,
    sticky_from: Annotated[float, typer.Option(help="Share of the steps trained before BlES, the reuse reward and "
                                                    "the sticky rule start (0: from the first step; the sticky "
                                                    "delta then ramps in over a quarter of the steps).")] = 0.0,
    device: Annotated[str, typer.Option(help="cpu, or cuda to train on a GPU.")] = "cpu",
    steps: Annotated[int, typer.Option(help="Optimizer steps in all (a resumed run continues to this).")] = TrainOptions.steps,
    batch_size: Annotated[int, typer.Option(help="Sequences per step (per rank).")] = TrainOptions.batch_size,
    seq_len: Annotated[int, typer.Option(help="Tokens per training sequence.")] = TrainOptions.seq_len,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = TrainOptions.lr,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps before cosine decay.")] = TrainOptions.warmup,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on matrices.")] = TrainOptions.weight_decay,
    peer_weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay on PEER pools and product keys "
                                                                 "(default: --weight-decay).")] = None,
    grad_clip: Annotated[float, typer.Option(help="Gradient norm clip.")] = TrainOptions.grad_clip,
    eval_every: Annotated[int, typer.Option(help="Steps between validation runs.")] = TrainOptions.eval_every,
    eval_windows: Annotated[int, typer.Option(help="Validation windows of seq_len tokens.")] = TrainOptions.eval_windows,
    seed: Annotated[int, typer.Option(help="Seed for init and batches; same seed, same model.")] = TrainOptions.seed,
    resume: Annotated[Path | None, typer.Option(help="Continue from this checkpoint (its config wins).")] = None,
    init_from: Annotated[Path | None, typer.Option(help="Fine-tune this trained model.pt instead of training from "
                                                        "scratch (its shape and tokenizer; shape options refused).")]
    = None,
    k_main: Annotated[int | None, typer.Option(help="Compressed experts: each token runs its k_main highest-weighted "
                                                    "experts; the rest of its top-k stand in as learned vectors "
                                                    "(0: off). With --init-from the vectors start at ones.")] = None,
    train_params: Annotated[str, typer.Option(help="With --init-from, what trains: vectors (the compressed "
                                                   "experts'), routers (vectors, routers and norms) or all.")]
    = "vectors",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all cores).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
):
    if threads:
        torch.set_num_threads(threads)
    if preset not in PRESETS:
        fail(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    overrides = {k: v for k, v in dict(dim=dim, n_layers=layers, num_experts=experts, top_k=top_k,
                                       expert_hidden=expert_hidden, expert_kind=expert_kind, wd_rank=wd_rank,
                                       shared_expert_hidden=shared_expert_hidden, vocab_size=vocab_size,
                                       bles_weight=bles_weight, lb_weight=lb_weight, bles_form=bles_form,
                                       reuse_weight=reuse_weight, router_z_weight=router_z_weight,
                                       lb_scope=lb_scope, k_main=k_main, sticky_delta=sticky_delta, ffn=ffn,
                                       peer_experts=peer_experts, peer_heads=peer_heads, peer_topk=peer_topk,
                                       peer_key_dim=peer_key_dim, peer_query_norm=peer_query_norm).items()
                 if v is not None}
    if ffn is not None and "moe" not in ffn.split(","):
        overrides.setdefault("sticky_delta", 0.0)  # the preset's sticky rule has no router to act on
    opts = TrainOptions(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, warmup=warmup,
                        weight_decay=weight_decay, peer_weight_decay=peer_weight_decay, grad_clip=grad_clip,
                        eval_every=eval_every, eval_windows=eval_windows, seed=seed, sticky_from=sticky_from,
                        device=device)
    if not 0 <= sticky_from < 1:
        fail("--sticky-from must be in [0, 1)")
    if device.split(":")[0] not in ("cpu", "cuda") or (device != "cpu" and not torch.cuda.is_available()):
        fail(f"--device {device!r}: use cpu, or cuda on a machine with a GPU")
    if train_params not in TRAINABLE:
        fail(f"unknown --train-params {train_params!r}; choose {', '.join(TRAINABLE)}")
    try:
        start = None
        if init_from is not None:
            losses = ("bles_weight", "lb_weight", "bles_form", "reuse_weight", "router_z_weight", "lb_scope",
                      "sticky_delta")
            shape = sorted(k for k in overrides if k not in (*losses, "top_k", "k_main"))
            if shape or dense or resume is not None or preset != "default":
                fail("--init-from takes the model's shape from its checkpoint; drop "
                     + ", ".join(["--" + k.replace("_", "-") for k in shape] + ["--dense"] * dense
                                 + ["--resume"] * (resume is not None) + ["--preset"] * (preset != "default")))
            start = init_from_checkpoint(init_from, overrides)
            cfg = start["model"].cfg
        else:
            cfg = ModelConfig.from_dict(PRESETS[preset].to_dict() | overrides)
            train_params = "all"
        if dense:
            cfg = cfg.dense_baseline()
        if seq_len > cfg.max_seq_len:
            fail(f"--seq-len {seq_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
        run(cfg, opts, out, corpus, resume, quiet, start, train_params)
    except (EdgeError, ValueError) as e:
        fail(str(e))


fail = partial(exit_error, "edge-train")  # one line on stderr, exit code 2 (or the one given)


if __name__ == "__main__":
    app()
