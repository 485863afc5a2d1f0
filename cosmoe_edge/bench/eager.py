"""The eager PyTorch fp32 baseline, measured like edge-run and reporting the same keys.
Usage: python -m cosmoe_edge.bench.eager MODEL.pt --prompt TEXT [--max-new-tokens N] [--report FILE] [--threads 1]"""

import argparse
import json
import time

import numpy as np

from cosmoe_edge.runtime.metrics import peak_rss_bytes, process_id, rss_bytes, storage_read_bytes
from cosmoe_edge.runtime.report import latency_summary, make_report
from cosmoe_edge.runtime.rows import rows_report
from cosmoe_edge.runtime.selection import Selection, SelectionCounts, report_entry


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--report")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    t = time.perf_counter_ns()
    import torch

    from cosmoe_edge.model.checkpoint import load_model
    from cosmoe_edge.model.generate import generate
    from cosmoe_edge.model.tokenizer import eos_id

    import_ms = (time.perf_counter_ns() - t) / 1e6  # kept out of load_ms, as edge-run does
    torch.set_num_threads(a.threads)
    read0 = storage_read_bytes()
    t = time.perf_counter_ns()
    model, tok, ckpt = load_model(a.model)
    load_ms = (time.perf_counter_ns() - t) / 1e6
    rss_load = rss_bytes()
    ids = tok.encode(a.prompt).ids
    stamps = []
    start = time.perf_counter_ns()
    out = generate(model, ids, a.max_new_tokens, eos=eos_id(tok, ckpt["meta"]),
                   on_token=lambda _: stamps.append(time.perf_counter_ns()))
    step_ns = np.diff(np.asarray(stamps, dtype=np.int64))
    ttft = (stamps[0] - start) / 1e6
    # every expert is in memory and none is loaded: the expert figures are those of an all-resident run
    report = make_report(
        backend="eager", engine="eager", quant="fp32", prompt_tokens=len(ids), generated_tokens=len(out), text=tok.decode(out),
        ttft_ms=ttft, prefill_tokens_per_s=len(ids) / (ttft / 1e3),
        decode_tokens_per_s=len(step_ns) / (step_ns.sum() / 1e9) if len(step_ns) else 0.0,
        token_latency_ms=latency_summary(step_ns), load_ms=load_ms, runtime_import_ms=import_ms,
        peak_rss_bytes=peak_rss_bytes(), rss_after_load_bytes=rss_load, storage_read_bytes=storage_read_bytes() - read0,
        memory_budget_bytes=0, expert_bytes_total=0, resident_expert_bytes_peak=0, expert_hits=0, expert_misses=0,
        expert_misses_decode=0, expert_evictions=0, expert_hit_rate=1.0, expert_switch_rate=0.0,
        prefetch={"issued": 0, "useful": 0},
        selection=report_entry(Selection(model.cfg.k_main or model.cfg.top_k), SelectionCounts()),
        rows=rows_report(None, None),
        expert_load_ms=0.0, expert_loads=0, preloaded=True, process=process_id())
    if a.report:
        with open(a.report, "w") as f:
            json.dump(report, f, indent=1)
    print(f"eager fp32: decode {report['decode_tokens_per_s']:.0f} tok/s, ttft {ttft:.1f} ms, "
          f"peak RSS {report['peak_rss_bytes'] / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
