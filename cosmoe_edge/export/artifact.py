"""Write a whole artifact: shared files, each backend's backbone and experts (in parallel worker
processes), the manifest, then verification through the edge runtime. Everything goes into a
temporary folder beside `out`, renamed into place only when complete."""

import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from safetensors.numpy import save_file

from cosmoe_edge.errors import EdgeError, ExportError
from cosmoe_edge.export import build
from cosmoe_edge.export.quantize import check_group_size, quantize_embedding
from cosmoe_edge.model.checkpoint import load_model
from cosmoe_edge.model.tokenizer import eos_id
from cosmoe_edge.runtime.manifest import FORMAT_VERSION, MANIFEST, file_entry

# Everything a third party needs to write a runtime from the manifest alone (an independent decoder
# written from it reproduced edge-run's greedy tokens exactly).
CALLING_CONVENTION = {
    "embedding": "rows of embedding.safetensors 'weight' (int8 rows times 'scale' when present) for the token ids",
    "rope": "for position p and i = 0..head_dim/2-1: angle = p * rope_theta^(-2i/head_dim), in float64; the row of "
            "cos (and of sin) is [cos(angles), cos(angles)], halves repeated (rotate-half layout), rounded to float32",
    "layer": {"inputs": build.LAYER_INPUTS, "outputs": build.LAYER_OUTPUTS,
              "doc": "T new tokens at positions pos0..pos0+T-1. h (T,D); cos, sin (T,1,head_dim) rows of the "
                     "RoPE table ('rope') at those positions; k_past, v_past (P,n_kv_heads,head_dim) float32, "
                     "the first P = max(pos0,1) rows of the runtime's cache (one dummy row when pos0 = 0); "
                     "mask (rep*T, P+T) additive, rep = n_heads/n_kv_heads: row r*T+t allows past columns < pos0 "
                     "and new columns <= t, -inf elsewhere. Outputs: h_out, h after attention (+ the shared expert), "
                     "to which the routed experts add; x the experts' input; router_logits (T,E); k, v "
                     "(T,n_kv_heads,head_dim) to store at rows pos0..pos0+T-1."},
    "router": "p = softmax(router_logits) in float32; the top_k experts by descending p, ties to the lower expert id "
              "(a stable sort); their weights p renormalised to sum 1 over the k",
    "expert": {"inputs": ["x"], "outputs": ["y"],
               "doc": "x (T,D) rows routed to this expert, at most expert_max_tokens per call; the layer's result "
                      "is h_out + sum over the token's k experts of weight * y"},
    "head": {"inputs": ["h"], "outputs": ["logits"], "doc": "h (T,D) -> logits (T,vocab)"},
}


def package_versions() -> dict:
    return {p: version(p) for p in ("cosmoe-edge", "torch", "executorch", "torchao", "onnx", "onnxruntime")}


def write_shared(model, tokenizer, ckpt: dict, scheme: str, tmp: Path) -> dict:
    tok_path = tmp / "tokenizer.json"
    tok_path.write_text(ckpt["tokenizer"])
    emb = quantize_embedding(model.tok_emb.weight, scheme)
    save_file(emb, str(tmp / "embedding.safetensors"))
    routers = {f"layer_{i}": layer.ffn.router.weight.detach().float().numpy() for i, layer in enumerate(model.layers)}
    save_file(routers, str(tmp / "routers.safetensors"))
    return {
        "tokenizer": file_entry(tmp, tok_path, eos_id=eos_id(tokenizer)),
        "embedding": file_entry(tmp, tmp / "embedding.safetensors", scheme="fp32" if scheme == "fp32" else "int8-per-row"),
        "routers": file_entry(tmp, tmp / "routers.safetensors",
                              doc="fp32 router weights (E,D) per layer, for the runtime's prefetch guess"),
    }


