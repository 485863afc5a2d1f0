"""Check a written artifact against the eager model, through the edge runtime itself.

fp32: greedy tokens identical to eager for 32 new tokens on 3 prompts, max |logit diff| <= 1e-3.
int8/int4: top-1 agreement with eager fp32 over held-out text, and held-out perplexity against eager
fp32 (goals: within 1% for int8, within 5% for int4).

The eager reference is computed one layer at a time from the mapped checkpoint (all held-out windows
go through layer i before layer i+1 is read), so verifying a model costs one layer of memory, not the
model; only fp32's greedy check builds the whole eager model (it decodes through its KV cache).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from cosmoe_edge.export.source import Source
from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.generate import generate as eager_generate
from cosmoe_edge.model.model import rope_tables
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.generate import Sampler, generate

PROMPTS = ["The list type is", "To read a file, use", "def main():\n    "]
NEW_TOKENS = 32
LOGIT_TOL = 1e-3
PPL_GOAL = {"fp32": 0.001, "int8": 0.01, "int4": 0.05}
WINDOW, WINDOWS = 128, 8


def heldout_windows(tokenizer, meta: dict) -> list[list[int]]:
    """Held-out token windows: the validation text the checkpoint carries, else the corpus's split."""
    text = meta.get("val_text")
    if not text:
        from cosmoe_edge.model.data import heldout_text

        text = heldout_text()
    ids = tokenizer.encode(text).ids
    n = min(WINDOWS, len(ids) // (WINDOW + 1))
    return [ids[i * (WINDOW + 1):(i + 1) * (WINDOW + 1)] for i in range(n)]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@torch.no_grad()
def eager_hidden(source: Source, windows) -> torch.Tensor:
    """The eager fp32 model's last hidden state (before the final norm) on each window's first WINDOW
    tokens, computed layer by layer."""
    cfg = source.cfg
    x = torch.tensor([w[:-1] for w in windows])
    h = F.embedding(x, source.tensor("tok_emb.weight"))
    cos, sin = (t[:x.shape[1]] for t in rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta))
    for i in range(cfg.n_layers):
        h, _ = source.block(i, experts=True)(h, cos, sin)
    return h


@torch.no_grad()
def eager_logits(source: Source, windows) -> list[np.ndarray]:
    """The eager fp32 model's logits on each window (its first WINDOW tokens)."""
    head = source.head_program()
    return [head.lm_head(head.norm(row)).numpy() for row in eager_hidden(source, windows)]


@torch.no_grad()
def head_costs(source: Source, group_size: int, backends: list[str]) -> dict:
    """Held-out perplexity of the model with its LM head fp32, and int4 as each backend quantises and
    runs it (the rest eager fp32): what an int4 head costs in quality, measured before the artifact is
    built. The backends quantise differently (on the shipped model: +0.1% for XNNPACK's int4, +0.8% for
    MatMulNBits'; int8 heads were within 0.05% of fp32 on both), so each gets its own arithmetic:
    torchao's quantised linear (what XNNPACK runs; 18.898 against 18.900 from the lowered program) and a
    one-node MatMulNBits graph run by onnxruntime."""
    from cosmoe_edge.export.quantize import quantize_linears

    windows = heldout_windows(source.tokenizer, source.meta)
    head = source.head_program()
    h = head.norm(eager_hidden(source, windows)).reshape(-1, source.cfg.dim)
    y = np.asarray([w[1:] for w in windows]).reshape(-1)
    out = {"tokens": int(y.size), "fp32": round(nll_ppl(head.lm_head(h).numpy(), y), 4)}
    if "executorch" in backends:
        lin = torch.nn.Linear(h.shape[1], head.lm_head.out_features, bias=False)
        lin.weight = torch.nn.Parameter(head.lm_head.weight.detach().clone(), requires_grad=False)
        quantize_linears(torch.nn.Sequential(lin), "int4", group_size)
        out["executorch"] = round(nll_ppl(lin(h).numpy(), y), 4)
    if "onnx" in backends:
        out["onnx"] = round(nll_ppl(matmulnbits_int4(head.lm_head.weight.numpy(), group_size, h.numpy()), y), 4)
    return out


def matmulnbits_int4(weight: np.ndarray, group_size: int, x: np.ndarray) -> np.ndarray:
    """x @ weight.T with the weight quantised and run as the ONNX export does (MatMulNBits, int4)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from cosmoe_edge.errors import ExportError
    from cosmoe_edge.export.quantize import count_ops, onnx_quantize

    w = numpy_helper.from_array(np.ascontiguousarray(weight.T.astype(np.float32)), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "head",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", weight.shape[1]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", weight.shape[0]])], [w])
    model = onnx_quantize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), 4, group_size)
    if count_ops(model, "MatMulNBits") != 1:
        raise ExportError("the LM head's int4 trial: onnxruntime's quantiser did not take its MatMul",
                          "quantization_incomplete")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def nll_ppl(logits: np.ndarray, y: np.ndarray) -> float:
    return math.exp(-float(log_softmax(logits)[np.arange(len(y)), y].mean()))


def heldout(engine: Engine, eager: list[np.ndarray], windows) -> dict:
    nll_e = nll_a = 0.0
    agree = count = 0
    for w, ref in zip(windows, eager, strict=True):
        x, y = w[:-1], np.asarray(w[1:])
        engine.reset()
        art = engine.forward(x, all_logits=True)
        rows = np.arange(len(y))
        nll_e -= log_softmax(ref)[rows, y].sum()
        nll_a -= log_softmax(art)[rows, y].sum()
        agree += int((ref.argmax(-1) == art.argmax(-1)).sum())
        count += len(y)
    ppl_e, ppl_a = math.exp(nll_e / count), math.exp(nll_a / count)
    return {"tokens": count, "top1_agreement": agree / count, "ppl_eager_fp32": ppl_e, "ppl_artifact": ppl_a,
            "ppl_change": ppl_a / ppl_e - 1}


@torch.no_grad()
def greedy(engine: Engine, model, tokenizer) -> dict:
    match, worst = True, 0.0
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt).ids
        want, want_logits = eager_generate(model, ids, NEW_TOKENS, return_logits=True)
        got, _, got_logits = generate(engine, ids, NEW_TOKENS, Sampler(), keep_logits=True)
        match &= got == want
        n = min(len(got), len(want))
        worst = max(worst, float(np.abs(got_logits[:n] - want_logits[:n].numpy()).max()))
    return {"prompts": len(PROMPTS), "new_tokens": NEW_TOKENS, "greedy_identical": match, "max_logit_diff": worst}


def verify_artifact(artifact, ckpt_path, scheme: str, backends: list[str]) -> dict:
    with Source(ckpt_path) as source:
        tokenizer = source.tokenizer
        windows = heldout_windows(tokenizer, source.meta)
        eager = eager_logits(source, windows)
    model = load_model(ckpt_path)[0] if scheme == "fp32" else None
    out = {}
    for b in backends:
        engine = Engine(artifact, b, verify=False)
        res = {"heldout": heldout(engine, eager, windows)}
        if scheme == "fp32":
            res["greedy"] = greedy(engine, model, tokenizer)
            res["passed"] = res["greedy"]["greedy_identical"] and res["greedy"]["max_logit_diff"] <= LOGIT_TOL
        else:
            res["goal_ppl_change"] = PPL_GOAL[scheme]
            res["passed"] = res["heldout"]["ppl_change"] <= PPL_GOAL[scheme]
        engine.close()
        out[b] = res
    return out
