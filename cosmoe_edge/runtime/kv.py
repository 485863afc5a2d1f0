"""What the runtime feeds a layer program besides the hidden state: RoPE rows, the KV cache it
owns, and the additive attention mask (see export/programs.py LayerProgram for the convention)."""

import numpy as np


def rope_rows(head_dim: int, max_seq_len: int, theta: float):
    """cos, sin of shape (max_seq_len, 1, head_dim), halves repeated (rotate-half layout), computed
    in float64 and rounded to float32 exactly as the model computes them."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(max_seq_len, dtype=np.float64), inv_freq)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    return np.concatenate([cos, cos], -1)[:, None, :], np.concatenate([sin, sin], -1)[:, None, :]


def attention_mask(pos0: int, n_new: int, rep: int) -> np.ndarray:
    """(rep * n_new, P + n_new) with P = max(pos0, 1): the P past columns are visible to every new
    token (the dummy column when pos0 = 0 is not), the new tokens see each other causally.
    Rows: repeat-major, then token."""
    past = max(pos0, 1)
    m = np.full((n_new, past + n_new), -np.inf, dtype=np.float32)
    m[:, :pos0] = 0.0
    m[:, past:] = np.triu(np.full((n_new, n_new), -np.inf, dtype=np.float32), 1)
    return np.tile(m, (rep, 1))


class KVCache:
    """Per layer (max_seq_len, n_kv_heads, head_dim): position-major, so the filled prefix the layer
    program reads is one contiguous block."""

    def __init__(self, n_layers: int, n_kv_heads: int, max_seq_len: int, head_dim: int):
        shape = (max_seq_len, n_kv_heads, head_dim)
        self.k = [np.zeros(shape, np.float32) for _ in range(n_layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(n_layers)]

    def past(self, layer: int, pos0: int):
        n = max(pos0, 1)
        return self.k[layer][:n], self.v[layer][:n]

    def write(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray):
        self.k[layer][pos0:pos0 + len(k)] = k
        self.v[layer][pos0:pos0 + len(v)] = v