def export_artifact(ckpt_path: Path, out: Path, scheme: str, group_size: int, backends: list[str], jobs: int,
                    verify: bool, progress=None) -> dict:
    """Returns the manifest it wrote. `progress(advance_by, description, total)` is called as parts finish."""
    t0 = time.perf_counter()
    model, tokenizer, ckpt = load_model(ckpt_path)
    cfg = model.cfg
    if cfg.ffn != "moe":
        raise ExportError("edge-export needs an MoE model; this checkpoint is the dense baseline", "not_moe")
    check_group_size(cfg.to_dict(), scheme, group_size, backends)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        manifest = {"format_version": FORMAT_VERSION, "exporter": package_versions(),
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "source": {"checkpoint": Path(ckpt_path).name, "meta": {k: ckpt["meta"].get(k) for k in
                               ("val_ppl", "switch_rate_mean", "tokens_seen", "corpus")}},
                    "model": cfg.to_dict() | {"head_dim": cfg.head_dim},
                    "quant": {"scheme": scheme, "group_size": group_size if scheme == "int4" else None,
                              "embedding": "fp32" if scheme == "fp32" else "int8-per-row",
                              "head": "fp32" if scheme == "fp32" else "int8-per-channel", "routers": "fp32"},
                    "layer_max_tokens": build.LAYER_MAX_TOKENS, "expert_max_tokens": build.EXPERT_MAX_TOKENS,
                    "calling_convention": CALLING_CONVENTION}
        manifest |= write_shared(model, tokenizer, ckpt, scheme, tmp)
        manifest["backends"] = build_backends(ckpt_path, cfg, backends, scheme, group_size, jobs, tmp, progress)
        if "onnx" in backends and scheme == "int8":
            manifest["backends"]["onnx"] |= write_expert_graphs(model, tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if progress:
            progress(0, "measuring expert memory", None)
        charge_measured_footprint(tmp, manifest)
        manifest["export_seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if verify:
            from cosmoe_edge.export.verify import verify_artifact

            if progress:
                progress(0, "verifying", None)
            manifest["verification"] = verify_artifact(tmp, model, tokenizer, ckpt, scheme, backends)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        ordinary_permissions(tmp)
        replace_dir(tmp, out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_expert_graphs(model, tmp: Path) -> dict:
    """The weights form's two graphs, shared by every expert (all have one shape): the slot graph takes
    an expert's weights as inputs; the const graph holds them as initializers the runtime supplies."""
    import onnx

    from cosmoe_edge.export.expert_weights import expert_graph

    expert = model.layers[0].ffn.experts[0]
    graphs = {}
    for kind in ("slot", "const"):
        path = tmp / "onnx" / "experts" / f"{kind}.onnx"
        onnx.save(expert_graph(expert, model.cfg.dim, constant=kind == "const"), str(path))
        graphs[kind] = file_entry(tmp, path)
    return {"expert_form": "weights", "expert_graphs": graphs}


def charge_measured_footprint(tmp: Path, manifest: dict):
    """Each expert's resident_bytes becomes what it measurably costs in RSS once loaded (file bytes
    times the backend's measured factor, at least file plus planned memory), so that a memory budget
    bounds the process's RSS and not only file sizes. Measured in a fresh process per backend."""
    for b, section in manifest["backends"].items():
        r = subprocess.run([sys.executable, "-m", "cosmoe_edge.runtime.footprint", str(tmp), b], capture_output=True,
                           text=True)
        try:
            fp = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            last = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
            raise ExportError(f"measuring the {b} experts' memory failed: {last[:200]}", "footprint_failed") from None
        section["footprint"] = fp
        for e in section["experts"]:
            e["resident_bytes"] = max(e["resident_bytes"], math.ceil(e["bytes"] * fp["rss_per_file_byte"]))
            if "promoted_rss_per_file_byte" in fp:  # the weights form: loaded, then at full speed
                e["loaded_bytes"] = e["resident_bytes"]
                e["resident_bytes"] = max(e["loaded_bytes"], math.ceil(e["bytes"] * fp["promoted_rss_per_file_byte"]))
        if "promote_after" in fp:
            section["promote_after"] = fp["promote_after"]


def ordinary_permissions(root: Path):
    """mkdtemp makes the folder 0700 and safetensors writes 0600; an artifact is ordinary files to copy
    and push to a phone, so give it the permissions the user's umask gives new files."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def replace_dir(tmp: Path, out: Path):
    """Rename tmp to out; an old out (allowed with --force) is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{int(time.time())}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_backends(ckpt_path, cfg, backends, scheme, group_size, jobs, tmp: Path, progress) -> dict:
    tasks = []
    for b in backends:
        tasks.append((build.build_backbone, (str(ckpt_path), b, scheme, group_size, str(tmp))))
        tasks += [(build.build_expert, (str(ckpt_path), b, scheme, group_size, str(tmp), layer, e))
                  for layer in range(cfg.n_layers) for e in range(cfg.num_experts)]
    if progress:
        progress(0, "exporting programs", len(tasks))
    results = {b: {"backbone": None, "experts": []} for b in backends}
    # spawn: forked children of a process that has run torch can deadlock in its thread pools
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx, initializer=ignore_sigint)
    try:
        futures = {pool.submit(fn, *args): args for fn, args in tasks}
        for fut in as_completed(futures):
            b = futures[fut][1]
            try:
                res = fut.result()
            except (EdgeError, KeyboardInterrupt):
                raise
            except Exception as e:  # torch.export or a lowering refused this part: say which, in one line
                what = "backbone" if len(futures[fut]) == 5 else f"expert {futures[fut][6]} of layer {futures[fut][5]}"
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise ExportError(f"building the {b} {what} failed: {type(e).__name__}: {first}", "build_failed") from e
            if "files" in res:
                results[b]["backbone"] = res
            else:
                results[b]["experts"].append(res)
            if progress:
                progress(1, "exporting programs", None)
    except BaseException:
        # Ctrl-C or a failed part: stop the workers now rather than wait for their current programs
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return {b: backend_entry(b, results[b], tmp) for b in backends}


def ignore_sigint():
    """Workers leave Ctrl-C to the parent, which stops them and removes the partial artifact."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def backend_entry(backend: str, res: dict, tmp: Path) -> dict:
    bb = res["backbone"]
    rel = lambda p: Path(p).relative_to(tmp).as_posix()  # noqa: E731
    experts = []
    for e in sorted(res["experts"], key=lambda e: (e["layer"], e["expert"])):
        entry = file_entry(tmp, Path(e["path"]), layer=e["layer"], expert=e["expert"])
        entry["resident_bytes"] = entry["bytes"] + e["planned_bytes"]
        experts.append(entry)
    section = {
        "backbone": {"files": [file_entry(tmp, Path(f)) for f in bb["files"]],
                     "parts": {name: {"path": rel(p["path"]), "method": p["method"]} for name, p in bb["parts"].items()}},
        "experts": experts,
    }
    if backend == "executorch":
        reports = [bb["report"]] + [e["report"] for e in res["experts"]]
        portable = {}
        for r in reports:
            for op, n in r["portable_ops"].items():
                portable[op] = portable.get(op, 0) + n
        section["delegation"] = {
            "xnnpack_ops": sum(r["delegated_ops"] for r in reports), "portable_ops": portable,
            "backbone_delegate_calls": bb["report"]["delegate_calls"],
            "expert_delegate_calls": max(e["report"]["delegate_calls"]["forward"] for e in res["experts"]),
            "backbone_planned_bytes": bb["report"]["planned_bytes"]}
    else:
        per_expert = [e["report"] for e in res["experts"]]
        section["expert_form"] = "program"  # int8 replaces it with the weights form (write_expert_graphs)
        section["matmulnbits"] = {"backbone": bb["report"]["matmulnbits"],
                                  "experts_ok": all(r["matmulnbits"] == r["linear_layers"] for r in per_expert)
                                  if per_expert and per_expert[0]["matmulnbits"] else None,
                                  "per_expert": per_expert[0]["matmulnbits"] if per_expert else 0}
    return section
