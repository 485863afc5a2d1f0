"""PNG plots of a benchmark run: one panel per artifact and backend, one line per cache policy
(with or without prefetch), budgets on the x axis; each figure titled with the machine and the date.
The device estimates get a figure of their own, labelled as estimates."""

from collections import defaultdict
from pathlib import Path

from cosmoe_edge.bench.runs import all_resident, engine_key

STYLES = {"nextuse": ("tab:green", "-"), "nextuse+prefetch": ("tab:green", ":"),
          "lru": ("tab:blue", "-"), "lru+prefetch": ("tab:blue", ":"), "lfu": ("tab:orange", "-"),
          "lfu+prefetch": ("tab:orange", ":")}
DEVICE_COLORS = ["tab:red", "tab:purple", "tab:green", "tab:brown"]


def budget_fraction(row) -> float | None:
    if row.get("memory_budget_bytes") and row.get("expert_bytes_total"):
        return min(1.0, row["memory_budget_bytes"] / row["expert_bytes_total"])
    return None


def variant(row) -> str:
    return (row["policy"] + ("+prefetch" if row.get("prefetch") else "")
            + (f" [{row['selection']}]" if row.get("selection") else ""))


def panel(row) -> tuple[str, str]:
    artifact, backend = engine_key(row)
    return Path(artifact).name, backend


def panels(rows):
    """{(artifact name, backend[:engine]): {variant: [(budget fraction, row)]}} over the budgets that ran (not
    the all-resident reference, nor the no-cache or eager baselines)."""
    out = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if "decode_tokens_per_s" not in r or r["policy"] in ("none", "eager") or r["budget"] == "all":
            continue
        f = budget_fraction(r)
        if f is not None:
            out[panel(r)][variant(r)].append((f, r))
    return {k: {v: sorted(p, key=lambda x: x[0]) for v, p in sorted(d.items())} for k, d in sorted(out.items())}


def no_cache(rows) -> dict:
    return {panel(r): r for r in rows if r["policy"] == "none" and "decode_tokens_per_s" in r}


def _grid(plt, n):
    cols = min(2, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows + 0.9), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _finish(fig, axes, ylabel, title, path):
    for ax in axes:
        if ax.get_visible():
            ax.invert_xaxis()
            ax.grid(alpha=0.3)
            ax.set_xlabel("memory budget (% of all experts' and PEER rows' bytes)", fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=8)
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize=8,
               frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07 + 0.02 * ((len(handles) - 1) // 4), 1, 1))
    fig.savefig(path, dpi=110)


def draw(rows, out_dir: Path, machine: str, date: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = panels(rows)
    if not grid:
        return []
    floor = no_cache(rows)
    full = {panel(r): r["decode_tokens_per_s"] for r in all_resident(rows).values()}
    charts = [
        ("decode_ratio.png", "decode tokens/s / all resident",
         lambda key, r: r["decode_tokens_per_s"] / full.get(key, float("nan"))),
        ("decode_tps.png", "decode tokens/s", lambda key, r: r["decode_tokens_per_s"]),
        ("hit_rate.png", "expert cache hit rate", lambda key, r: r["expert_hit_rate"]),
        ("peak_rss.png", "peak RSS (MB)", lambda key, r: r["peak_rss_bytes"] / 1e6),
        ("read_per_token.png", "storage read per token (KB)",
         lambda key, r: r["storage_read_bytes"] / max(1, r["generated_tokens"]) / 1e3),
        ("loaded_per_token.png", "loaded per decode token (KB: missed experts' files, PEER pages)",
         lambda key, r: r.get("loaded_kb_per_token", float("nan"))),
        ("ttft.png", "time to first token (ms)", lambda key, r: r["ttft_ms"]),
    ]
    cold = any(r.get("cold") for r in rows)
    written = []
    for name, ylabel, value in charts:
        fig, axes = _grid(plt, len(grid))
        for ax, (key, lines) in zip(axes, grid.items(), strict=False):
            for v, pts in lines.items():
                color, style = STYLES.get(v, (None, "-"))
                ax.plot([100 * f for f, _ in pts], [value(key, r) for _, r in pts], marker="o", markersize=4,
                        color=color, linestyle=style, label=v)
            if key in floor and name in ("decode_ratio.png", "decode_tps.png", "hit_rate.png"):
                ax.axhline(value(key, floor[key]), color="grey", linestyle="--", linewidth=1,
                           label="no cache (every use loads)")
            ax.set_title(f"{key[0]} / {key[1]}", fontsize=9)
        _finish(fig, axes, ylabel, f"{ylabel}{' (cold)' if cold else ''} - {machine}, {date}", out_dir / name)
        plt.close(fig)
        written.append(out_dir / name)

    if any("perplexity" in r for r in rows):
        written.append(frontier(plt, rows, out_dir / "frontier.png", f"{machine}, {date}", cold))

    devices = sorted({k[len("estimate_"):-len("_tokens_per_s")] for r in rows for k in r
                      if k.startswith("estimate_") and k.endswith("_tokens_per_s")} - {"this-machine"})
    if devices:
        fig, axes = _grid(plt, len(grid))
        for ax, (key, lines) in zip(axes, grid.items(), strict=False):
            pts = lines.get("lru", [])
            ax.plot([100 * f for f, _ in pts], [r["decode_tokens_per_s"] for _, r in pts], marker="o", markersize=4,
                    color="tab:blue", label="measured here (lru)")
            for dev, color in zip(devices, DEVICE_COLORS, strict=False):
                ax.plot([100 * f for f, _ in pts], [r.get(f"estimate_{dev}_tokens_per_s") for _, r in pts],
                        marker="x", color=color, linestyle="--", label=f"ESTIMATE {dev}")
            ax.set_title(f"{key[0]} / {key[1]}", fontsize=9)
        _finish(fig, axes, "decode tokens/s",
                f"ESTIMATED decode tokens/s on device profiles (dashed; not measured) - from {machine}, {date}",
                out_dir / "decode_estimates.png")
        plt.close(fig)
        written.append(out_dir / "decode_estimates.png")
    return written


def frontier(plt, rows, path: Path, where: str, cold: bool) -> Path:
    """The speed-quality frontier: per artifact and backend, decode tokens/s against edge-eval's perplexity,
    one marker per budget, one point per selection (labelled), the all-resident run as the reference."""
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if "perplexity" in r and "decode_tokens_per_s" in r:
            groups[panel(r)][r["budget"]].append(r)
    fig, axes = _grid(plt, len(groups))
    for ax, (key, budgets) in zip(axes, sorted(groups.items()), strict=False):
        for (budget, pts), marker in zip(sorted(budgets.items(), key=lambda b: -(budget_fraction(b[1][0]) or 1)),
                                         "osD^v<>p*", strict=False):
            ax.scatter([r["perplexity"] for r in pts], [r["decode_tokens_per_s"] for r in pts], marker=marker,
                       label=f"budget {budget}")
            for r in pts:
                ax.annotate(r.get("selection") or "default", (r["perplexity"], r["decode_tokens_per_s"]),
                            fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_title(f"{key[0]} / {key[1]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlabel("held-out perplexity (edge-eval)", fontsize=8)
        ax.set_ylabel("decode tokens/s", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"speed-quality frontier{' (cold)' if cold else ''} - {where}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
