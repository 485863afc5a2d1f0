"""Build the parts of an artifact (layer programs, the head, experts) for one backend and write their
files. Runs inside worker processes: each task maps the checkpoint, builds only the parts it was given
(export/source.py), and lowers the first parts of a shape in full and the rest from a template
(export/templates.py)."""

import hashlib
import json
import logging
import os
import pickle
import time
import warnings
from pathlib import Path

import torch
from torch.export import Dim

from cosmoe_edge.export.programs import linears_to_matmul
from cosmoe_edge.export.quantize import count_ops, quantize_linears
from cosmoe_edge.export.source import Source

LAYER_MAX_TOKENS = 64  # prefill chunk: the most tokens one backbone call takes
EXPERT_MAX_TOKENS = 32  # ExecuTorch plans activation memory for the maximum: keep it small
LAYER_INPUTS = ["h", "cos", "sin", "k_past", "v_past", "mask"]
LAYER_OUTPUTS = ["h_out", "x", "router_logits", "k", "v"]
METHOD = {"executorch": "forward", "onnx": "main"}


def quiet():
    """torchao and executorch log loudly on import and export; a CLI should not."""
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCHINDUCTOR_DISABLE", "1")


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


def part_name(kind: str, index: tuple) -> str:
    if kind == "expert":
        return f"l{index[0]:02d}_e{index[1]:02d}"
    return f"layer_{index[0]}" if kind in ("layer", "peer") else "head"


def part_path(backend: str, scheme: str, kind: str, index: tuple) -> str:
    """The part's file, relative to the artifact."""
    name = part_name(kind, index)
    if backend == "executorch":
        return f"executorch/{'experts' if kind == 'expert' else 'backbone'}/{name}.pte"
    if kind == "expert":
        return f"onnx/experts/{name}.{'safetensors' if is_weights_form(backend, scheme, kind) else 'onnx'}"
    return f"onnx/backbone/{name}.onnx"


class Part:
    """One program to build: its module (quantised for the backend), example inputs, dynamic shapes,
    and how many linear layers must become MatMulNBits nodes (ONNX)."""

    def __init__(self, source: Source, backend: str, scheme: str, group_size: int, kind: str, index: tuple):
        cfg = source.cfg
        self.backend, self.kind, self.index = backend, kind, index
        self.name = part_name(kind, index)
        self.scheme = scheme  # the head's own (quantize.choose_head) when kind is "head"
        if kind in ("layer", "peer"):  # "peer": a PEER layer's program (programs.PeerLayerProgram)
            module = source.layer_program(index[0])
            skip = module.unquantised
            self.example, self.shapes = layer_example(cfg), layer_dynamic_shapes(cfg)
            self.io = (LAYER_INPUTS, LAYER_OUTPUTS)
        else:
            module = source.head_program() if kind == "head" else source.expert(*index)
            skip = ()
            self.example = (torch.randn(4, cfg.dim),)
            self.shapes = token_dim(LAYER_MAX_TOKENS if kind == "head" else EXPERT_MAX_TOKENS)
            self.io = (["h"], ["logits"]) if kind == "head" else (["x"], ["y"])
        self.linear_layers = sum(1 for m in module.modules() if isinstance(m, torch.nn.Linear)) - len(skip)
        if backend == "executorch":
            quantize_linears(module, self.scheme, group_size, skip=skip)
        elif self.scheme != "fp32":
            linears_to_matmul(module, skip=skip)
        self.module, self.group_size = module, group_size

    def lower(self) -> tuple[bytes, dict, object]:
        """(file bytes, report, what a template learns from: the .pte bytes, or the traced fp32 graph)."""
        if self.backend == "executorch":
            from cosmoe_edge.export.to_executorch import lower

            data, report = lower({METHOD["executorch"]: (self.module, self.example, self.shapes)})
            return data, report, data
        from cosmoe_edge.export.to_onnx import to_onnx

        traced = to_onnx(self.module, self.example, *self.io, self.shapes)
        data, report = self.quantize(traced)
        return data, report, traced

    def quantize(self, traced) -> tuple[bytes, dict]:
        import onnx

        from cosmoe_edge.export.to_onnx import quantize

        expected = self.linear_layers if self.scheme != "fp32" else 0
        traced = onnx.ModelProto.FromString(traced.SerializeToString())  # the quantiser edits in place
        proto, n = quantize(traced, self.scheme, self.group_size, expected, self.name)
        return proto.SerializeToString(), {"matmulnbits": n, "linear_layers": self.linear_layers,
                                           "gemm_fp32": count_ops(proto, "Gemm")}

    def render(self, template) -> tuple[bytes, dict] | None:
        if self.backend == "executorch":
            data = template.template.render(self.module)
            return None if data is None else (data, template.report)
        traced = template.template.render(self.module)
        return None if traced is None else self.quantize(traced)


