"""The programs an artifact holds, written so torch.export traces them and XNNPACK takes each one
whole (one delegate call, no portable kernels on the per-token path):

- LayerProgram: one layer up to its router (norm, attention over the runtime's KV cache, norm,
  shared expert, router logits); PeerLayerProgram: the same up to a PEER layer's sub-key scores.
- the routed expert: the model's own SwiGLU module, factors kept apart for `wd` experts.
- HeadProgram: final norm and LM head.

Rules that keep XNNPACK's partitioner happy, each found by counting delegated ops:
2-D/3-D tensors only (4-D batched matmuls with a dynamic dim crash XNNPACK 1.5.1), views whose
only dynamic size is -1, RoPE's rotate-half as a fixed fp32 (head_dim x head_dim) matmul instead of slicing,
the RMSNorm mean as a 4-D average, and no masks or indices built in the graph: the runtime passes
cos/sin rows and an additive mask.
"""

import math

import torch
import torch.nn as nn

from cosmoe_edge.model.model import MoE, RMSNorm, shared_output
from cosmoe_edge.model.peer import PEER


def rms_norm(x, norm: RMSNorm):
    """RMSNorm of (T, D) rows; XNNPACK lowers mean only over the two inner dims of a 4-D tensor."""
    ms = x.pow(2).view(1, -1, x.shape[-1], 1).mean(dim=(2, 3), keepdim=True).view(-1, 1)
    return x * torch.rsqrt(ms + norm.eps) * norm.weight


def rotate_half(head_dim: int) -> nn.Linear:
    """The fp32 linear map [x1, x2] -> [-x2, x1] on one head's vector: exact (one +-1 term per output,
    the rest zeros). q * cos + rotate_half(q) * sin is then RoPE with no slicing of the activations, for
    head_dim^2 multiply-adds per head instead of a second copy of the q and k projections (their
    weights were 40% of a layer's bytes)."""
    half = head_dim // 2
    w = torch.zeros(head_dim, head_dim)
    w[torch.arange(half), torch.arange(half) + half] = -1.0
    w[torch.arange(half) + half, torch.arange(half)] = 1.0
    out = nn.Linear(head_dim, head_dim, bias=False)
    out.weight = nn.Parameter(w, requires_grad=False)
    return out


class LayerProgram(nn.Module):
    """Inputs: h (T, D) residual stream; cos, sin (T, 1, head_dim); k_past, v_past (P, n_kv_heads,
    head_dim), the first P positions of the runtime's cache (P = max(pos0, 1): when pos0 = 0 one
    masked dummy slot, since XNNPACK takes no empty tensors); mask (rep*T, P+T) additive, 0 where a
    query row may attend and -inf elsewhere (rows ordered group-repeat-major, then token).
    Outputs: h (T, D) after attention (+ shared expert); x (T, D) the routed experts' input;
    router logits (T, E); k, v (T, n_kv_heads, head_dim), the new entries the runtime stores.
    Passing only the filled prefix of the cache keeps the per-token cost proportional to the
    context actually used (measured: 100 -> 48 us per onnxruntime call at position 20, 108 -> 31 us
    for ExecuTorch, against passing all max_seq_len slots with a mask)."""

    def __init__(self, block):
        super().__init__()
        self.init_attention(block)
        moe: MoE = block.ffn
        self.router, self.shared, self.shared_gate = moe.router, moe.shared, moe.shared_gate

    def init_attention(self, block):
        a = block.attn
        self.attn_norm, self.ffn_norm = block.attn_norm, block.ffn_norm
        self.wq, self.wk, self.wv, self.wo = a.wq, a.wk, a.wv, a.wo
        self.rot = rotate_half(a.head_dim)  # stays fp32: not quantised (see `unquantised`)
        self.heads, self.kv_heads, self.head_dim = a.n_heads, a.n_kv_heads, a.head_dim

    def attention(self, h, cos, sin, k_past, v_past, mask):
        """h after attention, and the new k, v."""
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        rep = H // KV
        x = rms_norm(h, self.attn_norm)
        q, k = self.wq(x), self.wk(x)
        q = q.view(-1, H, hd) * cos + self.rot(q.view(-1, hd)).view(-1, H, hd) * sin
        k = k.view(-1, KV, hd) * cos + self.rot(k.view(-1, hd)).view(-1, KV, hd) * sin
        v = self.wv(x).view(-1, KV, hd)
        # grouped-query attention as one batched matmul per kv head: (KV, rep*T, hd) queries
        q = q.view(-1, KV, rep, hd).permute(1, 2, 0, 3).contiguous().view(KV, -1, hd)
        keys = torch.cat([k_past, k], dim=0).permute(1, 0, 2)
        values = torch.cat([v_past, v], dim=0).permute(1, 0, 2)
        p = torch.softmax(torch.bmm(q, keys.transpose(1, 2)) * (1.0 / math.sqrt(hd)) + mask, dim=-1)
        y = torch.bmm(p, values).view(KV, rep, -1, hd).permute(2, 0, 1, 3).contiguous().view(-1, H * hd)
        return h + self.wo(y), k, v

    def forward(self, h, cos, sin, k_past, v_past, mask):
        h, k, v = self.attention(h, cos, sin, k_past, v_past, mask)
        x = rms_norm(h, self.ffn_norm)
        if self.shared is not None:
            h = h + shared_output(self.shared, self.shared_gate, x)
        return h, x, self.router(x), k, v

    @property
    def unquantised(self) -> tuple[nn.Module, ...]:
        """Linears that stay fp32: the router and the shared expert's gate (decisions and scales are
        sensitive; one row each) and rotate-half (exact)."""
        routers = tuple(m for m in self.router.modules() if isinstance(m, nn.Linear))  # a CMoE router has two
        return routers + (self.rot,) + ((self.shared_gate,) if self.shared_gate is not None else ())


