"""Build one part of an artifact (the backbone, or one expert) for one backend and write its file.

Runs inside worker processes (export is parallel over experts), so each call starts from the
checkpoint path and a fresh copy of the model: quantisation works in place.
"""

import copy
import logging
import os
import warnings
from pathlib import Path

import torch
from torch.export import Dim

from cosmoe_edge.export.programs import HeadProgram, LayerProgram, linears_to_matmul
from cosmoe_edge.export.quantize import count_ops, quantize_linears
from cosmoe_edge.model.checkpoint import load_model

LAYER_MAX_TOKENS = 64  # prefill chunk: the most tokens one backbone call takes
EXPERT_MAX_TOKENS = 32  # ExecuTorch plans activation memory for the maximum: keep it small
LAYER_INPUTS = ["h", "cos", "sin", "k_past", "v_past", "mask"]
LAYER_OUTPUTS = ["h_out", "x", "router_logits", "k", "v"]

_model = {}


def quiet():
    """torchao and executorch log loudly on import and export; a CLI should not."""
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCHINDUCTOR_DISABLE", "1")


def model_copy(ckpt_path: str):
    if ckpt_path not in _model:
        _model[ckpt_path] = load_model(ckpt_path)[0].requires_grad_(False)
    return copy.deepcopy(_model[ckpt_path])


def layer_example(cfg, T: int = 4, P: int = 8):
    KV, hd = cfg.n_kv_heads, cfg.head_dim
    rep = cfg.n_heads // KV
    # k and v must be distinct tensors: export treats one tensor passed twice as one input
    return (torch.randn(T, cfg.dim), torch.randn(T, 1, hd), torch.randn(T, 1, hd), torch.zeros(P, KV, hd),
            torch.zeros(P, KV, hd), torch.zeros(rep * T, P + T))


def layer_dynamic_shapes(cfg):
    """T new tokens (1..LAYER_MAX_TOKENS) after P cached ones (1..max_seq_len-1); the mask is
    (rep*T, P+T), a sum export cannot declare, so its width is left for export to infer."""
    T = Dim("T", min=1, max=LAYER_MAX_TOKENS)
    P = Dim("P", min=1, max=cfg.max_seq_len - 1)
    rep = cfg.n_heads // cfg.n_kv_heads
    return ({0: T}, {0: T}, {0: T}, {0: P}, {0: P}, {0: rep * T, 1: Dim.AUTO})


def token_dim(max_tokens: int):
    return ({0: Dim("T", min=1, max=max_tokens)},)


def backbone_modules(model, scheme: str, group_size: int, backend: str):
    """(name, module, expected MatMulNBits count) for each layer and the head, quantised for `backend`."""
    head_scheme = "fp32" if scheme == "fp32" else "int8"
    parts = []
    for i, block in enumerate(model.layers):
        prog = LayerProgram(block)
        if backend == "executorch":
            n = quantize_linears(prog, scheme, group_size, skip=(prog.router,))
        else:
            n = linears_to_matmul(prog, skip=(prog.router,)) if scheme != "fp32" else 0
        parts.append((f"layer_{i}", prog, n))
    head = HeadProgram(model)
    if backend == "executorch":
        quantize_linears(head, head_scheme, group_size)
    elif head_scheme != "fp32":
        linears_to_matmul(head)
    parts.append(("head", head, 1 if head_scheme != "fp32" else 0))
    return parts


def build_backbone(ckpt_path: str, backend: str, scheme: str, group_size: int, out_dir: str) -> dict:
    quiet()
    torch.set_num_threads(1)
    model = model_copy(ckpt_path)
    cfg = model.cfg
    parts = backbone_modules(model, scheme, group_size, backend)
    out_dir = Path(out_dir)
    head_example = (torch.randn(4, cfg.dim),)
    if backend == "executorch":
        from cosmoe_edge.export.to_executorch import lower

        methods = {name: (mod, head_example if name == "head" else layer_example(cfg),
                          token_dim(LAYER_MAX_TOKENS) if name == "head" else layer_dynamic_shapes(cfg))
                   for name, mod, _ in parts}
        data, report = lower(methods)
        path = out_dir / "executorch" / "backbone.pte"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return {"files": [str(path)], "parts": {name: {"path": str(path), "method": name} for name, _, _ in parts},
                "report": report}

    import onnx

    from cosmoe_edge.export.to_onnx import quantize, to_onnx

    files, part_paths, nbits = [], {}, {}
    for name, mod, expected in parts:
        if name == "head":
            proto = to_onnx(mod, head_example, ["h"], ["logits"], token_dim(LAYER_MAX_TOKENS))
            proto, n = quantize(proto, "int8" if scheme != "fp32" else "fp32", group_size, expected, name)
        else:
            proto = to_onnx(mod, layer_example(cfg), LAYER_INPUTS, LAYER_OUTPUTS, layer_dynamic_shapes(cfg))
            proto, n = quantize(proto, scheme, group_size, expected, name)
        path = out_dir / "onnx" / "backbone" / f"{name}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
        files.append(str(path))
        part_paths[name] = {"path": str(path), "method": "main"}
        nbits[name] = {"matmulnbits": n, "linear_layers": expected, "gemm_fp32": count_ops(proto, "Gemm")}
    return {"files": files, "parts": part_paths, "report": {"matmulnbits": nbits}}


def build_expert(ckpt_path: str, backend: str, scheme: str, group_size: int, out_dir: str, layer: int,
                 expert: int) -> dict:
    quiet()
    torch.set_num_threads(1)
    model = model_copy(ckpt_path)
    module = model.layers[layer].ffn.experts[expert]
    example = (torch.randn(4, model.cfg.dim),)
    name = f"l{layer:02d}_e{expert:02d}"
    n_linear = sum(1 for m in module.modules() if isinstance(m, torch.nn.Linear))
    if backend == "executorch":
        from cosmoe_edge.export.to_executorch import lower

        quantize_linears(module, scheme, group_size)
        data, report = lower({"forward": (module, example, token_dim(EXPERT_MAX_TOKENS))})
        path = Path(out_dir) / "executorch" / "experts" / f"{name}.pte"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return {"layer": layer, "expert": expert, "path": str(path), "planned_bytes": report["planned_bytes"]["forward"],
                "report": report}

    if scheme == "int8":  # the weights form: no program of its own (expert_weights.py)
        from safetensors.numpy import save_file

        from cosmoe_edge.export.expert_weights import expert_tensors

        path = Path(out_dir) / "onnx" / "experts" / f"{name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = expert_tensors(module)
        save_file(tensors, str(path))
        return {"layer": layer, "expert": expert, "path": str(path), "planned_bytes": 0,
                "report": {"matmulnbits": 0, "linear_layers": n_linear, "weights": len(tensors) // 2}}

    import onnx

    from cosmoe_edge.export.to_onnx import quantize, to_onnx

    if scheme != "fp32":
        linears_to_matmul(module)
    proto = to_onnx(module, example, ["x"], ["y"], token_dim(EXPERT_MAX_TOKENS))
    proto, n = quantize(proto, scheme, group_size, n_linear if scheme != "fp32" else 0, name)
    path = Path(out_dir) / "onnx" / "experts" / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return {"layer": layer, "expert": expert, "path": str(path), "planned_bytes": 0,
            "report": {"matmulnbits": n, "linear_layers": n_linear}}
