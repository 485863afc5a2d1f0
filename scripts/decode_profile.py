"""Where a decode step's time goes: inside program calls (backend adapter + runtime) or in the Python
loop around them (embedding, routing, KV writes, combining experts). All experts resident, greedy.
Usage: python scripts/decode_profile.py ARTIFACT BACKEND [--tokens 128]; prints one JSON line.
"""

import argparse
import json
import time
from collections import defaultdict

import numpy as np

from cosmoe_edge.runtime import backends
from cosmoe_edge.runtime.engine import Engine

PROMPT_IDS = list(range(10, 30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("backend")
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()

    spent, calls = defaultdict(int), defaultdict(int)
    counting = [False]
    kinds = {}  # (program, method) -> "layer" or "head"; anything else is an expert

    def timed(run):
        def wrapper(self, method, inputs):
            t = time.perf_counter_ns()
            out = run(self, method, inputs)
            if counting[0]:
                kind = kinds.get((id(self), method), "expert")
                spent[kind] += time.perf_counter_ns() - t
                calls[kind] += 1
            return out
        return wrapper

    for cls in (backends.OnnxProgram, backends.ExecuTorchProgram):
        cls.run = timed(cls.run)
    engine = Engine(a.artifact, a.backend)
    kinds.update({(id(prog), method): name.split("_")[0] for name, (prog, method) in engine.parts.items()})
    engine.preload()
    engine.reset()
    token = int(np.argmax(engine.forward(PROMPT_IDS)[-1]))
    counting[0] = True
    t = time.perf_counter_ns()
    for _ in range(a.tokens):
        token = int(np.argmax(engine.forward([token])[-1]))
    total = time.perf_counter_ns() - t
    engine.close()
    n = a.tokens
    in_calls = sum(spent.values())
    print(json.dumps({"ms_per_token": total / n / 1e6, "calls_ms_per_token": in_calls / n / 1e6,
                      "python_ms_per_token": (total - in_calls) / n / 1e6,
                      "calls_per_token": sum(calls.values()) / n,
                      "us_per_call": {k: spent[k] / calls[k] / 1e3 for k in spent},
                      "calls_per_token_by_kind": {k: calls[k] / n for k in calls}}))


if __name__ == "__main__":
    main()
