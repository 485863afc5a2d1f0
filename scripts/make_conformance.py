"""Write the conformance vectors the Android core's tests replay (tests/conformance/).

Usage: python scripts/make_conformance.py ARTIFACT [--out tests/conformance]

- tokenizer.json + tokenizer_cases.json: encode/decode cases, non-ASCII included.
- generation.json: a greedy generation through the Python runtime (executorch backend): prompt ids,
  generated ids, and for every step and layer the router logits and the top-k choice.
- cache.json: the expert cache's event sequence (hit/miss/evict/prefetch with resident bytes) for that
  generation at two budgets and both policies, and the per-expert costs and budgets used.
- manifest_cases.json: manifests with one defect each and the error kind Python raises for them.

When Python changes behaviour, rerun this: the Java tests then fail until the mirror follows.
"""

import argparse
import base64
import copy
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from cosmoe_edge.runtime.engine import Engine, route
from cosmoe_edge.runtime.generate import Sampler, generate
from cosmoe_edge.runtime.manifest import ArtifactError, backend_section, check_file, load_manifest

PROMPT = "The dictionary type is"
NEW_TOKENS = 32
BACKEND = "executorch"  # the Android demo's backend: its expert costs are the ones that matter
TEXTS = ["Hello, world!", "The list type is mutable.", "  leading and trailing  ", "tabs\tand\nnewlines\r\n",
         "héllo wörld — «ça va?»", "日本語のテキスト", "emoji 🚀🙂 mixed", "def f(x):\n    return x ** 2\n",
         "numbers 12345 and 3.14159", "<|endoftext|>after the end", "don't won't it's", ""]


def tokenizer_cases(tok: Tokenizer) -> list[dict]:
    return [{"text": t, "ids": tok.encode(t).ids, "decoded": tok.decode(tok.encode(t).ids)} for t in TEXTS]


def traced_generation(artifact: Path, ids: list[int], eos: int, budget=None, policy="lru"):
    events = []
    engine = Engine(artifact, BACKEND, budget, policy, trace=True,
                    on_cache_event=lambda kind, key, resident: events.append([kind, key[0], key[1], resident]))
    out, _, _ = generate(engine, ids, NEW_TOKENS, Sampler(), eos)  # as edge-run: stops at end-of-text
    engine.close()
    return engine, out, events


def manifest_cases(artifact: Path) -> list[dict]:
    """Each case: a manifest, the files it names (base64), and what loading it must raise."""
    m = load_manifest(artifact)
    content = bytes(range(64)) * 4  # a stand-in program: these checks read sizes and hashes, not programs
    expert = {"layer": 0, "expert": 0, "path": "executorch/experts/l00_e00.pte", "bytes": len(content),
              "sha256": hashlib.sha256(content).hexdigest(), "resident_bytes": len(content)}
    good = {"format_version": m["format_version"], "model": m["model"], "tokenizer": m["tokenizer"],
            "embedding": m["embedding"], "quant": m["quant"], "layer_max_tokens": m["layer_max_tokens"],
            "expert_max_tokens": m["expert_max_tokens"],
            "backends": {BACKEND: {"backbone": {"files": [], "parts": {}}, "experts": [expert]}}}

    def case(name, mutate=None, files=None, raw=None):
        man = copy.deepcopy(good)
        if mutate:
            mutate(man)
        return {"name": name, "manifest_text": raw if raw is not None else json.dumps(man),
                "files": {k: base64.b64encode(v).decode() for k, v in (files if files is not None
                                                                       else {expert["path"]: content}).items()}}

    cases = [
        case("valid"),
        case("bad_json", raw="{not json"),
        case("future_version", lambda x: x.update(format_version=m["format_version"] + 1)),
        case("missing_key", lambda x: x.pop("quant")),
        case("missing_backend", lambda x: x["backends"].pop(BACKEND)),
        case("missing_file", files={}),
        case("truncated_file", files={expert["path"]: content[: len(content) // 2]}),
        case("corrupt_file", files={expert["path"]: bytes([content[0] ^ 0xFF]) + content[1:]}),
    ]
    with tempfile.TemporaryDirectory() as d:
        for c in cases:
            root = Path(d) / c["name"]
            root.mkdir()
            (root / "manifest.json").write_text(c["manifest_text"])
            for rel, b64 in c["files"].items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(base64.b64decode(b64))
            try:
                man = load_manifest(root)
                for e in backend_section(man, BACKEND)["experts"]:
                    check_file(root, e, verify_sha=True)
                c["expected_error"] = None
            except ArtifactError as e:
                c["expected_error"] = e.kind
                c["expected_message"] = str(e).replace(str(root), "<artifact>")
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--out", type=Path, default=Path("tests/conformance"))
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    m = load_manifest(args.artifact)
    shutil.copy(args.artifact / m["tokenizer"]["path"], out / "tokenizer.json")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    write(out / "tokenizer_cases.json", {"eos_id": m["tokenizer"]["eos_id"], "cases": tokenizer_cases(tok)})

    ids = tok.encode(PROMPT).ids
    eos = m["tokenizer"]["eos_id"]
    engine, generated, _ = traced_generation(args.artifact, ids, eos)
    cfg = m["model"]
    routes = []  # route() on recorded logits: the choice and the renormalised weights
    for step in engine.routing.trace[:8]:
        experts, weights = route(np.asarray(step["router_logits"], dtype=np.float32), cfg["top_k"])
        routes += [{"logits": row, "experts": ex, "weights": w}
                   for row, ex, w in zip(step["router_logits"], experts.tolist(), weights.tolist(), strict=True)]
    write(out / "generation.json", {
        "backend": BACKEND, "prompt": PROMPT, "prompt_ids": ids, "generated_ids": generated,
        "text": tok.decode(generated), "n_layers": cfg["n_layers"], "num_experts": cfg["num_experts"],
        "top_k": cfg["top_k"], "layer_max_tokens": m["layer_max_tokens"], "expert_max_tokens": m["expert_max_tokens"],
        "steps": engine.routing.trace, "route_cases": routes})

    section = backend_section(m, BACKEND)
    costs = [{"layer": e["layer"], "expert": e["expert"], "cost": e.get("resident_bytes", e["bytes"])}
             for e in section["experts"]]
    runs = []
    plan = [(b, p) for b in (engine.min_budget, engine.expert_bytes_total // 2) for p in ("lru", "lfu")]
    for budget, policy in plan + [(engine.expert_bytes_total, "none")]:
        e2, gen2, events = traced_generation(args.artifact, ids, eos, budget, policy)
        assert gen2 == generated, "caching changed the tokens"
        runs.append({"policy": policy, "budget": budget, "events": events,
                     "hits": e2.cache.hits, "misses": e2.cache.misses, "evictions": e2.cache.evictions})
    write(out / "cache.json", {"costs": costs, "min_budget": engine.min_budget, "top_k": cfg["top_k"],
                               "expert_bytes_total": engine.expert_bytes_total, "runs": runs})
    write(out / "manifest_cases.json", {"backend": BACKEND, "cases": manifest_cases(args.artifact)})
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(out.glob("*.json")))).hexdigest()[:12]
    print(f"wrote conformance vectors to {out} ({digest})")


def write(path: Path, obj):
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
