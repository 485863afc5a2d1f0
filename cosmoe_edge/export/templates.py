"""Lower once per shape, then write every other part of that shape by putting its weights into the
lowered program. Every expert of a model (and every layer program) is the same graph with other
weights, and lowering a graph costs seconds (ExecuTorch: 5-16 s per expert of the wearable shape, all
of it graph passes; ONNX: 1.5-3 s of tracing), while its weights take milliseconds to quantise.

- ExecuTorch: XNNPACK stores each constant as named data keyed by the sha256 of its bytes (int4
  weights packed two per byte, group scales in bf16). A PteTemplate learns, from one lowered program,
  where each constant's bytes and keys sit and which parameter (in which form) they come from; a new
  part is the template's bytes with those ranges rewritten.
- ONNX: an OnnxTemplate keeps the traced fp32 graph; a new part replaces its parameter initializers
  and is quantised by the same MatMulNBits quantiser as a traced one.

Both are trusted only after the exporter has checked, on a second part of the shape lowered in full,
that the template writes the very same bytes (build.py); otherwise every part of that shape is lowered.
"""

import hashlib
from dataclasses import dataclass

import torch

KEY_HEX = 64  # a sha256 hex digest ends every constant's key ("scale_" + digest for scales)


def form_bytes(t: torch.Tensor, form: str) -> bytes:
    """A parameter's bytes in one of the forms XNNPACK serialises constants in."""
    from executorch.backends.xnnpack.operators.node_visitor import NodeVisitor

    if form == "qc4w":  # int4 values, two per byte
        return NodeVisitor.convert_to_qc4w(t.qdata.contiguous()).contiguous().numpy().tobytes()
    if form == "int8":
        return t.qdata.contiguous().numpy().tobytes()
    if form == "scale_bf16":
        return t.scale.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    if form == "scale_fp32":
        return t.scale.float().contiguous().numpy().tobytes()
    if form == "fp32":
        return t.detach().float().contiguous().numpy().tobytes()
    if form == "fp32_t":
        return t.detach().float().t().contiguous().numpy().tobytes()
    raise ValueError(form)


def forms_of(t: torch.Tensor) -> tuple[str, ...]:
    if hasattr(t, "qdata"):  # a torchao-quantised weight
        return (("qc4w",) if t.target_dtype == torch.int4 else ("int8",)) + ("scale_bf16", "scale_fp32")
    return ("fp32", "fp32_t") if t.dim() == 2 else ("fp32",)


@dataclass
class Slot:
    offset: int  # where the constant's bytes start in the program
    size: int
    sources: list[tuple[str, str]]  # (parameter, form): more than one when equal constants share a place
    key_prefix: str = ""
    key_offsets: tuple[int, ...] = ()  # named data: every place its key is written (program, delegate table)


@dataclass
class PteTemplate:
    """Constants live in two places in a lowered program: XNNPACK's named data (keyed by sha256), and
    raw fp32 bytes for the small ones (the norms' weights). Equal constants are stored once, so a
    template holds for the parts whose constants are equal where the template's are (checked per part)."""

    data: bytes
    slots: list[Slot]

    @classmethod
    def learn(cls, data: bytes, module: torch.nn.Module) -> "PteTemplate | None":
        """None when the program's constants cannot all be placed (the shape is then lowered part by part)."""
        from executorch.exir._serialize._program import deserialize_pte_binary

        named = deserialize_pte_binary(data).named_data
        if named is None or named.external_data:
            return None
        by_digest = {}
        for name, t in module.state_dict().items():
            for form in forms_of(t):
                by_digest.setdefault(hashlib.sha256(form_bytes(t, form)).hexdigest(), []).append((name, form))
        slots, placed = [], set()
        for key, entry in named.pte_data.items():
            buf = named.buffers[entry.buffer_index]
            sources = by_digest.get(key[-KEY_HEX:])
            if sources is None:
                continue  # not a parameter (the same in every part; the second-part check makes sure)
            offset = unique(data, buf)
            keys = occurrences(data, key.encode())
            if offset is None or not keys:
                return None
            slots.append(Slot(offset, len(buf), sources, key[:-KEY_HEX], tuple(keys)))
            placed |= {name for name, _ in sources}
        raw = {}  # the other parameters, stored as fp32 bytes: equal ones share one place
        for name, t in module.state_dict().items():
            if name not in placed:
                raw.setdefault(form_bytes(t, "fp32"), []).append((name, "fp32"))
        for buf, sources in raw.items():
            offset = unique(data, buf) if len(buf) >= 64 else None
            if offset is None:
                return None
            slots.append(Slot(offset, len(buf), sources))
        return cls(data, slots)

    def render(self, module: torch.nn.Module) -> bytes | None:
        """The program for `module` (same graph, other weights); None when its constants are not equal
        exactly where the template's are (a lowered program stores equal constants once)."""
        state = module.state_dict()
        out = bytearray(self.data)
        seen = set()
        for s in self.slots:
            bufs = {form_bytes(state[name], form) for name, form in s.sources}
            buf = bufs.pop()
            if bufs or len(buf) != s.size or (bool(s.key_offsets), buf) in seen:
                return None
            seen.add((bool(s.key_offsets), buf))
            out[s.offset:s.offset + s.size] = buf
            digest = hashlib.sha256(buf).hexdigest().encode()
            for k in s.key_offsets:
                start = k + len(s.key_prefix)
                out[start:start + KEY_HEX] = digest
        return bytes(out)


def unique(data: bytes, needle: bytes) -> int | None:
    i = data.find(needle)
    return i if i >= 0 and data.find(needle, i + 1) < 0 else None


def occurrences(data: bytes, needle: bytes) -> list[int]:
    found, i = [], data.find(needle)
    while i >= 0:
        found.append(i)
        i = data.find(needle, i + 1)
    return found


@dataclass
class OnnxTemplate:
    graph: bytes  # the traced fp32 ModelProto, before quantisation
    params: list[str]  # its initializers that are the module's parameters

    @classmethod
    def learn(cls, proto, module: torch.nn.Module) -> "OnnxTemplate | None":
        state = module.state_dict()
        params = [i.name for i in proto.graph.initializer if i.name in state]
        return cls(proto.SerializeToString(), params) if params else None

    def render(self, module: torch.nn.Module):
        """The fp32 ModelProto for `module` (to quantise as a traced one would be)."""
        import onnx
        from onnx import numpy_helper

        proto = onnx.ModelProto.FromString(self.graph)
        state = module.state_dict()
        for init in proto.graph.initializer:
            if init.name in self.params:
                want = numpy_helper.to_array(init)
                new = state[init.name].detach().numpy().astype(want.dtype, copy=False)
                if new.shape != want.shape:
                    return None
                init.CopyFrom(numpy_helper.from_array(new, init.name))
        return proto