class Template:
    """A learned template and the report its (identical) programs share."""

    def __init__(self, template, report: dict):
        self.template, self.report = template, report


def learn(part: Part, seed) -> "Template | None":
    from cosmoe_edge.export.templates import OnnxTemplate, PteTemplate

    kind = PteTemplate if part.backend == "executorch" else OnnxTemplate
    return kind.learn(seed, part.module)


def write_atomic(path: Path, data: bytes):
    """Written beside its place and renamed: a killed export never leaves a truncated file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_file(root: Path, rel: str, data: bytes) -> dict:
    write_atomic(root / rel, data)
    return {"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def finished(root: Path, record: dict) -> dict:
    """Record a written part where --resume finds it, even if this task is killed before it returns."""
    name = record["path"].replace("/", "__")
    write_atomic(root / ".export" / "parts" / f"{name}.json", json.dumps(record).encode())
    return record


def is_weights_form(backend: str, scheme: str, kind: str) -> bool:
    """ONNX int8 experts are their weights only (expert_weights.py): nothing to lower or template."""
    return backend == "onnx" and scheme == "int8" and kind == "expert"


def build_parts(ckpt_path: str, backend: str, scheme: str, group_size: int, out_dir: str, kind: str,
                indices: list[tuple], template_file: str | None = None, learn_template: bool = False) -> dict:
    """Build and write the parts `indices` of one kind (one shape). learn_template: the first part is
    lowered and taught to a template, the second is lowered too and must come out of the template byte
    for byte; only then is the template saved to `template_file` for the other tasks of this shape.
    Otherwise the parts come from the template in `template_file` when there is one, else are lowered."""
    from cosmoe_edge.runtime.metrics import peak_rss_bytes, release_heap

    quiet()
    torch.set_num_threads(1)
    root = Path(out_dir)
    template = None
    if template_file and not learn_template and Path(template_file).is_file():
        template = pickle.loads(Path(template_file).read_bytes())
    records, learned, checked = [], None, None
    with Source(ckpt_path) as source:
        for i, index in enumerate(indices):
            if is_weights_form(backend, scheme, kind):
                records.append(finished(root, weights_form(source, root, index)))
                continue
            t0 = time.perf_counter()
            part = Part(source, backend, scheme, group_size, kind, index)
            built = part.render(template) if template is not None else None
            how = "template"
            if built is None:
                data, report, seed = part.lower()
                built, how = (data, report), "lowered"
                if learn_template and i == 0:
                    found = learn(part, seed)
                    learned = Template(found, report) if found is not None else None
                elif learn_template and i == 1 and learned is not None:
                    rendered = part.render(learned)
                    checked = rendered is not None and rendered[0] == data
            record = write_file(root, part_path(backend, scheme, kind, index), built[0])
            records.append(finished(root, record | {"backend": backend, "kind": kind, "index": list(index),
                                                    "report": built[1], "how": how,
                                                    "seconds": round(time.perf_counter() - t0, 3)}))
            del part
            release_heap()
    out = {"records": records, "peak_rss": peak_rss_bytes()}
    if learn_template:
        out["template"] = bool(learned is not None and checked)
        if out["template"] and template_file:
            write_atomic(Path(template_file), pickle.dumps(learned))
    return out


def weights_form(source: Source, root: Path, index: tuple) -> dict:
    """An ONNX int8 expert in the weights form: its tensors only (expert_weights.py), no program."""
    from safetensors.numpy import save

    from cosmoe_edge.export.expert_weights import expert_tensors

    t0 = time.perf_counter()
    module = source.expert(*index)
    n_linear = sum(1 for m in module.modules() if isinstance(m, torch.nn.Linear))
    tensors = expert_tensors(module)
    record = write_file(root, part_path("onnx", "int8", "expert", index), save(tensors))
    return record | {"backend": "onnx", "kind": "expert", "index": list(index), "how": "weights",
                     "seconds": round(time.perf_counter() - t0, 3),
                     "report": {"matmulnbits": 0, "linear_layers": n_linear, "weights": len(tensors) // 2}}
