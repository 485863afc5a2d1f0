"""PNG plots of a benchmark run: one line per artifact/backend/policy, budgets on the x axis, each
plot titled with the machine and the date."""

from collections import defaultdict
from pathlib import Path


def budget_fraction(row) -> float | None:
    if row.get("memory_budget_bytes") and row.get("expert_bytes_total"):
        return min(1.0, row["memory_budget_bytes"] / row["expert_bytes_total"])
    return None


def series(rows):
    """{label: [(budget fraction, row)]} over cached configurations (not the no-cache/eager baselines)."""
    out = defaultdict(list)
    for r in rows:
        if "error" in r and "decode_tokens_per_s" not in r or r["policy"] in ("none", "eager"):
            continue
        f = budget_fraction(r)
        if f is not None:
            out[r["label"] + (" (cold)" if r["cold"] else "")].append((f, r))
    return {k: sorted(v, key=lambda x: x[0]) for k, v in out.items()}


def draw(rows, out_dir: Path, machine: str, date: str, estimates=None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = series(rows)
    full = {(r["artifact"], r["backend"]): r["decode_tokens_per_s"] for r in rows
            if r["policy"] == "lru" and r["budget"] == "all" and "decode_tokens_per_s" in r}
    charts = [
        ("decode_ratio.png", "decode tokens/s, as a ratio to all experts resident",
         lambda r: r["decode_tokens_per_s"] / full.get((r["artifact"], r["backend"]), float("nan"))),
        ("decode_tps.png", "decode tokens/s", lambda r: r["decode_tokens_per_s"]),
        ("hit_rate.png", "expert cache hit rate", lambda r: r["expert_hit_rate"]),
        ("peak_rss.png", "peak RSS (MB)", lambda r: r["peak_rss_bytes"] / 1e6),
        ("read_per_token.png", "storage bytes read per generated token (KB)",
         lambda r: r["storage_read_bytes"] / max(1, r["generated_tokens"]) / 1e3),
        ("ttft.png", "time to first token (ms)", lambda r: r["ttft_ms"]),
    ]
    written = []
    for name, ylabel, value in charts:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for label, pts in lines.items():
            ax.plot([100 * f for f, _ in pts], [value(r) for _, r in pts], marker="o", label=label)
        if name == "decode_tps.png" and estimates:
            for label, pts in estimates.items():
                ax.plot([100 * f for f, _ in pts], [v for _, v in pts], linestyle="--", marker="x",
                        label=f"ESTIMATE: {label}")
        ax.set_xlabel("memory budget (% of all experts' bytes)")
        ax.set_ylabel(ylabel)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{ylabel}\n{machine}, {date}" + ("  (dashed: estimates)" if name == "decode_tps.png" and
                                                        estimates else ""), fontsize=9)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
