"""CoSMoE: a compact decoder-only MoE LM (RMSNorm, RoPE, GQA with a KV cache, MoE feed-forward).

Every piece the exporter must cut out (a layer's attention, its router, one expert) is its own
module, so export/ can wrap it without copying the maths.
"""

from dataclasses import dataclass
from math import isqrt

import torch
import torch.nn as nn
import torch.nn.functional as F

from cosmoe_edge.model.config import ModelConfig
from cosmoe_edge.model.peer import PEER


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim: int, max_seq_len: int, theta: float):
    """cos and sin of shape (max_seq_len, head_dim // 2), rotate-half (GPT-NeoX) layout."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    """x: (B, H, T, hd); cos, sin: (T, hd/2) for the tokens' absolute positions."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class KVCache(nn.Module):
    """Fixed-size cache written at absolute positions; stale slots beyond a position are masked."""

    def __init__(self, batch: int, n_kv_heads: int, max_seq_len: int, head_dim: int):
        super().__init__()
        shape = (batch, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape), persistent=False)
        self.register_buffer("v", torch.zeros(shape), persistent=False)

    def update(self, pos, k, v):
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        return self.k, self.v


def attend(q, k, v, pos=None):
    """Causal GQA attention. Without pos: q, k, v cover the same tokens (training, full forward).
    With pos (T,): k, v are the whole cache and query t may see cache slots <= pos[t]."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if pos is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = pos[:, None] >= torch.arange(k.shape[2], device=pos.device)[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.attn_bias)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.attn_bias)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.attn_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.cache: KVCache | None = None

    def qkv(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, y):
        B, H, T, hd = y.shape
        return self.wo(y.transpose(1, 2).reshape(B, T, H * hd))

    def forward(self, x, cos, sin, pos=None):
        q, k, v = self.qkv(x, cos, sin)
        if pos is not None:
            k, v = self.cache.update(pos, k, v)
        return self.out(attend(q, k, v, pos))


def linear(n_in: int, n_out: int, rank: int = 0) -> nn.Module:
    """A bias-free linear map; with rank > 0 the weight-decomposed (CoSMoE) form M = up @ down,
    rank*(n_in+n_out) parameters instead of n_in*n_out."""
    if rank <= 0:
        return nn.Linear(n_in, n_out, bias=False)
    return nn.Sequential(nn.Linear(n_in, rank, bias=False), nn.Linear(rank, n_out, bias=False))


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x). One routed expert, the shared expert, or the dense FFN."""

    def __init__(self, dim: int, hidden: int, rank: int = 0):
        super().__init__()
        self.w1, self.w3, self.w2 = linear(dim, hidden, rank), linear(dim, hidden, rank), linear(hidden, dim, rank)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


@dataclass
class Routing:
    logits: torch.Tensor  # (B, T, E) router logits
    probs: torch.Tensor  # (B, T, E) softmax over all experts
    experts: torch.Tensor  # (B, T, k) chosen expert ids
    weights: torch.Tensor  # (B, T, k) the chosen experts' weights (renormalised over the k when router_renorm)


def route(router_logits, top_k: int, renorm: bool = True):
    probs = router_logits.float().softmax(-1)
    weights, experts = probs.topk(top_k, dim=-1)
    return probs, experts, weights / weights.sum(-1, keepdim=True) if renorm else weights


def sticky_route(router_logits, top_k: int, delta: float, prev=None, renorm: bool = True):
    """Sticky top-k, one position after another: token t's experts are the top-k of softmax(z_t + delta * m_t),
    m_t marking the experts token t-1 selected (m_0 = prev, or none), and its weights route()'s: the
    unbiased probabilities of those experts. delta = 0 is route() exactly. router_logits (B, T, E); prev (B, E)
    or None. Returns probs (B, T, E), experts (B, T, k), weights (B, T, k), the last token's mask (B, E)."""
    probs = router_logits.float().softmax(-1)
    z = router_logits.detach().float().cpu()  # T small ops in a row: cheaper on the CPU than as GPU launches
    mask = torch.zeros_like(z[:, 0]) if prev is None else prev.float().cpu()
    experts = torch.empty(*z.shape[:2], top_k, dtype=torch.long)
    for t in range(z.shape[1]):
        experts[:, t] = (z[:, t] + delta * mask).softmax(-1).topk(top_k, dim=-1).indices
        mask = torch.zeros_like(mask).scatter_(1, experts[:, t], 1.0)
    experts = experts.to(probs.device)
    weights = probs.gather(-1, experts)
    return probs, experts, weights / weights.sum(-1, keepdim=True) if renorm else weights, mask


