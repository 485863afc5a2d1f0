"""The one model config. Stored in model.pt as a plain dict, so it must stay JSON-friendly."""

from dataclasses import asdict, dataclass, fields
from math import isqrt

FFN_KINDS = ("moe", "dense", "peer")


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2  # grouped-query attention: n_heads must be a multiple
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attn_bias: bool = False  # biases on the q, k and v projections (Qwen2's attention; edge-import)
    # feed-forward: "moe", "dense" (the FLOP-aligned baseline) or "peer" in every layer, or one kind per layer,
    # comma-separated ("moe,moe,peer,moe"): ffn_kinds
    ffn: str = "moe"
    dense_hidden: int = 768  # used when ffn == "dense"
    num_experts: int = 8
    top_k: int = 2
    expert_hidden: int = 384
    expert_kind: str = "swiglu"  # "swiglu" or "wd" (weight-decomposed, low-rank factors)
    wd_rank: int = 128  # rank r of each factored matrix when expert_kind == "wd"
    shared_expert_hidden: int = 0  # >0 adds an always-on SwiGLU expert of this width
    shared_expert_gate: bool = False  # the shared expert's output times sigmoid(g . x) (Qwen2-MoE)
    # the chosen experts' weights: their softmax probabilities renormalised over the top_k (Mixtral,
    # CoSMoE), or False: the probabilities as they are (Qwen2-MoE, OLMoE)
    router_renorm: bool = True
    # "softmax": a linear router, top-k of its softmax; "cmoe": CMoE's training-free router (edge-carve),
    # scores from each expert's representative neuron, weights 1 + weight_scale * p (model.CMoERouter)
    router_kind: str = "softmax"
    # Compressed Experts (He et al., arXiv 2503.00634): with k_main > 0 each token's k_main highest-weighted
    # experts run, and the other top_k - k_main stand in as learned vectors (MoE.compressed, one per expert,
    # R^dim) whose weighted sum scales the main experts' input; 0: off
    k_main: int = 0
    # training losses (stored so a resumed run keeps them)
    lb_weight: float = 0.01  # per-sequence switch-style load balancing
    bles_weight: float = 0.0  # block-wise expert selection loss (CoSMoE)
    # "standardized": BlES reads W = softmax(logits / std(logits)), which a router cannot lower by
    # shrinking its logits (with top-k weights renormalised, a flat router costs the LM nothing, and
    # the literal "softmax" form trains to exactly that: entropy log E, switch rate unchanged)
    bles_form: str = "standardized"
    reuse_weight: float = 0.0  # the reuse reward (losses.reuse_loss), an alternative to BlES
    router_z_weight: float = 0.0  # router z-loss (ST-MoE)
    lb_scope: str = "sequence"  # load balancing per "sequence" (CoSMoE) or over the "batch"
    # sticky top-k: a token's top-k is taken of its router logits plus sticky_delta for each expert the previous
    # token (same layer, same sequence) selected; the weights stay the unbiased probabilities. Part of the
    # model: evaluation, export and the runtime apply it too. 0: plain top-k
    sticky_delta: float = 0.0
    # PEER layers (model/peer.py): a pool of peer_experts single-neuron experts (a perfect square: product keys
    # are two tables of sqrt(N) sub-keys), peer_heads heads each retrieving peer_topk of them with a query of
    # peer_key_dim (BatchNorm'd when peer_query_norm)
    peer_experts: int = 16384
    peer_heads: int = 4
    peer_topk: int = 8
    peer_key_dim: int = 128
    peer_query_norm: bool = True
    peer_activation: str = "gelu"

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("head dimension must be even for RoPE")
        kinds = self.ffn.split(",")
        if any(k not in FFN_KINDS for k in kinds) or len(kinds) not in (1, self.n_layers):
            raise ValueError(f"ffn must be one of {', '.join(FFN_KINDS)}, or one of them per layer ({self.n_layers}, "
                             f"comma-separated), not {self.ffn!r}")
        if "peer" in kinds:
            n = isqrt(self.peer_experts)
            if self.peer_experts < 1 or n * n != self.peer_experts:
                raise ValueError(f"peer_experts {self.peer_experts} must be a perfect square (product keys)")
            if self.peer_key_dim < 2 or self.peer_key_dim % 2:
                raise ValueError(f"peer_key_dim {self.peer_key_dim} must be even (two halves for product keys)")
            if not 1 <= self.peer_topk <= n:
                raise ValueError(f"peer_topk {self.peer_topk} must be in 1..sqrt(peer_experts) ({n})")
            if self.peer_heads < 1:
                raise ValueError(f"peer_heads {self.peer_heads} must be at least 1")
            if self.peer_activation not in ("gelu", "relu"):
                raise ValueError(f"peer_activation must be 'gelu' or 'relu', not {self.peer_activation!r}")
        if self.expert_kind not in ("swiglu", "wd"):
            raise ValueError(f"expert_kind must be 'swiglu' or 'wd', not {self.expert_kind!r}")
        if self.bles_form not in ("standardized", "softmax"):
            raise ValueError(f"bles_form must be 'standardized' or 'softmax', not {self.bles_form!r}")
        if self.lb_scope not in ("sequence", "batch"):
            raise ValueError(f"lb_scope must be 'sequence' or 'batch', not {self.lb_scope!r}")
        if self.router_kind not in ("softmax", "cmoe"):
            raise ValueError(f"router_kind must be 'softmax' or 'cmoe', not {self.router_kind!r}")
        if self.sticky_delta and not (self.sticky_delta > 0 and self.has_moe and self.router_kind == "softmax"):
            raise ValueError(f"sticky_delta {self.sticky_delta} must be > 0 and needs an MoE with a softmax router")
        if self.shared_expert_gate and not self.shared_expert_hidden:
            raise ValueError("shared_expert_gate needs a shared expert (shared_expert_hidden > 0)")
        if self.has_moe and not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k {self.top_k} must be in 1..num_experts ({self.num_experts})")
        if self.k_main and not (self.has_moe and self.router_kind == "softmax" and 1 <= self.k_main <= self.top_k):
            raise ValueError(f"k_main {self.k_main} needs an MoE with a softmax router and 1 <= k_main <= top_k "
                             f"({self.top_k})")

    @property
    def ffn_kinds(self) -> list[str]:
        """The feed-forward kind of each layer."""
        kinds = self.ffn.split(",")
        return kinds * self.n_layers if len(kinds) == 1 else kinds

    @property
    def has_moe(self) -> bool:
        return "moe" in self.ffn_kinds

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        """The config as stored in model.pt and in a manifest's "model"; the PEER settings only where a layer is
        PEER, so a model without one is written exactly as before they existed."""
        d = asdict(self)
        return d if "peer" in self.ffn_kinds else {k: v for k, v in d.items() if not k.startswith("peer_")}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)

    def dense_baseline(self) -> "ModelConfig":
        """The dense model with the same active FLOPs per token: one SwiGLU FFN as wide as the
        top_k routed experts plus the shared expert (router FLOPs, d*E, are negligible)."""
        d = self.to_dict()
        d.update(ffn="dense", dense_hidden=self.top_k * self.active_expert_hidden + self.shared_expert_hidden,
                 bles_weight=0.0, lb_weight=0.0, reuse_weight=0.0, router_z_weight=0.0, sticky_delta=0.0)
        return ModelConfig(**d)

    @property
    def active_expert_hidden(self) -> int:
        """Hidden width of a full SwiGLU expert with the same FLOPs as one routed expert."""
        if self.expert_kind == "swiglu":
            return self.expert_hidden
        # a wd expert costs r*(d+h) per matrix; a full one d*h'
        return round(self.wd_rank * (self.dim + self.expert_hidden) / self.dim)


