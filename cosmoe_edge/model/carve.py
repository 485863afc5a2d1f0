"""CMoE (Pei et al., arXiv 2502.04416; github.com/JarvisPei/CMoE): carve a dense model's SwiGLU FFNs into
experts without training, so a dense checkpoint (edge-import) becomes one whose experts live on flash.

Per layer, on calibration tokens whose FFN input comes from the layers already carved (as the official
code does):
1. profile: h = silu(x W_gate^T) * (x W_up^T) with x and the rows L2-normalised; each token marks its
   `k_act` neurons of largest |h|; a neuron's activation rate is the mean of its marks.
2. shared: the `shared * m` neurons of highest rate (m = d_ff / experts) form one always-on expert.
3. routed: the rest is clustered into `experts - shared` groups of exactly m by L1 distance between
   mark vectors and centroids (initialised at the highest-rate neurons), solved as one balanced linear
   assignment (`lap.lapjv` on the distances repeated m times per cluster), then the centroids updated.
4. router: per cluster the neuron closest (L1) to its centroid; its up and gate rows, normalised, are
   the CMoE router's (model.CMoERouter), with weight_scale 0, so a chosen expert counts with weight 1.
With every expert chosen, the carved FFN is the dense one (the neurons are only regrouped).
"""

import time

import numpy as np
import torch
import torch.nn.functional as F

from cosmoe_edge.errors import CheckpointError, RequestError, require
from cosmoe_edge.model.config import ModelConfig
from cosmoe_edge.model.model import MoE, SwiGLU


def check_shape(cfg: ModelConfig, experts: int, shared: int, active: int):
    if cfg.ffn != "dense":
        raise CheckpointError("edge-carve needs a dense model (edge-import one); this checkpoint is already an MoE",
                              "not_dense")
    if experts < 2 or cfg.dense_hidden % experts:
        raise RequestError(f"--experts {experts} must be >= 2 and divide the FFN width {cfg.dense_hidden}")
    if not 0 <= shared < experts:
        raise RequestError(f"--shared {shared} must be in 0..{experts - 1} (fewer than --experts)")
    if not 1 <= active <= experts - shared:
        raise RequestError(f"--active {active} must be in 1..{experts - shared} (the routed experts)")


def carved_config(cfg: ModelConfig, experts: int, shared: int, active: int) -> ModelConfig:
    m = cfg.dense_hidden // experts
    return ModelConfig.from_dict(cfg.to_dict() | dict(
        ffn="moe", num_experts=experts - shared, top_k=active, expert_hidden=m, expert_kind="swiglu",
        shared_expert_hidden=shared * m, shared_expert_gate=False, router_kind="cmoe", lb_weight=0.0,
        bles_weight=0.0))


@torch.no_grad()
def activation_marks(x: torch.Tensor, ffn: SwiGLU, k_act: int) -> torch.Tensor:
    """(tokens, d_ff) 0/1: each token's k_act neurons of largest |h| on normalised inputs and rows."""
    xn = F.normalize(x.float(), dim=-1)
    h = F.silu(xn @ F.normalize(ffn.w1.weight, dim=1).T) * (xn @ F.normalize(ffn.w3.weight, dim=1).T)
    marks = torch.zeros_like(h)
    marks.scatter_(1, h.abs().topk(k_act, dim=1).indices, 1.0)
    return marks


def balanced_clusters(marks: torch.Tensor, neurons: list[int], k: int, rates: torch.Tensor):
    """Groups of exactly len(neurons)/k neurons (lists of ids) and each group's representative."""
    import lap

    m = len(neurons) // k
    pts = marks[:, neurons].T.contiguous().double()  # (n, tokens): a neuron's mark vector
    seeds = rates[neurons].topk(k).indices
    centroids = pts[seeds].clone()
    cost = torch.cdist(pts, centroids, p=1).repeat_interleave(m, dim=1).numpy()  # (n, k*m) = (n, n)
    _, col, _ = lap.lapjv(np.ascontiguousarray(cost))
    assign = torch.as_tensor(col // m)
    groups, reps = [], []
    for c in range(k):
        members = (assign == c).nonzero().flatten()
        centroid = pts[members].mean(0, keepdim=True)  # the update after the one assignment
        closest = torch.cdist(centroid, pts[members], p=1).argmin()
        groups.append([neurons[i] for i in members.tolist()])
        reps.append(neurons[members[closest].item()])
    return groups, reps


@torch.no_grad()
def carve_ffn(ffn: SwiGLU, x: torch.Tensor, cfg: ModelConfig, shared: int, k_act: int) -> tuple[MoE, dict]:
    """The MoE that replaces `ffn`, given its calibration inputs x (tokens, D)."""
    experts = cfg.num_experts + shared
    m = cfg.expert_hidden
    marks = activation_marks(x, ffn, k_act)
    rates = marks.mean(0)
    order = rates.argsort(descending=True, stable=True)
    shared_ids = sorted(order[:shared * m].tolist())
    routed = sorted(set(range(ffn.w1.weight.shape[0])) - set(shared_ids))
    groups, reps = balanced_clusters(marks, routed, experts - shared, rates)
    moe = MoE(cfg)
    take = lambda dst, ids: (dst.w1.weight.copy_(ffn.w1.weight[ids]), dst.w3.weight.copy_(ffn.w3.weight[ids]),  # noqa: E731
                             dst.w2.weight.copy_(ffn.w2.weight[:, ids]))
    for expert, ids in zip(moe.experts, groups, strict=True):
        take(expert, ids)
    if shared:
        take(moe.shared, shared_ids)
    moe.router.classifier.weight.copy_(F.normalize(ffn.w3.weight[reps], dim=1))
    moe.router.gate.weight.copy_(F.normalize(ffn.w1.weight[reps], dim=1))
    return moe, {"shared_neurons": shared_ids, "groups": groups, "representatives": reps,
                 "shared_rate": rates[shared_ids].mean().item() if shared else 0.0, "mean_rate": rates.mean().item()}


@torch.no_grad()
def carve(model, calib: torch.Tensor, experts: int, shared: int, active: int, k_act: int = 10, progress=None):
    """Carve every FFN of the dense `model` (in place: its layers' FFNs are replaced) on calibration
    windows `calib` (N, T). Returns the carved config and per-layer facts."""
    check_shape(model.cfg, experts, shared, active)
    cfg = carved_config(model.cfg, experts, shared, active)
    if not 1 <= k_act <= cfg.expert_hidden * experts:
        raise RequestError(f"--k-act {k_act} must be in 1..{cfg.expert_hidden * experts}")
    T = calib.shape[1]
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    h = model.tok_emb(calib)
    facts = []
    for i, layer in enumerate(model.layers):
        t0 = time.perf_counter()
        h = h + layer.attn(layer.attn_norm(h), cos, sin)
        x = layer.ffn_norm(h)
        moe, info = carve_ffn(layer.ffn, x.reshape(-1, x.shape[-1]), cfg, shared, k_act)
        layer.ffn = moe
        h = h + moe(x)[0]  # the next layer calibrates on the carved model's states
        facts.append({"layer": i, "seconds": round(time.perf_counter() - t0, 2),
                      "shared_rate": round(info["shared_rate"], 4), "mean_rate": round(info["mean_rate"], 4)})
        if progress:
            progress(i + 1, len(model.layers))
    model.cfg = cfg
    return cfg, facts


def add_lora(model, rank: int) -> list[str]:
    """LoRA adapters (peft, alpha = 2 * rank) on every linear layer of attention and the experts (or the
    dense FFN), as the official code adds them to all linear layers; the routers train in full instead.
    Returns the targets."""
    require("edge-carve --lora-rank", "train", "peft")
    from peft import LoraConfig, inject_adapter_in_model

    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and any(part in n for part in (".attn.", ".ffn.experts.", ".ffn.shared.", ".ffn.w"))]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets), model)
    return targets


