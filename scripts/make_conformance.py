"""Write the conformance vectors that both runtimes replay (tests/conformance/): the Python runtime
writes them here, tests/test_conformance.py replays them through Python and checks they are what this
script writes today, and the Android core's tests replay them through Java.

Usage: python scripts/make_conformance.py ARTIFACT [--out tests/conformance]
ARTIFACT: the shipped model exported for executorch (int4), e.g.
  edge-export models/cosmoe-default.pt --quant int4 --head-quant int8 --backend executorch --no-verify --out artifact

- tokenizer.json + tokenizer_cases.json: encode/decode cases, non-ASCII included.
- generation.json: a greedy generation through the Python runtime (executorch backend): prompt ids,
  generated ids, for every step and layer the router logits and the top-k choice, and route() cases
  (ties included).
- cache.json: per budget and policy (with and without prefetch), the operations the engine asked of
  its expert cache (get or prefetch, with the experts it pinned) during that generation, and the
  events the cache answered with (hit, miss, evict, prefetch, with the resident bytes after each).
  Prefetches run inline, so the order is deterministic. Costs are the experts' file sizes: reproducible
  on any machine, where the measured footprints the manifest charges are not.
- selection_cases.json: select() (--experts-per-token, compressed experts, --on-miss, --cache-bias, sticky) on
  recorded router logits with made-up resident sets and vectors: experts, weights, theta and counts.
- kv_cases.json: RoPE rows (float32 bit patterns), attention masks, and KV-cache writes and reads.
- manifest_cases.json: manifests with one defect each and the error kind Python raises for them.
- program_header_cases.json: ExecuTorch program headers, whole and damaged, and what the check before
  loading says of each (ExecuTorch 1.5.1 aborts the process on some damaged headers).

When Python changes behaviour, rerun this: the Java tests then fail until the mirror follows.
"""

import argparse
import base64
import copy
import hashlib
import json
import shutil
import struct
import tempfile
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from cosmoe_edge.errors import ArtifactError
from cosmoe_edge.runtime.backends import check_pte_header
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.generate import Sampler, generate
from cosmoe_edge.runtime.kv import KVCache, attention_mask, rope_rows
from cosmoe_edge.runtime.manifest import MANIFEST, backend_section, check_file, load_manifest
from cosmoe_edge.runtime.routing import route, route_cmoe
from cosmoe_edge.runtime.selection import Selection, SelectionCounts, Sticky, select

PROMPT = "The dictionary type is"
NEW_TOKENS = 32
BACKEND = "executorch"  # the Android demo's backend
TEXTS = ["Hello, world!", "The list type is mutable.", "  leading and trailing  ", "tabs\tand\nnewlines\r\n",
         "héllo wörld — «ça va?»", "日本語のテキスト", "emoji 🚀🙂 mixed", "def f(x):\n    return x ** 2\n",
         "numbers 12345 and 3.14159", "<|endoftext|>after the end", "don't won't it's", ""]


def tokenizer_cases(tok: Tokenizer) -> list[dict]:
    return [{"text": t, "ids": tok.encode(t).ids, "decoded": tok.decode(tok.encode(t).ids)} for t in TEXTS]


class Inline:
    """An executor that runs each prefetch at once, so the cache sees a deterministic order."""

    def submit(self, fn):
        f = Future()
        f.set_result(fn())
        return f

    def shutdown(self):
        pass


class Recorder:
    """The engine's cache, with each get and prefetch logged (key and pinned experts) before it runs."""

    def __init__(self, cache, ops: list):
        self._cache, self._ops = cache, ops

    def get(self, key, pinned=frozenset()):
        self._ops.append(["get", *key, sorted(map(list, pinned))])
        return self._cache.get(key, pinned)

    def prefetch(self, key, pinned=frozenset()):
        self._ops.append(["prefetch", *key, sorted(map(list, pinned))])
        return self._cache.prefetch(key, pinned)

    def __getattr__(self, name):
        return getattr(self._cache, name)