PRESETS = {
    # the shipped recipe (issue 16): sticky top-k (delta 1.75, ramped in after a quarter of the steps:
    # edge-train --sticky-from 0.25), load balancing 0.1 over the batch, router z-loss 1e-3, no BlES
    "default": ModelConfig(sticky_delta=1.75, lb_weight=0.1, lb_scope="batch", router_z_weight=1e-3),
    # the recipe shipped before it: BlES 1.0 with per-sequence load balancing 0.01 (the model card's (d);
    # scripts/bles_sweep.py's arms start from it)
    "bles": ModelConfig(bles_weight=1.0),
    "tiny": ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                        num_experts=4, top_k=2, expert_hidden=96, wd_rank=32),
    # the CoSMoE paper's wearable-scale shape (19 layers, 8 experts top-2, ~380M total params) with
    # width 448 instead of 432: XNNPACK's int4 kernels need groups of 32, and 432 = 13.5 x 32.
    # Random weights, for speed benchmarks.
    "wearable": ModelConfig(vocab_size=32000, dim=448, n_layers=19, n_heads=8, n_kv_heads=4,
                            max_seq_len=1024, num_experts=8, top_k=2, expert_hidden=1792),
    # a Mixtral-shaped MoE of the size llama.cpp is often measured on (hidden 512,
    # 8 layers, 8 experts top-2, expert hidden 1408, vocab 8192; ~150M params). Random weights.
    "llamacpp-ref": ModelConfig(vocab_size=8192, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, max_seq_len=512,
                                num_experts=8, top_k=2, expert_hidden=1408, tie_embeddings=False),
    # a 1.2B-parameter MoE, the size people run on phones: what an export must handle in bounded memory
    # (hidden 1024, 16 layers, 8 experts top-2 of hidden 2816, vocab 32000). Random weights.
    "moe-1.2b": ModelConfig(vocab_size=32000, dim=1024, n_layers=16, n_heads=16, n_kv_heads=8, max_seq_len=1024,
                            num_experts=8, top_k=2, expert_hidden=2816, tie_embeddings=False),
}