def compress(x, probs, experts, k_main: int, vectors, renorm: bool = True):
    """Compressed experts: of each token's top-k `experts` (by descending probability), the first k_main run on
    x * theta, theta = the other experts' vectors weighted by their probabilities renormalised over them (ones
    when there are none); the main experts' weights are renormalised over the k_main (unless not renorm).
    Returns (x * theta, main experts, their weights)."""
    main, aux = experts[:, :k_main], experts[:, k_main:]
    weights = probs.gather(-1, main)
    if renorm:
        weights = weights / weights.sum(-1, keepdim=True)
    if not aux.shape[1]:
        return x, main, weights
    a = probs.gather(-1, aux)
    theta = ((a / a.sum(-1, keepdim=True)).unsqueeze(-1) * vectors[aux]).sum(1)
    return x * theta.to(x.dtype), main, weights


def shared_output(shared: nn.Module, gate: nn.Module | None, x):
    """The always-on expert's contribution, scaled by sigmoid(g . x) when it has a gate (Qwen2-MoE)."""
    y = shared(x)
    return y if gate is None else torch.sigmoid(gate(x)) * y


class CMoERouter(nn.Module):
    """CMoE's training-free router (Pei et al., arXiv 2502.04416): per routed expert, its representative
    neuron's up and gate rows, L2-normalised (classifier, gate); score_e = |(c_e . x) * silu(g_e . x)|.
    Routing reads p = softmax(scores): the top-k of p + selection_bias (a balance bias, moved only by
    fine-tuning), weighted 1 + weight_scale * p (weight_scale learnable, 0 when carved)."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.classifier = nn.Linear(dim, n, bias=False)
        self.gate = nn.Linear(dim, n, bias=False)
        self.weight_scale = nn.Parameter(torch.zeros(n))
        self.register_buffer("selection_bias", torch.zeros(n))

    def forward(self, x):
        return (self.classifier(x) * F.silu(self.gate(x))).abs()


def route_cmoe(scores, top_k: int, bias, scale):
    probs = scores.float().softmax(-1)
    experts = (probs + bias).topk(top_k, dim=-1).indices
    return probs, experts, 1 + probs.gather(-1, experts) * scale[experts]


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.renorm = cfg.top_k, cfg.router_renorm
        rank = cfg.wd_rank if cfg.expert_kind == "wd" else 0
        self.cmoe = cfg.router_kind == "cmoe"
        self.router = CMoERouter(cfg.dim, cfg.num_experts) if self.cmoe else nn.Linear(cfg.dim, cfg.num_experts,
                                                                                      bias=False)
        self.experts = nn.ModuleList(SwiGLU(cfg.dim, cfg.expert_hidden, rank) for _ in range(cfg.num_experts))
        self.shared = SwiGLU(cfg.dim, cfg.shared_expert_hidden) if cfg.shared_expert_hidden else None
        self.shared_gate = nn.Linear(cfg.dim, 1, bias=False) if cfg.shared_expert_gate else None
        self.k_main = cfg.k_main
        # sticky top-k (ModelConfig.sticky_delta; training ramps it in through CoSMoE.set_sticky), and the last
        # token's selection, carried from one decode step to the next
        self.sticky_delta, self.sticky_prev = cfg.sticky_delta, None
        # one compressed expert per routed expert, initialised to ones: at init theta = 1, the plain top-k_main
        self.compressed = nn.Parameter(torch.ones(cfg.num_experts, cfg.dim)) if cfg.k_main else None

    def forward(self, x):
        B, T, D = x.shape
        flat = x.reshape(B * T, D)
        logits = self.router(flat)
        if self.cmoe:
            probs, experts, weights = route_cmoe(logits, self.top_k, self.router.selection_bias,
                                                 self.router.weight_scale)
        elif self.sticky_delta:
            probs, experts, weights, self.sticky_prev = sticky_route(logits.view(B, T, -1), self.top_k,
                                                                     self.sticky_delta, self.sticky_prev, self.renorm)
            probs, experts, weights = probs.view(B * T, -1), experts.view(B * T, -1), weights.view(B * T, -1)
        else:
            probs, experts, weights = route(logits, self.top_k, self.renorm)
        inp = flat
        if self.compressed is not None:
            inp, experts, weights = compress(flat, probs, experts, self.k_main, self.compressed, self.renorm)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            tok, slot = (experts == e).nonzero(as_tuple=True)
            if tok.numel():
                out.index_add_(0, tok, expert(inp[tok]) * weights[tok, slot, None].to(flat.dtype))
        if self.shared is not None:
            out = out + shared_output(self.shared, self.shared_gate, flat)
        routing = Routing(logits.view(B, T, -1), probs.view(B, T, -1), experts.view(B, T, -1), weights.view(B, T, -1))
        return out.view(B, T, D), routing


class DenseFFN(SwiGLU):
    def forward(self, x):
        return super().forward(x), None


def make_ffn(cfg: ModelConfig, kind: str) -> nn.Module:
    if kind == "moe":
        return MoE(cfg)
    if kind == "peer":
        return PEER(cfg.dim, cfg.peer_experts, cfg.peer_heads, cfg.peer_topk, cfg.peer_key_dim, cfg.peer_query_norm,
                    cfg.peer_activation)
    return DenseFFN(cfg.dim, cfg.dense_hidden)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, ffn_kind: str):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = make_ffn(cfg, ffn_kind)

    def forward(self, x, cos, sin, pos=None):
        h = x + self.attn(self.attn_norm(x), cos, sin, pos)
        y, routing = self.ffn(self.ffn_norm(h))
        return h + y, routing


class CoSMoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, kind) for kind in cfg.ffn_kinds)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # tied: the LM head is tok_emb.weight (no second copy in the state dict)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def setup_cache(self, batch: int = 1):
        for layer in self.layers:
            c = KVCache(batch, self.cfg.n_kv_heads, self.cfg.max_seq_len, self.cfg.head_dim)
            layer.attn.cache = c.to(self.tok_emb.weight.device)

    def set_sticky(self, scale: float):
        """Every MoE layer's sticky delta to scale * cfg.sticky_delta (training ramps it in)."""
        for moe in self.moe_layers():
            moe.sticky_delta = scale * self.cfg.sticky_delta

    def moe_layers(self) -> list["MoE"]:
        return [layer.ffn for layer in self.layers if isinstance(layer.ffn, MoE)]

    def peer_layers(self) -> list[PEER]:
        return [layer.ffn for layer in self.layers if isinstance(layer.ffn, PEER)]

    def head(self, h):
        h = self.norm(h)
        return h @ self.tok_emb.weight.t() if self.lm_head is None else self.lm_head(h)

    def forward(self, tokens, pos=None):
        """tokens (B, T). pos None: full causal forward from position 0 (training).
        pos (T,) absolute positions: incremental decode through the KV cache (setup_cache first).
        Returns logits (B, T, V) and per-layer Routing (None for dense layers)."""
        T = tokens.shape[1]
        if pos is None and T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        idx = pos if pos is not None else slice(0, T)
        cos, sin = self.rope_cos[idx], self.rope_sin[idx]
        if pos is None or int(pos[0]) == 0:  # a new sequence: no previous token's experts to stick to
            for moe in self.moe_layers():
                moe.sticky_prev = None
        h = self.tok_emb(tokens)
        routings = []
        for layer in self.layers:
            h, routing = layer(h, cos, sin, pos)
            routings.append(routing)
        return self.head(h), routings