def file_size_costs(artifact: Path, into: Path) -> Path:
    """A view of `artifact` (links to its files) whose manifest charges each expert its file size."""
    m = json.loads((artifact / MANIFEST).read_text())
    for e in m["backends"][BACKEND]["experts"]:
        e["resident_bytes"] = e["bytes"]
    for p in artifact.iterdir():
        if p.name != MANIFEST:
            (into / p.name).symlink_to(p.resolve())
    (into / MANIFEST).write_text(json.dumps(m))
    return into


def traced_generation(artifact: Path, ids: list[int], eos: int, budget=None, policy="lru", prefetch=False):
    events, ops = [], []
    engine = Engine(artifact, BACKEND, budget_bytes=budget, policy=policy, prefetch=prefetch, trace=True,
                    on_cache_event=lambda kind, key, resident: events.append([kind, key[0], key[1], resident]))
    if prefetch:
        engine.prefetcher = Inline()
    cache = engine.cache
    engine.cache = Recorder(cache, ops)
    out, _, _ = generate(engine, ids, NEW_TOKENS, Sampler(), eos)  # as edge-run: stops at end-of-text
    engine.close()
    run = {"policy": policy, "budget": cache.budget, "prefetch": prefetch, "ops": ops, "events": events,
           "hits": cache.hits, "misses": cache.misses, "evictions": cache.evictions,
           "prefetch_useful": cache.prefetch_useful}
    return engine, out, run


def route_cases(steps: list[dict], num_experts: int, top_k: int) -> list[dict]:
    """route() on the first recorded logits, and on rows with ties (which go to the lower expert id); the
    last rows also without renormalising (a model whose router_renorm is false) and with CMoE's routing
    (a selection bias that changes the choice, and weight scales)."""
    rows = [row for step in steps[:8] for row in step["router_logits"]]
    rows += [[1.0] * num_experts, [0.0, 2.0, 2.0] + [-1.0] * (num_experts - 3),
             [3.0] + [0.5] * (num_experts - 2) + [3.0]]
    out = []
    for i, row in enumerate(rows):
        for renorm in (True, False) if i >= len(rows) - 4 else (True,):
            experts, weights = route(np.asarray([row], dtype=np.float32), top_k, renorm)
            out.append({"logits": row, "experts": experts[0].tolist(), "weights": weights[0].tolist()}
                       | ({} if renorm else {"renorm": False}))
    grid = np.linspace(-1.0, 1.0, num_experts, dtype=np.float32)
    for row in rows[-4:]:
        bias, scale = (0.3 * grid[::-1]).astype(np.float32), (2.0 * grid).astype(np.float32)
        experts, weights = route_cmoe(np.abs(np.asarray([row], dtype=np.float32)), top_k, bias, scale)
        out.append({"logits": np.abs(row).tolist(), "experts": experts[0].tolist(), "weights": weights[0].tolist(),
                    "cmoe": {"bias": bias.tolist(), "scale": scale.tolist()}})
    return out


