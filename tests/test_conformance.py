"""The committed conformance vectors (tests/conformance/), replayed through the Python runtime: the same
vectors the Android core's tests replay through Java, so a behaviour change fails here first. The last
test checks that the vectors are what scripts/make_conformance.py writes today."""

import base64
import importlib.util
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from cosmoe_edge.errors import ArtifactError
from cosmoe_edge.runtime.backends import check_pte_header
from cosmoe_edge.runtime.cache import ExpertCache
from cosmoe_edge.runtime.kv import KVCache, attention_mask, rope_rows
from cosmoe_edge.runtime.manifest import backend_section, check_file, load_manifest
from cosmoe_edge.runtime.routing import route, route_cmoe
from cosmoe_edge.runtime.selection import Selection, SelectionCounts, Sticky, biased_top_k, select

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "conformance"


def vectors(name: str):
    return json.loads((VECTORS / name).read_text())


class Released:
    def __init__(self):
        self.released = False

    def release(self):
        self.released = True


class CostStore:
    """The cache's store with cache.json's costs; loading gives a program that only records its release."""

    def __init__(self, costs):
        self.costs = {(c["layer"], c["expert"]): c["cost"] for c in costs}
        self.loaded = []

    def cost(self, key):
        return self.costs[key]

    load_cost = cost

    def load(self, key):
        self.loaded.append(Released())
        return self.loaded[-1]


def replay(cache_vectors: dict, run: dict) -> tuple[ExpertCache, list]:
    events, store = [], CostStore(cache_vectors["costs"])
    cache = ExpertCache(store, run["budget"], run["policy"], (cache_vectors["n_layers"], cache_vectors["num_experts"]),
                        lambda kind, key, b: events.append([kind, *key, b]))
    for op, layer, expert, pinned in run["ops"]:
        pins = frozenset(tuple(p) for p in pinned)
        (cache.get if op == "get" else cache.prefetch)((layer, expert), pins)
    return cache, events


def test_cache_events_replay_for_every_budget_policy_and_prefetch():
    c = vectors("cache.json")
    assert {(r["policy"], r["prefetch"]) for r in c["runs"]} >= {(p, f) for p in ("nextuse", "lru", "lfu") for f in (0, 1)}
    assert sum(e[0] == "prefetch" for r in c["runs"] for e in r["events"]) > 0
    for run in c["runs"]:
        label = f"{run['policy']} at {run['budget']}{' with prefetch' if run['prefetch'] else ''}"
        cache, events = replay(c, run)
        assert events == run["events"], label
        assert (cache.hits, cache.misses, cache.evictions, cache.prefetch_useful) == (
            run["hits"], run["misses"], run["evictions"], run["prefetch_useful"]), label
        assert cache.peak_bytes <= run["budget"], label
        resident_at_end = sum(cache.is_resident(k) for k in cache.store.costs)
        cache.release_all()
        assert all(p.released for p in cache.store.loaded) and resident_at_end > 0, label


def test_cache_budgets_follow_from_costs():
    c = vectors("cache.json")
    costs = [x["cost"] for x in c["costs"]]
    assert c["expert_bytes_total"] == sum(costs) and c["min_budget"] == c["top_k"] * max(costs)


def test_routing_replay():
    g = vectors("generation.json")
    for case in g["route_cases"]:
        if "cmoe" in case:
            bias, scale = (np.asarray(case["cmoe"][k], dtype=np.float32) for k in ("bias", "scale"))
            experts, weights = route_cmoe(np.asarray([case["logits"]], dtype=np.float32), g["top_k"], bias, scale)
            assert experts[0].tolist() == case["experts"]
            np.testing.assert_allclose(weights[0], case["weights"], rtol=0, atol=1e-7)
            continue
        renorm = case.get("renorm", True)
        experts, weights = route(np.asarray([case["logits"]], dtype=np.float32), g["top_k"], renorm)
        assert experts[0].tolist() == case["experts"]
        np.testing.assert_allclose(weights[0], case["weights"], rtol=0, atol=1e-7)
        assert renorm == (abs(sum(case["weights"]) - 1) < 1e-6)  # without renormalising the k do not sum to 1
    flat = next(c for c in g["route_cases"] if len(set(c["logits"])) == 1)
    assert flat["experts"] == list(range(g["top_k"]))  # ties go to the lower expert id
    # every traced step, with the model's sticky rule when it has one (a state per layer, fresh at position 0)
    sticky = [Sticky(g["sticky_delta"], np.zeros(g["num_experts"], np.float32)) for _ in range(g["n_layers"])]
    for step in g["steps"]:
        logits = np.asarray(step["router_logits"], dtype=np.float32)
        if g["sticky_delta"]:
            if step["pos0"] == 0:
                sticky[step["layer"]].reset()
            experts, _ = biased_top_k(logits, g["top_k"], True, None, sticky[step["layer"]])
        else:
            experts, _ = route(logits, g["top_k"])
        assert experts.tolist() == step["experts"], (step["pos0"], step["layer"])
    if g["sticky_delta"]:  # the rule changed choices in this trace, so the replay above tested it
        assert any(route(np.asarray(s["router_logits"], np.float32), g["top_k"])[0].tolist() != s["experts"]
                   for s in g["steps"])
    # the calls a generation makes: the prompt in chunks, then one token per step, every layer each time
    positions = [(s["pos0"], len(s["experts"])) for s in g["steps"] if s["layer"] == 0]
    n_prompt = len(g["prompt_ids"])
    assert positions == [(0, n_prompt)] + [(n_prompt + i, 1) for i in range(len(g["generated_ids"]) - 1)]


