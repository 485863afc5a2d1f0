"""Expert-cache hit rates of each policy against Belady's offline optimum, on routing traced from an
artifact (greedy and sampled decoding), written between the policy markers of docs/RUNTIME.md.

Usage: python scripts/policy_figures.py [ARTIFACT] [--tokens 96] [--out docs/RUNTIME.md]
"""

import argparse
from pathlib import Path

from doc_figures import write_between_markers
from tokenizers import Tokenizer

from cosmoe_edge.bench.policy_sim import belady_hit_rate, replay, visits
from cosmoe_edge.runtime.engine import Engine
from cosmoe_edge.runtime.generate import Sampler, generate

PROMPTS = ["The list type is", "To read a file, use", "def main():\n    ", "Exceptions are raised when"]
POLICIES = ["nextuse", "lru", "lfu"]
BUDGETS = (2, 4, 8)  # 1/2, 1/4, 1/8 of all experts


def traces(artifact: Path, tokens: int, temperature: float) -> list[list]:
    tok = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    out = []
    for i, prompt in enumerate(PROMPTS):
        engine = Engine(artifact, "onnx", trace=True)
        generate(engine, tok.encode(prompt).ids, tokens, Sampler(temperature=temperature, seed=i), None)
        engine.close()
        out.append(visits(engine.routing.trace))
    return out


def rates(runs: list[list], shape: tuple[int, int], capacity: int) -> dict:
    """Hit rates over all requests of all runs (each run starts with an empty cache)."""
    hits = {p: 0.0 for p in [*POLICIES, "belady"]}
    n = 0
    for v in runs:
        for p in POLICIES:
            rate, requests = replay(v, p, capacity, shape)
            hits[p] += rate * len(requests)
        hits["belady"] += belady_hit_rate(requests, capacity) * len(requests)
        n += len(requests)
    return {p: h / n for p, h in hits.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path, nargs="?", default=Path("artifact"))
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--out", type=Path, default=Path("docs/RUNTIME.md"))
    a = ap.parse_args()
    engine = Engine(a.artifact, "onnx")
    shape, experts = (engine.n_layers, engine.cfg["num_experts"]), engine.n_layers * engine.cfg["num_experts"]
    engine.close()
    lines = [f"`scripts/policy_figures.py {a.artifact}`: the shipped model's routing, {len(PROMPTS)} prompts x {a.tokens} "
             "new tokens, each run from an empty cache; budgets as a share of all experts (equal sizes). Belady: "
             "the offline optimum, which knows the future.", "",
             "| decoding | budget | " + " | ".join(POLICIES) + " | Belady | nextuse / Belady |",
             "|---|---|" + "---|" * (len(POLICIES) + 2)]
    for name, temperature in (("greedy", 0.0), ("sampled, T=0.8", 0.8)):
        runs = traces(a.artifact, a.tokens, temperature)
        for div in BUDGETS:
            r = rates(runs, shape, experts // div)
            lines.append(f"| {name} | {100 / div:g}% ({experts // div} experts) | "
                         + " | ".join(f"{r[p]:.1%}" for p in POLICIES)
                         + f" | {r['belady']:.1%} | {r['nextuse'] / r['belady']:.2f} |")
    body = "\n".join(lines)
    write_between_markers(a.out, body, "policies", "### Cache policies against the offline optimum")
    print(body)


if __name__ == "__main__":
    main()