def selection_cases(steps: list[dict], num_experts: int) -> list[dict]:
    """select() (runtime/selection.py) on recorded router logits, for each kind of choice, with a resident set
    and compressed-expert vectors (width 4, seeded) made up for the case: experts by rank (-1: not run),
    weights, theta (null: ones) and the counts. Sticky choices carry their state from one call to the next:
    each case gives it before (prev_in) and after (prev_out)."""
    rng = np.random.default_rng(0)
    vectors = (1 + 0.5 * rng.standard_normal((num_experts, 4))).astype(np.float32)
    logits = [np.asarray(s["router_logits"], dtype=np.float32) for s in steps[:10]]  # a prefill, then decode
    choices = [dict(top_k=2, k=2), dict(top_k=2, k=1), dict(top_k=2, k=1, vectors=False),
               dict(top_k=3, k=1), dict(top_k=3, k=2, on_miss="compressed"),
               dict(top_k=3, k=3, on_miss="skip", skip_below=0.3), dict(top_k=2, k=2, cache_bias=1.5),
               dict(top_k=3, k=2, on_miss="compressed", cache_bias=0.7, renorm=False),
               dict(top_k=2, k=2, sticky=1.25), dict(top_k=3, k=2, on_miss="compressed", cache_bias=0.5, sticky=0.75)]
    out = []
    for i, c in enumerate(choices):
        s = Selection(c["k"], c.get("on_miss", "wait"), c.get("skip_below", 0.5), c.get("cache_bias", 0.0))
        resident = (np.arange(num_experts) % (2 + i % 2)) == 0
        vec = vectors if c.get("vectors", True) else None
        sticky = Sticky(c["sticky"], np.zeros(num_experts, np.float32)) if "sticky" in c else None
        for z in logits[i % 3::3]:
            counts = SelectionCounts()
            prev_in = None if sticky is None else sticky.prev.tolist()
            experts, weights, theta = select(z, c["top_k"], c.get("renorm", True), s, vec,
                                             resident if s.needs_residency() else None, counts, sticky)
            out.append({"logits": z.tolist(), "top_k": c["top_k"], "renorm": c.get("renorm", True),
                        "selection": vars(s), "resident": resident.tolist(),
                        "vectors": None if vec is None else vec.tolist(), "experts": experts.tolist(),
                        "weights": weights.tolist(), "theta": None if theta is None else theta.tolist(),
                        "counts": counts.as_dict(), "sticky": None if sticky is None else
                        {"delta": sticky.delta, "prev_in": prev_in, "prev_out": sticky.prev.tolist()}})
    return out


def bits(a: np.ndarray) -> list[int]:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).ravel().tolist()


def kv_cases(cfg: dict) -> dict:
    """What the runtime feeds a layer besides h, from kv.py: RoPE rows, masks, the KV cache."""
    rope = []
    for head_dim, max_len, theta, positions in ((4, 8, 10000.0, [0, 1, 5, 7]),
                                                (cfg["head_dim"], cfg["max_seq_len"], cfg["rope_theta"],
                                                 [0, 1, 17, cfg["max_seq_len"] - 1])):
        cos, sin = rope_rows(head_dim, max_len, theta)
        rope += [{"head_dim": head_dim, "max_seq_len": max_len, "theta": theta, "pos": p,
                  "cos_bits": bits(cos[p, 0]), "sin_bits": bits(sin[p, 0])} for p in positions]
    masks = []
    for pos0, n, rep in ((0, 1, 1), (0, 3, 2), (1, 1, 2), (2, 3, 2), (5, 1, 3), (4, 2, 1)):
        m = attention_mask(pos0, n, rep)
        masks.append({"pos0": pos0, "n": n, "rep": rep, "rows": ["".join("0" if v == 0 else "-" for v in r) for r in m]})
    # one layer, 2 kv heads, 4 positions, head_dim 2: writes, then the past rows a layer would get
    kv = KVCache(1, 2, 4, 2)
    writes = [{"pos0": 1, "k": np.arange(1, 9, dtype=np.float32).reshape(2, 2, 2)},
              {"pos0": 0, "k": np.arange(10, 50, 10, dtype=np.float32).reshape(1, 2, 2)}]
    steps = []
    for w in writes:
        kv.write(0, w["pos0"], w["k"], -w["k"])
        past = {p: [a.ravel().tolist() for a in kv.past(0, p)] for p in (0, 1, 3)}
        steps.append({"pos0": w["pos0"], "shape": list(w["k"].shape), "k": w["k"].ravel().tolist(),
                      "v": (-w["k"]).ravel().tolist(), "cache_k": kv.k[0].ravel().tolist(),
                      "cache_v": kv.v[0].ravel().tolist(),
                      "past": [{"pos0": p, "k": k, "v": v} for p, (k, v) in past.items()]})
    return {"rope": rope, "masks": masks,
            "kv": {"n_layers": 1, "n_kv_heads": 2, "max_seq_len": 4, "head_dim": 2, "steps": steps}}