def test_selection_replay():
    cases = vectors("selection_cases.json")["cases"]
    for i, c in enumerate(cases):
        s = Selection(**c["selection"])
        counts = SelectionCounts()
        vec = None if c["vectors"] is None else np.asarray(c["vectors"], dtype=np.float32)
        st = c["sticky"] and Sticky(c["sticky"]["delta"], np.asarray(c["sticky"]["prev_in"], dtype=np.float32))
        experts, weights, theta = select(np.asarray(c["logits"], dtype=np.float32), c["top_k"], c["renorm"], s, vec,
                                         np.asarray(c["resident"]) if s.needs_residency() else None, counts, st)
        assert experts.tolist() == c["experts"] and counts.as_dict() == c["counts"], i
        assert st is None or st.prev.tolist() == c["sticky"]["prev_out"], i
        np.testing.assert_allclose(weights, c["weights"], rtol=0, atol=1e-7)
        assert (theta is None) == (c["theta"] is None), i
        if theta is not None:
            np.testing.assert_allclose(theta, c["theta"], rtol=0, atol=1e-6)
    kinds = {(c["selection"]["on_miss"], c["selection"]["cache_bias"] > 0, c["theta"] is not None) for c in cases}
    assert len(kinds) >= 5 and any(c["counts"]["misses_skipped"] for c in cases)
    # the sticky rule changed some choice against the same logits without it (else these cases test nothing)
    assert any(c["sticky"] and select(np.asarray(c["logits"], dtype=np.float32), c["top_k"], c["renorm"],
                                      Selection(**c["selection"]), None, None, SelectionCounts())[0].tolist()
               != c["experts"] for c in cases if c["selection"]["on_miss"] == "wait")


def test_tokenizer_replay():
    t = vectors("tokenizer_cases.json")
    tok = Tokenizer.from_file(str(VECTORS / "tokenizer.json"))
    assert tok.token_to_id("<|endoftext|>") == t["eos_id"]
    for case in t["cases"]:
        assert tok.encode(case["text"]).ids == case["ids"], case["text"]
        assert tok.decode(case["ids"]) == case["decoded"], case["text"]


def test_kv_inputs_replay():
    kv = vectors("kv_cases.json")
    for r in kv["rope"]:
        cos, sin = rope_rows(r["head_dim"], r["max_seq_len"], r["theta"])
        assert cos[r["pos"], 0].view(np.uint32).tolist() == r["cos_bits"]
        assert sin[r["pos"], 0].view(np.uint32).tolist() == r["sin_bits"]
    for m in kv["masks"]:
        mask = attention_mask(m["pos0"], m["n"], m["rep"])
        assert ["".join("0" if v == 0 else "-" for v in row) for row in mask] == m["rows"]
        assert np.all((mask == 0) | (mask == -np.inf))
    spec = kv["kv"]
    cache = KVCache(spec["n_layers"], spec["n_kv_heads"], spec["max_seq_len"], spec["head_dim"])
    for step in spec["steps"]:
        k = np.asarray(step["k"], np.float32).reshape(step["shape"])
        cache.write(0, step["pos0"], k, np.asarray(step["v"], np.float32).reshape(step["shape"]))
        assert cache.k[0].ravel().tolist() == step["cache_k"] and cache.v[0].ravel().tolist() == step["cache_v"]
        for p in step["past"]:
            pk, pv = cache.past(0, p["pos0"])
            assert pk.ravel().tolist() == p["k"] and pv.ravel().tolist() == p["v"]


def test_manifest_cases_replay(tmp_path):
    m = vectors("manifest_cases.json")
    for case in m["cases"]:
        root = tmp_path / case["name"]
        root.mkdir()
        (root / "manifest.json").write_text(case["manifest_text"])
        for rel, b64 in case["files"].items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(base64.b64decode(b64))
        try:
            man = load_manifest(root)
            for e in backend_section(man, m["backend"])["experts"]:
                check_file(root, e, verify_sha=True)
            got = None
        except ArtifactError as e:
            got = e.kind
            assert str(e).replace(str(root), "<artifact>") == case["expected_message"], case["name"]
        assert got == case["expected_error"], case["name"]


def test_program_header_cases_replay(tmp_path):
    h = vectors("program_header_cases.json")
    path = tmp_path / h["file_name"]
    for case in h["cases"]:
        path.write_bytes(base64.b64decode(case["bytes"]))
        try:
            check_pte_header(path)
            got = None
        except ArtifactError as e:
            got = e.kind
            assert str(e) == case["expected_message"], case["name"]
        assert got == case["expected_error"], case["name"]
    assert {c["expected_error"] for c in h["cases"]} == {None, "corrupt_program"}


def same(a, b, where="") -> list[str]:
    """Differences between two JSON values; floats within 1e-4 (router logits come from int4 XNNPACK kernels)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return [f"{where}: keys {list(a)} != {list(b)}"]
        return [d for k in a for d in same(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in same(x, y, f"{where}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        return [] if abs(a - b) <= 1e-4 * max(1.0, abs(a)) else [f"{where}: {a} != {b}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def test_committed_vectors_are_what_make_conformance_writes_today(shipped_executorch_artifact, tmp_path):
    spec = importlib.util.spec_from_file_location("make_conformance", ROOT / "scripts" / "make_conformance.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.write_vectors(shipped_executorch_artifact, tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in VECTORS.iterdir()), "a vector file was added or dropped"
    assert (tmp_path / "tokenizer.json").read_bytes() == (VECTORS / "tokenizer.json").read_bytes()
    for name in written:
        if name.endswith(".json") and name != "tokenizer.json":
            diff = same(json.loads((tmp_path / name).read_text()), vectors(name), name)
            assert not diff, (f"{len(diff)} differences; rerun scripts/make_conformance.py "
                              f"(see its docstring) and commit: " + "; ".join(diff[:5]))