def merge_lora(model):
    """Fold every adapter into its base layer and put the plain nn.Linear back: the checkpoint and the export
    see an ordinary model whose weights moved."""
    from peft.tuners.lora import LoraLayer

    for name, m in list(model.named_modules()):
        if isinstance(m, LoraLayer):
            m.merge()
            parent, attr = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), attr, m.get_base_layer())


def finetune(model, stream: torch.Tensor, minutes: float, lr: float = 1e-3, batch: int = 4, seq_len: int = 256,
             gamma: float = 1e-3, seed: int = 0, progress=None, max_steps: int | None = None,
             lora_rank: int = 0) -> dict:
    """CMoE's light fine-tune, bounded by wall time: the routers (classifier, gate, weight_scale) and the
    norms train, on the LM loss over random windows of `stream`; after each step every layer's selection
    bias moves by gamma towards balance (down for experts above the mean load, up below), as the official
    code's update_bias does. With lora_rank > 0, LoRA adapters on attention and the experts train too and
    are merged into their weights at the end; else the experts and attention stay as carved. A dense model
    (no routers) trains its norms and adapters alone: the reference for a carved model's fine-tune."""
    from cosmoe_edge.model.data import random_batch

    seq_len = min(seq_len, model.cfg.max_seq_len)
    if seq_len + 1 >= len(stream):
        raise RequestError(f"the fine-tuning text holds {len(stream)} tokens, fewer than one window of {seq_len}")
    if lora_rank < 0:
        raise RequestError(f"--lora-rank must be >= 0 (got {lora_rank})")
    lora_targets = add_lora(model, lora_rank) if lora_rank else []
    names = [n for n, _ in model.named_parameters()]
    train = {n for n in names if ".ffn.router." in n or n.endswith("norm.weight") or ".lora_" in n}
    for n, p in model.named_parameters():
        p.requires_grad_(n in train)
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if n in train], lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    deadline = time.perf_counter() + 60 * minutes
    losses, steps, t0 = [], 0, time.perf_counter()
    model.train()
    with torch.enable_grad():
        while time.perf_counter() < deadline and (max_steps is None or steps < max_steps):
            x, y = random_batch(stream, batch, seq_len, gen)
            logits, routings = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for layer, r in zip(model.layers, routings, strict=True):
                    if r is None:  # a dense layer: the reference fine-tune of the model before carving
                        continue
                    counts = torch.bincount(r.experts.flatten(), minlength=r.probs.shape[-1]).float()
                    bias = layer.ffn.router.selection_bias
                    bias -= gamma * (counts > counts.mean()).float()
                    bias += gamma * (counts < counts.mean()).float()
            losses.append(loss.item())
            steps += 1
            if progress:
                progress(min(1.0, (time.perf_counter() - t0) / (60 * minutes)), loss.item())
    model.eval()
    if lora_rank:
        merge_lora(model)
    for p in model.parameters():
        p.requires_grad_(True)
    trained = {n.split(".", 2)[-1] for n in train if ".lora_" not in n}
    return {"minutes": minutes, "steps": steps, "tokens": steps * batch * seq_len, "lr": lr, "gamma": gamma,
            "lora_rank": lora_rank, "lora_layers": len(lora_targets),
            "seconds": round(time.perf_counter() - t0, 1), "trained": sorted(trained),
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last_10": round(sum(losses[-10:]) / len(losses[-10:]), 4) if losses else None}
