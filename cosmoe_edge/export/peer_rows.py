"""A PEER layer's pool as the runtime reads it: one file of N records per layer, record i = [u_i | v_i] (the
two rows of expert i bundled, "row-column bundling" as in LLM in a Flash: one read brings both), int8 with one
fp32 scale per row (in a small file the runtime keeps resident), or fp32 for an fp32 artifact. With dim 256
an int8 record is 512 bytes: 8 experts per 4 KiB page, the unit the runtime reads. Beside each pool, the
sha256 of each of its pages (32 bytes per page), so the runtime checks what it reads without reading it all."""

import hashlib
from math import isqrt
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from cosmoe_edge.export.build import write_atomic
from cosmoe_edge.runtime.manifest import file_entry

PAGE_BYTES = 4096


def quantize_rows(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: t ~ q * scale[:, None]."""
    scale = np.abs(t).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(t / scale[:, None]), -127, 127).astype(np.int8), scale


def records(u: np.ndarray, v: np.ndarray, scheme: str) -> tuple[np.ndarray, dict]:
    """(N, record bytes) uint8 and the scales ({} for fp32)."""
    if scheme == "fp32":
        return np.concatenate([u, v], axis=1).astype(np.float32).view(np.uint8), {}
    qu, su = quantize_rows(u)
    qv, sv = quantize_rows(v)
    return np.concatenate([qu, qv], axis=1).view(np.uint8), {"u": su, "v": sv}


def write_peer(source, scheme: str, tmp: Path) -> dict:
    """The manifest's "peer" section; writes peer/layer_{i}.rows (and peer/scales.safetensors) under tmp."""
    cfg = source.cfg
    dtype = "fp32" if scheme == "fp32" else "int8"
    layers, scales = {}, {}
    for i, kind in enumerate(cfg.ffn_kinds):
        if kind != "peer":
            continue
        u, v = (t.numpy() for t in source.peer_tables(i))
        rec, s = records(u, v, scheme)
        scales |= {f"layer_{i}.{name}": a for name, a in s.items()}
        path = tmp / "peer" / f"layer_{i}.rows"
        data = rec.tobytes()
        write_atomic(path, data)
        page = max(1, PAGE_BYTES // rec.shape[1]) * rec.shape[1]
        hashes = tmp / "peer" / f"layer_{i}.pages.sha256"
        write_atomic(hashes, b"".join(hashlib.sha256(data[p:p + page]).digest() for p in range(0, len(data), page)))
        layers[str(i)] = file_entry(tmp, path, rows=rec.shape[0], record_bytes=rec.shape[1],
                                    page_sha256=file_entry(tmp, hashes))
    out = {"dtype": dtype, "page_bytes": PAGE_BYTES, "heads": cfg.peer_heads, "top_k": cfg.peer_topk,
           "sub_keys": isqrt(cfg.peer_experts), "activation": cfg.peer_activation, "layers": layers}
    if scales:
        save_file(scales, str(tmp / "peer" / "scales.safetensors"))
        out["scales"] = file_entry(tmp, tmp / "peer" / "scales.safetensors")
    return out
