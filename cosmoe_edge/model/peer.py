"""PEER, "Mixture of A Million Experts" (X. O. He, arXiv 2407.04153): a feed-forward layer over a pool of N
single-neuron experts e_i(x) = act(u_i . x) v_i. Each of h heads has its own query network and retrieves its
k experts by product keys; the heads share one pool and one set of keys, and their outputs are summed.

For an edge runtime the unit of lazy loading becomes a row (u_i and v_i, a few KB) instead of a whole expert.
"""

from math import isqrt

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


def product_key_topk(q, sub_keys, k: int):
    """The top-k of q . [c_i; c'_j] over all n^2 product keys, found without scoring them all: the top-k of
    each half's sub-key scores, then the top-k of the k^2 sums (every key of the exact top-k is among them:
    a key whose first half is outside its half's top-k has k keys scoring at least as high).
    q (..., d_k); sub_keys (2, n, d_k / 2). Returns scores (..., k) descending and ids (..., k) = i * n + j."""
    n = sub_keys.shape[1]
    q1, q2 = q.chunk(2, dim=-1)
    s1, i1 = (q1 @ sub_keys[0].t()).topk(k, dim=-1)
    s2, i2 = (q2 @ sub_keys[1].t()).topk(k, dim=-1)
    scores, pair = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).flatten(-2).topk(k, dim=-1)
    return scores, i1.gather(-1, pair // k) * n + i2.gather(-1, pair % k)


class PEER(nn.Module):
    """query (Linear dim -> heads * key_dim, BatchNorm'd: the paper's default), product keys shared by the
    heads, and the pool as two tables of N rows: w_in (u_i) and w_out (v_i). Router weights: softmax over
    each head's k retrieved scores. forward returns (output, None): no routing for the MoE losses;
    last_ids (B, T, heads, k) holds the retrieved experts of the last call (usage figures)."""

    def __init__(self, dim: int, num_experts: int, heads: int, top_k: int, key_dim: int,
                 query_norm: bool = True, activation: str = "gelu"):
        super().__init__()
        self.heads, self.top_k, self.key_dim = heads, top_k, key_dim
        n = isqrt(num_experts)
        self.query = nn.Linear(dim, heads * key_dim, bias=False)
        self.query_norm = nn.BatchNorm1d(heads * key_dim) if query_norm else None
        # sub-key scores of order 1 for a normalised query, so the softmax over k starts neither flat nor sharp
        self.sub_keys = nn.Parameter(torch.randn(2, n, key_dim // 2) / (key_dim // 2) ** 0.5)
        self.w_in = nn.Embedding(num_experts, dim)
        self.w_out = nn.Embedding(num_experts, dim)
        self.act = ACTIVATIONS[activation]
        self.last_ids = None

    def retrieve(self, flat):
        """flat (M, dim) -> router weights (M, heads, k) and expert ids (M, heads, k)."""
        q = self.query(flat)
        if self.query_norm is not None:
            q = self.query_norm(q)
        scores, ids = product_key_topk(q.view(-1, self.heads, self.key_dim), self.sub_keys, self.top_k)
        return scores.softmax(-1), ids

    def forward(self, x):
        B, T, D = x.shape
        flat = x.reshape(B * T, D)
        weights, ids = self.retrieve(flat)
        self.last_ids = ids.detach().view(B, T, self.heads, self.top_k)
        ids = ids.flatten(1)  # (M, heads * k): the heads' outputs are summed, so their experts form one bag
        # gather only the retrieved rows of u; v's weighted sum never materialises the rows (embedding_bag)
        a = self.act(torch.einsum("mkd,md->mk", self.w_in(ids), flat)) * weights.flatten(1).to(flat.dtype)
        out = F.embedding_bag(ids, self.w_out.weight, per_sample_weights=a, mode="sum")
        return out.view(B, T, D), None


def usage(ids, num_experts: int):
    """Expert usage figures from retrieved ids (any shape): the share of the pool retrieved at least once and
    the KL divergence (nats) of the retrieval distribution from uniform."""
    counts = torch.bincount(ids.flatten().cpu(), minlength=num_experts).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    return {"used": float((counts > 0).double().mean()), "kl_uniform": float((nz * (nz * num_experts).log()).sum())}