def param_summary(model: CoSMoE) -> dict:
    """Parameter counts: total, per routed expert, and active per token (what one token touches). A PEER layer's
    pool counts as experts too; a token touches heads * top_k of its rows in each table."""
    cfg = model.cfg
    total = sum(p.numel() for p in model.parameters())
    embedding = model.tok_emb.weight.numel()
    moe, peer = model.moe_layers(), model.peer_layers()
    per_expert = sum(p.numel() for p in moe[0].experts[0].parameters()) if moe else 0
    k_run = cfg.k_main or cfg.top_k
    # compressed experts: k_main experts run; the vectors (E x dim per layer) cost a weighted sum of k - k_main
    vectors = cfg.num_experts * cfg.dim if cfg.k_main else 0
    pool = 2 * cfg.peer_experts * cfg.dim
    all_experts = per_expert * cfg.num_experts * len(moe) + pool * len(peer)
    active = (total - all_experts - vectors * len(moe) + (per_expert * k_run + (cfg.top_k - k_run) * cfg.dim) * len(moe)
              + 2 * cfg.peer_heads * cfg.peer_topk * cfg.dim * len(peer))
    return {"total": total, "embedding": embedding, "per_expert": per_expert,
            "all_experts": all_experts, "active": active}


def ffn_macs(cfg: ModelConfig) -> list[int]:
    """Multiply-accumulates per token of each layer's feed-forward, routing included: what "equal active FLOPs"
    compares. MoE: the router (CMoE's: two matrices) and the experts that run (top_k, or k_main with compressed
    experts; 3 matrices each, wd: two factors each) plus the shared expert;
    PEER: the query, every head's sub-key scores (2 * sqrt(N) * key_dim / 2) and heads * top_k experts of 2 * dim
    (the k^2 candidate sums and the softmax are additions, left out)."""
    rank = cfg.wd_rank if cfg.expert_kind == "wd" else 0
    expert = 3 * (rank * (cfg.dim + cfg.expert_hidden) if rank else cfg.dim * cfg.expert_hidden)
    macs = {"dense": 3 * cfg.dim * cfg.dense_hidden,
            "moe": cfg.dim * cfg.num_experts * (2 if cfg.router_kind == "cmoe" else 1)
            + (cfg.k_main or cfg.top_k) * expert + 3 * cfg.dim * cfg.shared_expert_hidden,
            "peer": cfg.peer_heads * (cfg.dim * cfg.peer_key_dim + isqrt(cfg.peer_experts) * cfg.peer_key_dim
                                      + cfg.peer_topk * 2 * cfg.dim)}
    return [macs[k] for k in cfg.ffn_kinds]