def folded_query(peer: PEER) -> nn.Linear:
    """The query Linear with its BatchNorm (eval: running statistics) folded in: W' = s W, b = beta - s mean,
    s = gamma / sqrt(var + eps)."""
    w = peer.query.weight.detach()
    out = nn.Linear(w.shape[1], w.shape[0], bias=True)
    bn = peer.query_norm
    if bn is None:
        scale, bias = torch.ones(w.shape[0]), torch.zeros(w.shape[0])
    else:
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias.detach() - bn.running_mean * scale
    out.weight = nn.Parameter(w * scale[:, None], requires_grad=False)
    out.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return out


class PeerLayerProgram(LayerProgram):
    """A layer whose FFN is PEER: attention as LayerProgram, then in place of router logits the sub-key scores
    (T, heads * 2 * n), ordered (head, half, sub-key): the BN-folded query's halves against the two sets of n
    sub-keys. The runtime does the rest (runtime/rows.py): top-k per half, top-k of the k^2 sums, softmax,
    and the retrieved rows of the pool, read from flash."""

    def __init__(self, block):
        nn.Module.__init__(self)
        self.init_attention(block)
        peer: PEER = block.ffn
        self.query = folded_query(peer)
        self.peer_heads, self.key_dim = peer.heads, peer.key_dim
        self.register_buffer("sub_keys_t", peer.sub_keys.detach().transpose(1, 2).contiguous())  # (2, dk/2, n)

    def forward(self, h, cos, sin, k_past, v_past, mask):
        h, k, v = self.attention(h, cos, sin, k_past, v_past, mask)
        x = rms_norm(h, self.ffn_norm)
        half = self.key_dim // 2
        q = self.query(x).view(-1, 2, half).permute(1, 0, 2)  # (2, T * heads, dk/2): one batch per half
        scores = torch.bmm(q, self.sub_keys_t)  # (2, T * heads, n)
        n = self.sub_keys_t.shape[2]
        return h, x, scores.permute(1, 0, 2).contiguous().view(-1, self.peer_heads * 2 * n), k, v

    @property
    def unquantised(self) -> tuple[nn.Module, ...]:
        """The query stays fp32, as a router does: it decides which rows are read."""
        return (self.query, self.rot)


class HeadProgram(nn.Module):
    """Final norm and LM head: h (T, D) -> logits (T, V). Built from the two weights (a tied head gets
    its own copy of the embedding matrix, so it can be quantised as a linear layer)."""

    def __init__(self, norm_weight: torch.Tensor, eps: float, head_weight: torch.Tensor):
        super().__init__()
        self.norm = RMSNorm(norm_weight.shape[0], eps)
        self.norm.weight = nn.Parameter(norm_weight, requires_grad=False)
        self.lm_head = nn.Linear(head_weight.shape[1], head_weight.shape[0], bias=False)
        self.lm_head.weight = nn.Parameter(head_weight, requires_grad=False)

    def forward(self, h):
        return self.lm_head(rms_norm(h, self.norm))


class MatMul(nn.Module):
    """x @ W^T (+ b) with W^T stored as a constant (in, out) matrix: the form onnxruntime's MatMulNBits
    quantiser recognises (it skips the Gemm the ONNX exporter makes of nn.Linear); a bias stays an Add."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


def linears_to_matmul(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> int:
    """Replace every nn.Linear under `module` (in place) by MatMul, except those in `skip`.
    Returns how many were replaced: the count of MatMulNBits nodes to expect after quantising."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and not any(child is s for s in skip):
            setattr(module, name, MatMul(child))
            n += 1
        else:
            n += linears_to_matmul(child, skip)
    return n