def pte_header_cases() -> list[dict]:
    """ExecuTorch program headers, whole and damaged, and what the check before loading says of each."""
    def pte(root=64, ident=b"ET12", magic=b"eh00", header_len=32, program=96, seg_base=128, seg_size=16, size=144):
        head = struct.pack("<I4s4sIQQQ", root, ident, magic, header_len, program, seg_base, seg_size)
        return head + bytes(size - len(head))

    cases = {"valid": pte(), "valid_without_segments": pte(seg_base=0, seg_size=0, size=96), "short": pte()[:20],
             "identifier_not_utf8": pte(ident=b"\xff\xffT2"), "no_extended_header": pte(magic=b"xx00"),
             "root_offset_outside": pte(root=0xFFFFFFFF), "program_larger_than_file": pte(program=10_000),
             "segments_outside": pte(seg_size=10_000), "header_too_short": pte(header_len=16)}
    out = []
    with tempfile.TemporaryDirectory() as d:
        for name, data in cases.items():
            path = Path(d) / "expert.pte"
            path.write_bytes(data)
            case = {"name": name, "bytes": base64.b64encode(data).decode(), "expected_error": None}
            try:
                check_pte_header(path)
            except ArtifactError as e:
                case |= {"expected_error": e.kind, "expected_message": str(e)}
            out.append(case)
    return out


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


def write_vectors(artifact: Path, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    m = load_manifest(artifact)
    backend_section(m, BACKEND)
    shutil.copy(artifact / m["tokenizer"]["path"], out / "tokenizer.json")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    write(out / "tokenizer_cases.json", {"eos_id": m["tokenizer"]["eos_id"], "cases": tokenizer_cases(tok)})

    ids = tok.encode(PROMPT).ids
    eos = m["tokenizer"]["eos_id"]
    cfg = m["model"]
    with tempfile.TemporaryDirectory() as d:
        view = file_size_costs(artifact, Path(d))
        engine, generated, _ = traced_generation(view, ids, eos)
        write(out / "generation.json", {
            "backend": BACKEND, "prompt": PROMPT, "prompt_ids": ids, "generated_ids": generated,
            "text": tok.decode(generated), "n_layers": cfg["n_layers"], "num_experts": cfg["num_experts"],
            "top_k": cfg["top_k"], "sticky_delta": cfg.get("sticky_delta", 0.0), "layer_max_tokens": m["layer_max_tokens"],
            "expert_max_tokens": m["expert_max_tokens"], "steps": engine.routing.trace,
            "route_cases": route_cases(engine.routing.trace, cfg["num_experts"], cfg["top_k"])})

        costs = [{"layer": e["layer"], "expert": e["expert"], "cost": e["bytes"]}
                 for e in m["backends"][BACKEND]["experts"]]
        low, half, total = engine.min_budget, engine.expert_bytes_total // 2, engine.expert_bytes_total
        plan = [(low, "lru", False), (low, "lfu", False), (low, "nextuse", False), (half, "lru", False),
                (half, "lfu", False), (half, "nextuse", False), (total, "none", False), (half, "lru", True),
                (half, "lfu", True), (half, "nextuse", True)]
        runs = []
        for budget, policy, prefetch in plan:
            _, gen, run = traced_generation(view, ids, eos, budget, policy, prefetch)
            assert gen == generated, "caching changed the tokens"
            runs.append(run)
    write(out / "cache.json", {"costs": costs, "min_budget": low, "top_k": cfg["top_k"], "expert_bytes_total": total,
                               "n_layers": cfg["n_layers"], "num_experts": cfg["num_experts"], "runs": runs})
    write(out / "selection_cases.json", {"num_experts": cfg["num_experts"],
                                         "cases": selection_cases(engine.routing.trace, cfg["num_experts"])})
    write(out / "kv_cases.json", kv_cases(cfg))
    write(out / "manifest_cases.json", {"backend": BACKEND, "cases": manifest_cases(artifact)})
    write(out / "program_header_cases.json", {"file_name": "expert.pte", "cases": pte_header_cases()})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--out", type=Path, default=Path("tests/conformance"))
    args = ap.parse_args()
    write_vectors(args.artifact, args.out)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(args.out.glob("*.json")))).hexdigest()[:12]
    print(f"wrote conformance vectors to {args.out} ({digest})")


def write(path: Path, obj):
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
