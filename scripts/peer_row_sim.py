"""How a PEER layer's rows should be cached and laid out (issue 15): replays the rows the shipped PEER arm retrieves
on its held-out text (teacher-forced through the artifact, 4,096 tokens) against caches of 100/25/10/5% of the
pool, and counts the 4 KiB pages read per token:
- page LRU: whole pages cached;
- row LRU: rows cached, a miss reads its page and keeps the asked row only;
- row LRU + neighbours: the page's other rows fill free slots as least recent (what runtime/rows.py does);
- the last, with the pool reordered so co-retrieved experts share pages (a spectral order of the sub-keys'
  co-occurrence, or the experts sorted by frequency), both learnt on the first half of the trace.
Figures on the second half. Writes the table between the "peer-rows" markers of docs/RUNTIME.md.

Usage: python scripts/peer_row_sim.py [--artifact runs/peer-bench/peer-mid-int8]
"""

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

PAGE = 4096


def trace(artifact: str, tokens: int = 4096, window: int = 256) -> np.ndarray:
    """(tokens, heads * k) row ids the PEER layer retrieved on the held-out text."""
    from tokenizers import Tokenizer

    from cosmoe_edge.runtime import rows
    from cosmoe_edge.runtime.engine import Engine

    engine = Engine(artifact, "onnx", verify=False)
    ids = Tokenizer.from_file(f"{artifact}/tokenizer.json").encode(Path(artifact, "heldout.txt").read_text()).ids
    seen, records = [], rows.RowCache.records

    def recording(self, layer, flat):
        seen.append(flat.copy())
        return records(self, layer, flat)

    rows.RowCache.records = recording
    for i in range(0, min(tokens, len(ids)), window):
        engine.reset()
        engine.forward(ids[i:i + window])
    rows.RowCache.records = records
    engine.close()
    return np.stack(seen)


def pages_lru(tr, cap_bytes, per):
    cache, reads = OrderedDict(), 0
    for t in tr:
        need = np.unique(t // per).tolist()
        for p in need:
            if p in cache:
                cache.move_to_end(p)
        miss = [p for p in need if p not in cache]
        cache.update(dict.fromkeys(miss))
        while len(cache) > cap_bytes // PAGE:
            cache.popitem(last=False)
        reads += len(miss)
    return reads / len(tr)


def rows_lru(tr, cap_bytes, per, record, neighbours):
    cap, cache, reads = cap_bytes // record, OrderedDict(), 0
    for t in tr:
        u = np.unique(t).tolist()
        for r in u:
            if r in cache:
                cache.move_to_end(r)
        miss = [r for r in u if r not in cache]
        pages = sorted({r // per for r in miss})
        reads += len(pages)
        cache.update(dict.fromkeys(miss))
        if neighbours:
            for p in pages:
                for r in range(p * per, (p + 1) * per):
                    if r not in cache:
                        cache[r] = None
                        cache.move_to_end(r, last=False)
        while len(cache) > cap:
            cache.popitem(last=False)
    return reads / len(tr)


def spectral_order(tr, n):
    """Per half of the key, sub-keys ordered by the Fiedler vector of their co-retrieval graph."""
    orders = []
    for comp in (tr // n, tr % n):
        c = np.zeros((n, n))
        for row in comp:
            u = np.unique(row)
            c[np.ix_(u, u)] += 1
        np.fill_diagonal(c, 0)
        d = np.maximum(c.sum(1), 1e-9)
        s = np.diag(d ** -0.5)
        f = s @ np.linalg.eigh(s @ (np.diag(d) - c) @ s)[1][:, 1]
        pos = np.empty(n, int)
        pos[np.argsort(f)] = np.arange(n)
        orders.append(pos)
    return lambda t: orders[0][t // n] * n + orders[1][t % n]


def frequency_order(tr, size):
    pos = np.empty(size, int)
    pos[np.argsort(-np.bincount(tr.ravel(), minlength=size), kind="stable")] = np.arange(size)
    return lambda t: pos[t]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default="runs/peer-bench/peer-mid-int8")
    a = ap.parse_args()
    import json

    m = json.loads(Path(a.artifact, "manifest.json").read_text())
    (entry,) = m["peer"]["layers"].values()
    record, size, n = entry["record_bytes"], entry["rows"], m["peer"]["sub_keys"]
    per = PAGE // record
    tr = trace(a.artifact)
    learn, test = tr[:len(tr) // 2], tr[len(tr) // 2:]
    spectral, frequency = spectral_order(learn, n), frequency_order(learn, size)
    kb = lambda pages: f"{pages * PAGE / 1e3:,.0f}"  # noqa: E731
    lines = [f"`python scripts/peer_row_sim.py` on {Path(a.artifact).name} (pool {size * record / 1e6:.1f} MB, "
             f"{record}-byte rows, {per} per page): KB read per token on {len(test):,} held-out tokens "
             f"(orders learnt on the {len(learn):,} before them).", "",
             "| cache (% of the pool) | page LRU | row LRU | row LRU + neighbours (runtime) | + spectral order | "
             "+ frequency order |", "|---|---|---|---|---|---|"]
    for f in (1.0, 0.25, 0.10, 0.05):
        cap = int(size * record * f)
        lines.append(f"| {f:.0%} | {kb(pages_lru(test, cap, per))} | {kb(rows_lru(test, cap, per, record, False))} | "
                     f"{kb(rows_lru(test, cap, per, record, True))} | "
                     f"{kb(rows_lru(spectral(test), cap, per, record, True))} | "
                     f"{kb(rows_lru(frequency(test), cap, per, record, True))} |")
    sys.path.insert(0, str(Path(__file__).parent))
    from doc_figures import write_between_markers

    write_between_markers(Path("docs/RUNTIME.md"), "\n".join(lines), "peer-rows")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