def format_summary(cfg: ModelConfig, counts: dict) -> str:
    kind = f"{cfg.num_experts} x {cfg.expert_kind} experts (top-{cfg.top_k}, hidden {cfg.expert_hidden}" + (
        f", rank {cfg.wd_rank}" if cfg.expert_kind == "wd" else "") + (
        f", {cfg.k_main} run + {cfg.top_k - cfg.k_main} compressed)" if cfg.k_main else ")")
    names = {"moe": kind, "dense": f"dense SwiGLU (hidden {cfg.dense_hidden})",
             "peer": f"PEER ({cfg.peer_experts} experts, {cfg.peer_heads} heads x top-{cfg.peer_topk}, "
                     f"key dim {cfg.peer_key_dim})"}
    ffn = names[cfg.ffn] if cfg.ffn in names else ", ".join(f"{i}: {names[k]}" for i, k in enumerate(cfg.ffn_kinds))
    m = lambda n: f"{n / 1e6:.2f}M"  # noqa: E731
    lines = [f"CoSMoE: {cfg.n_layers} layers, dim {cfg.dim}, {cfg.n_heads} heads / {cfg.n_kv_heads} kv, "
             f"vocab {cfg.vocab_size}, ffn: {ffn}",
             f"params: total {m(counts['total'])}, active/token {m(counts['active'])}, "
             f"embedding {m(counts['embedding'])}"]
    if counts["per_expert"]:
        lines.append(f"experts: {m(counts['all_experts'])} in all, {counts['per_expert']:,} per expert")
    return "\n".join(lines)
