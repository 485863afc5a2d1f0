"""Write a whole artifact: shared files, each backend's backbone and experts (in parallel worker
processes, export/schedule.py), the manifest, then verification through the edge runtime. Everything
goes into a work folder beside `out`, renamed into place only when complete."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from safetensors.numpy import save_file

from cosmoe_edge.errors import ExportError
from cosmoe_edge.export import build
from cosmoe_edge.export.peer_rows import write_peer
from cosmoe_edge.export.quantize import HEAD_FORMS, HEAD_INT4_TOLERANCE, check_group_size, choose_head, quantize_embedding
from cosmoe_edge.export.schedule import Workdir, build_backends, checkpoint_identity
from cosmoe_edge.export.source import Source
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
              "(a stable sort); their weights p renormalised to sum 1 over the k, or, when model.router_renorm is "
              "false, p as it is (absent: true). With the manifest's routing.kind 'cmoe' (edge-carve): router_logits are "
              "CMoE scores; the top_k of p + routing.selection_bias[layer], weighted 1 + routing.weight_scale[layer] * p",
    "sticky": "when model.sticky_delta > 0: each token's top_k is taken of softmax(router_logits + sticky_delta * m), "
              "m = 1 for the experts the previous token of the sequence selected in that layer (0 for the first "
              "token), ties as 'router'; the weights are still p of the unbiased router_logits",
    "compressed_experts": "when the manifest has compressed_experts (model.k_main > 0): of a token's top_k experts by "
                          "rank, the first k_main run and the others stand in: theta = sum over the stand-ins of "
                          "their p renormalised over the stand-ins times their vector; the experts that run get "
                          "x * theta as input, and their weights are p renormalised over them (or p as it is when "
                          "router_renorm is false)",
    "expert": {"inputs": ["x"], "outputs": ["y"],
               "doc": "x (T,D) rows routed to this expert, at most expert_max_tokens per call; the layer's result "
                      "is h_out + sum over the token's k experts of weight * y"},
    "head": {"inputs": ["h"], "outputs": ["logits"], "doc": "h (T,D) -> logits (T,vocab)"},
    "peer": "a layer whose model.ffn kind is 'peer' (the manifest's peer section) has no experts and no router: its "
            "router_logits output is the sub-key scores (T, heads*2*n), ordered head, half, sub-key (n = peer.sub_keys). "
            "Per token and head: the top_k sub-keys of each half (scores s1_a, s2_b, ids a, b), then the top_k of the "
            "top_k^2 sums s1_a + s2_b, expert id a*n + b; weights softmax over those top_k sums. Expert i is record i of "
            "peer.layers[layer] (record_bytes each: u_i then v_i, dim values each, int8 times peer/scales.safetensors "
            "'layer_{l}.u'[i] and '.v'[i], or fp32); the layer's result is h_out + sum over heads and their top_k of "
            "weight * act(u_i . x) * v_i, act peer.activation (gelu: the exact, erf form). A layer's page_sha256 file holds "
            "the sha256 (32 bytes) of each page_bytes-long page of its rows file (records per page: page_bytes // "
            "record_bytes), to check pages as they are read",
}


def package_versions() -> dict:
    return {p: version(p) for p in ("cosmoe-edge", "torch", "executorch", "torchao", "onnx", "onnxruntime")}


def write_shared(source, scheme: str, tmp: Path) -> dict:
    tok_path = tmp / "tokenizer.json"
    tok_path.write_text(source.tokenizer_json)
    emb = quantize_embedding(source.tensor("tok_emb.weight"), scheme)
    save_file(emb, str(tmp / "embedding.safetensors"))
    del emb
    out = {"tokenizer": file_entry(tmp, tok_path, eos_id=eos_id(source.tokenizer, source.meta)),
           "embedding": file_entry(tmp, tmp / "embedding.safetensors",
                                   scheme="fp32" if scheme == "fp32" else "int8-per-row")}
    if source.meta.get("val_text"):  # what edge-eval scores without a path: text the model never trained on
        (tmp / "heldout.txt").write_text(source.meta["val_text"])
        out["heldout_text"] = file_entry(tmp, tmp / "heldout.txt",
                                         doc="held-out text (the model's validation sample) for edge-eval")
    if "peer" in source.cfg.ffn_kinds:
        out["peer"] = write_peer(source, scheme, tmp)
    L = [i for i, kind in enumerate(source.cfg.ffn_kinds) if kind == "moe"]
    if source.cfg.k_main:  # compressed experts: tiny, always resident, read by the runtime itself
        vectors = {f"layer_{i}": source.tensor(f"layers.{i}.ffn.compressed").float().numpy() for i in L}
        save_file(vectors, str(tmp / "compressed.safetensors"))
        out["compressed_experts"] = file_entry(
            tmp, tmp / "compressed.safetensors", k_main=source.cfg.k_main,
            doc="fp32 compressed-expert vectors (E,D) per layer: see calling_convention.compressed_experts")
    if source.cfg.router_kind == "cmoe":  # the routing's own vectors; no linear router to guess ahead with
        vec = lambda i, name: source.tensor(f"layers.{i}.ffn.router.{name}").tolist()  # noqa: E731
        return out | {"routing": {"kind": "cmoe", "selection_bias": [vec(i, "selection_bias") for i in L],
                                  "weight_scale": [vec(i, "weight_scale") for i in L]}}
    routers = {f"layer_{i}": source.tensor(f"layers.{i}.ffn.router.weight").numpy() for i in L}
    save_file(routers, str(tmp / "routers.safetensors"))
    return out | {"routers": file_entry(tmp, tmp / "routers.safetensors",
                                        doc="fp32 router weights (E,D) per layer, for the runtime's prefetch guess")}


def export_artifact(ckpt_path: Path, out: Path, scheme: str, group_size: int, backends: list[str], jobs: int,
                    verify: bool, progress=None, resume: bool = False, head_quant: str = "auto") -> dict:
    """Returns the manifest it wrote. `progress(what, advance, total)` is called as parts finish (what: a
    backend's name, or a stage such as "verifying"). The work happens in `.{out}.partial` beside `out`:
    interrupted, it is kept, and `resume` continues it without redoing the parts it finished."""
    t0 = time.perf_counter()
    source = Source(ckpt_path)
    cfg = source.cfg
    if "dense" in cfg.ffn_kinds:
        raise ExportError(f"edge-export needs MoE or PEER layers (ffn 'moe' or 'peer'); this checkpoint's ffn is "
                          f"{cfg.ffn!r} (a dense layer has nothing to load lazily)", "not_moe")
    if "peer" in cfg.ffn_kinds and (cfg.k_main or cfg.router_kind == "cmoe"):
        raise ExportError("edge-export does not take PEER layers beside compressed experts or a CMoE router",
                          "not_moe")
    check_group_size(cfg.to_dict(), scheme, group_size, backends)
    out.parent.mkdir(parents=True, exist_ok=True)
    head_costs = None
    if scheme == "int4" and head_quant == "auto":
        if progress:
            progress("measuring the LM head's int4 cost", 0, None)
        from cosmoe_edge.export.verify import head_costs as measure_head_costs

        head_costs = measure_head_costs(source, group_size, backends)
    head_scheme = choose_head(scheme, head_quant, head_costs)
    options = {"checkpoint": checkpoint_identity(ckpt_path), "scheme": scheme, "group_size": group_size,
               "head": head_scheme, "backends": backends, "exporter": package_versions()}
    work = Workdir(out, options, resume)
    tmp = work.root
    try:
        manifest = {"format_version": FORMAT_VERSION, "exporter": package_versions(),
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "source": {"checkpoint": Path(ckpt_path).name, "meta": {k: source.meta.get(k) for k in
                               ("val_ppl", "switch_rate_mean", "tokens_seen", "corpus")}},
                    "model": cfg.to_dict() | {"head_dim": cfg.head_dim},
                    "quant": {"scheme": scheme, "group_size": group_size if scheme == "int4" else None,
                              "embedding": "fp32" if scheme == "fp32" else "int8-per-row",
                              "head": HEAD_FORMS[head_scheme], "routers": "fp32"}
                             | ({"head_choice": {"requested": head_quant, "tolerance": HEAD_INT4_TOLERANCE} | head_costs}
                                if head_costs else {}),
                    "layer_max_tokens": build.LAYER_MAX_TOKENS, "expert_max_tokens": build.EXPERT_MAX_TOKENS,
                    "calling_convention": CALLING_CONVENTION}
        manifest |= write_shared(source, scheme, tmp)
        source.close()
        records, stats = build_backends(str(ckpt_path), cfg, backends, scheme, head_scheme, group_size, jobs, work,
                                        progress)
        manifest["backends"] = {b: backend_entry(b, records[b], cfg) for b in backends}
        if "onnx" in backends and scheme == "int8":
            with Source(ckpt_path) as src:
                manifest["backends"]["onnx"] |= write_expert_graphs(src.expert(0, 0), cfg.dim, tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if progress:
            progress("measuring expert memory", 0, None)
        charge_measured_footprint(tmp, manifest)
        manifest["export"] = stats | {"parts": {how: sum(s["built"][how] for s in manifest["backends"].values())
                                                for how in ("lowered", "template", "weights")}}
        manifest["export_seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if verify:
            from cosmoe_edge.export.verify import verify_artifact

            if progress:
                progress("verifying", 0, None)
            manifest["verification"] = verify_artifact(tmp, ckpt_path, scheme, backends)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        work.finish()
        ordinary_permissions(tmp)
        replace_dir(tmp, out)
        return manifest
    except KeyboardInterrupt:
        work.keep_or_discard()
        raise
    except BaseException:
        work.discard()
        raise


def write_expert_graphs(expert, dim: int, tmp: Path) -> dict:
    """The weights form's two graphs, shared by every expert (all have one shape): the slot graph takes
    an expert's weights as inputs; the const graph holds them as initializers the runtime supplies."""
    import onnx

    from cosmoe_edge.export.expert_weights import expert_graph

    graphs = {}
    for kind in ("slot", "const"):
        path = tmp / "onnx" / "experts" / f"{kind}.onnx"
        onnx.save(expert_graph(expert, dim, constant=kind == "const"), str(path))
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
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def built_stats(records: list[dict]) -> dict:
    """How many parts were lowered, templated or written as weights, and the median seconds each took."""
    out = {}
    for how in ("lowered", "template", "weights"):
        secs = sorted(r["seconds"] for r in records if r["how"] == how and "seconds" in r)
        out[how] = sum(1 for r in records if r["how"] == how)
        if secs:
            out[f"{how}_median_s"] = secs[len(secs) // 2]
    return out


def backend_entry(backend: str, records: list[dict], cfg) -> dict:
    """The manifest's section of one backend, from the records of its parts (build.build_parts)."""
    method = build.METHOD[backend]
    by_kind = {k: sorted((r for r in records if r["kind"] in k.split("|")), key=lambda r: r["index"])
               for k in ("layer|peer", "head", "expert")}
    entry = lambda r: {k: r[k] for k in ("path", "bytes", "sha256")}  # noqa: E731
    backbone = by_kind["layer|peer"] + by_kind["head"]
    names = [build.part_name(r["kind"], tuple(r["index"])) for r in backbone]
    experts = []
    for r in by_kind["expert"]:
        e = entry(r) | {"layer": r["index"][0], "expert": r["index"][1]}
        e["resident_bytes"] = e["bytes"] + r["report"].get("planned_bytes", {}).get(method, 0)
        experts.append(e)
    section = {"backbone": {"files": [entry(r) for r in backbone],
                            "parts": {n: {"path": r["path"], "method": method} for n, r in zip(names, backbone, strict=True)}},
               "experts": experts,
               "built": built_stats(records)}
    reports = {n: r["report"] for n, r in zip(names, backbone, strict=True)}
    per_expert = [r["report"] for r in by_kind["expert"]]
    if backend == "executorch":
        portable = {}
        for r in [*reports.values(), *per_expert]:
            for op, n in r["portable_ops"].items():
                portable[op] = portable.get(op, 0) + n
        section["delegation"] = {
            "xnnpack_ops": sum(r["delegated_ops"] for r in [*reports.values(), *per_expert]),
            "portable_ops": portable,
            "backbone_delegate_calls": {n: r["delegate_calls"][method] for n, r in reports.items()},
            "expert_delegate_calls": max((r["delegate_calls"][method] for r in per_expert), default=0),
            "backbone_planned_bytes": {n: r["planned_bytes"][method] for n, r in reports.items()}}
    else:
        section["expert_form"] = "program"  # int8 replaces it with the weights form (write_expert_graphs)
        section["matmulnbits"] = {"backbone": reports,
                                  "experts_ok": all(r["matmulnbits"] == r["linear_layers"] for r in per_expert)
                                  if per_expert and per_expert[0]["matmulnbits"] else None,
                                  "per_expert": per_expert[0]["matmulnbits"] if per_expert else 0}
    return section
