"""Quantisation schemes, one meaning across both backends:

  fp32  no quantisation
  int8  8-bit weights, per output channel (ExecuTorch) or in blocks of 32 (onnxruntime's MatMulNBits)
  int4  4-bit weights in groups of `group_size` along the input dimension

ExecuTorch: torchao's Int8DynamicActivationIntxWeightConfig (8-bit dynamic activations), which
XNNPACK runs as its qd8 kernels. ONNX: onnxruntime's MatMulNBits (bits 4 or 8, accuracy level 4 =
int8 activations, the same arithmetic). Routers stay fp32 (a flipped top-k costs more than the
bytes saved). The embedding table is int8 rows for int8 and int4. The LM head is int8 for int8; for
int4 it is int4 when, on every backend built, that costs at most HEAD_INT4_TOLERANCE of held-out
perplexity over the fp32 head (`choose_head`, measured with the real head programs at export), else int8:
the head is read whole at every token, so its bytes are decode time.
"""

import numpy as np
import torch
from torch import nn

from cosmoe_edge.errors import ExportError

SCHEMES = ("fp32", "int8", "int4")
HEAD_CHOICES = ("auto", "int8", "int4")
HEAD_INT4_TOLERANCE = 0.005  # relative perplexity an int4 head may add over the fp32 head
HEAD_FORMS = {"fp32": "fp32", "int8": "int8-per-channel", "int4": "int4-per-group"}


def choose_head(scheme: str, requested: str, costs: dict | None) -> str:
    """The LM head's scheme: the artifact's own for fp32 and int8; for int4 the one requested, or with
    "auto" int4 when `costs` (verify.head_costs) show every backend's int4 head within
    HEAD_INT4_TOLERANCE of the fp32 head's perplexity."""
    if scheme != "int4":
        if requested != "auto":
            raise ExportError(f"--head-quant applies to --quant int4 only (this export's head is {scheme})",
                              "bad_head_quant")
        return scheme
    if requested != "auto":
        return requested
    trials = [v for k, v in costs.items() if k in ("executorch", "onnx")]
    return "int4" if all(v <= costs["fp32"] * (1 + HEAD_INT4_TOLERANCE) for v in trials) else "int8"


def check_group_size(cfg: dict, scheme: str, group_size: int, backends: list[str]):
    """int4 groups run along each linear layer's input dimension: the group must divide them all."""
    if scheme != "int4":
        return
    if group_size < 16 or group_size & (group_size - 1):
        raise ExportError(f"--group-size must be a power of two, at least 16 (got {group_size})", "bad_group_size")
    if "executorch" in backends and group_size % 32:
        raise ExportError(f"XNNPACK's int4 kernels need groups that are a multiple of 32 (got {group_size}); "
                          "use --backend onnx for smaller groups", "bad_group_size")
    dims = {"dim": cfg["dim"], "expert_hidden": cfg["expert_hidden"]}
    if cfg["expert_kind"] == "wd":
        dims["wd_rank"] = cfg["wd_rank"]
    if cfg["shared_expert_hidden"]:
        dims["shared_expert_hidden"] = cfg["shared_expert_hidden"]
    bad = {k: v for k, v in dims.items() if v % group_size}
    if bad:
        raise ExportError(f"group size {group_size} does not divide " + ", ".join(f"{k} ({v})" for k, v in bad.items()),
                          "bad_group_size")


def torchao_config(scheme: str, group_size: int):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "int4":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    if scheme == "int8":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    return None


def quantize_linears(module: nn.Module, scheme: str, group_size: int, skip: tuple[nn.Module, ...] = ()) -> int:
    """torchao-quantise every nn.Linear under `module` in place, except `skip`. Returns the count."""
    config = torchao_config(scheme, group_size)
    if config is None:
        return 0
    from torchao.quantization import quantize_

    chosen = [m for m in module.modules() if isinstance(m, nn.Linear) and not any(m is s for s in skip)]
    quantize_(module, config, filter_fn=lambda m, fqn: any(m is c for c in chosen))
    return len(chosen)


def quantize_embedding(weight: torch.Tensor, scheme: str) -> dict[str, np.ndarray]:
    """The embedding table as the runtime reads it: fp32 rows, or int8 rows with one fp32 scale each
    (symmetric), dequantised one looked-up row at a time."""
    w = weight.detach().float()
    if scheme == "fp32":
        return {"weight": w.numpy()}
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return {"weight": q.numpy(), "scale": scale.numpy().astype(np.float32)}


def onnx_quantize(model, bits: int, group_size: int):
    """MatMulNBits weight-only quantisation of every MatMul with a constant weight (the exporter's
    Gemm nodes, i.e. the routers, are left in fp32 on purpose)."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    # 8-bit MatMulNBits is block-wise only (no per-channel in the QOperator format): blocks of 32
    block = group_size if bits == 4 else 32
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True, accuracy_level=4)
    q.process()
    return q.model.model


def count_ops(model, op_type: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op_type)
