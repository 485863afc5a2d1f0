"""edge-export: quantise a CoSMoE checkpoint and write an artifact for ExecuTorch and ONNX."""

import signal
import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from cosmoe_edge.errors import exit_error
from cosmoe_edge.runtime.manifest import BACKENDS, peer_files, peer_rows_bytes

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


fail = partial(exit_error, "edge-export")  # one line on stderr, exit code 2 (or the one given)


def human(n: float) -> str:
    """Decimal units, as every other figure of the project (1 MB = 1e6 bytes)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@app.command(help="Quantise MODEL (a model.pt from edge-train) and write an artifact folder: a backbone plus one "
                  "program file per expert per layer, for ExecuTorch (.pte, XNNPACK) and ONNX (onnxruntime), "
                  "with a manifest of sizes and checksums. The artifact is then run through the edge runtime "
                  "and compared with the eager model (unless --no-verify). The work happens in .OUT.partial beside --out, "
                  "renamed into place when complete; interrupted, its finished parts stay there for --resume.")
def main(
    model: Annotated[Path, typer.Argument(help="Checkpoint written by edge-train (e.g. models/cosmoe-default.pt).")],
    quant: Annotated[str, typer.Option(help="Weights: fp32, int8 (per channel; ONNX experts then load by mapping "
                                            "their weights, no program to create) or int4 (per group).")] = "int4",
    group_size: Annotated[int, typer.Option(help="int4 group size along each layer's input dimension.")] = 32,
    head_quant: Annotated[str, typer.Option(help="The LM head under --quant int4: int4, int8, or auto (int4 when it "
                                                 "adds at most 0.5% held-out perplexity over the fp32 head, measured "
                                                 "on the model before building; the head is read at every token).")
                          ] = "auto",
    backend: Annotated[str, typer.Option(help="executorch, onnx, or all.")] = "all",
    out: Annotated[Path, typer.Option(help="Artifact folder to write.")] = Path("artifact"),
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    verify: Annotated[bool, typer.Option(help="Compare the written artifact with the eager model.")] = True,
    jobs: Annotated[int | None, typer.Option(help="Worker processes building parts in parallel (default: what the "
                                                  "cores and the free memory allow; a higher number is lowered).",
                                             show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted export into --out (same "
                                                          "model and options), keeping the parts it finished.")] = False,
):
    from cosmoe_edge.export.quantize import HEAD_CHOICES, SCHEMES

    if quant not in SCHEMES:
        fail(f"unknown --quant {quant!r}; choose one of {', '.join(SCHEMES)}")
    if head_quant not in HEAD_CHOICES:
        fail(f"unknown --head-quant {head_quant!r}; choose one of {', '.join(HEAD_CHOICES)}")
    if backend != "all" and backend not in BACKENDS:
        fail(f"unknown --backend {backend!r}; choose executorch, onnx or all")
    if not model.is_file():
        fail(f"model not found: {model}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        fail(f"{out} exists and is not empty; pass --force to replace it")
    if jobs is not None and jobs < 1:
        fail("--jobs must be at least 1")
    backends = list(BACKENDS) if backend == "all" else [backend]

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from cosmoe_edge.errors import EdgeError
    from cosmoe_edge.export.artifact import export_artifact
    from cosmoe_edge.export.build import quiet
    from cosmoe_edge.export.schedule import choose_jobs
    from cosmoe_edge.export.source import Source

    quiet()
    # `kill` (SIGTERM) stops an export like Ctrl-C does: the finished parts are kept for --resume
    signal.signal(signal.SIGTERM, interrupt)
    try:
        with Source(model) as source:
            cfg = source.cfg
    except EdgeError as e:
        fail(str(e))
    jobs, lowered = choose_jobs(jobs, cfg)
    if lowered:
        print(f"edge-export: {lowered}", file=sys.stderr)
    console = Console(stderr=True)
    partial = out.parent / f".{out.name}.partial"
    with Progress(TextColumn("{task.description:<26}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True) as bar:
        tasks = {}

        def progress(what, advance, total):
            if what not in tasks:  # a backend's parts, or a stage after them
                label = f"{what} parts" if what in BACKENDS else what
                tasks[what] = bar.add_task(label, total=total)
            bar.update(tasks[what], advance=advance, **({"total": total} if total else {}))

        try:
            manifest = export_artifact(model, out, quant, group_size, backends, jobs, verify, progress, resume,
                                       head_quant)
        except EdgeError as e:
            fail(str(e))
        except OSError as e:
            fail(f"cannot write {e.filename or out}: {e.strerror or e}")
        except KeyboardInterrupt:
            kept = (f"; the finished parts are kept in {partial}: the same command with --resume continues"
                    if partial.exists() else "")
            fail(f"interrupted; nothing was written to {out}{kept}", 130)
    print_summary(manifest, out)
    failed = [b for b, r in manifest.get("verification", {}).items() if not r["passed"]]
    if failed:
        print(f"edge-export: verification missed its goal for {', '.join(failed)} (figures above); "
              f"the artifact is written", file=sys.stderr)
        raise typer.Exit(3)


def interrupt(signum, frame):
    raise KeyboardInterrupt


def print_summary(m: dict, out: Path):
    from rich.console import Console
    from rich.table import Table

    q = m["quant"]
    x = m["export"]
    t = Table(title=f"{out}  ({q['scheme']}" + (f", group {q['group_size']}" if q["group_size"] else "") +
              f", exported in {m['export_seconds']:.0f}s with {x['jobs']} worker{'s' * (x['jobs'] > 1)}" +
              (f", {x['resumed_parts']} parts resumed" if x["resumed_parts"] else "") + ")")
    for col in ("backend", "files", "total", "backbone", "all experts", "one expert"):
        t.add_column(col, justify="left" if col == "backend" else "right")
    # the embedding counts with the backbone
    shared = sum(m[k]["bytes"] for k in ("tokenizer", "routers", "compressed_experts") if k in m)
    shared += sum(e["bytes"] for e in peer_files(m))
    lines = []
    for b, s in m["backends"].items():
        backbone = sum(f["bytes"] for f in s["backbone"]["files"]) + m["embedding"]["bytes"]
        experts = sum(e["bytes"] for e in s["experts"])
        one = max((e["bytes"] for e in s["experts"]), default=0)
        t.add_row(b, str(len(s["backbone"]["files"]) + len(s["experts"])), human(backbone + experts + shared),
                  human(backbone), human(experts), human(one))
        v = m.get("verification", {}).get(b)
        if v is None:
            lines.append(f"{b}: verification skipped (--no-verify)")
            continue
        h = v["heldout"]
        line = (f"{b}: verification {'PASS' if v['passed'] else 'FAIL'}: held-out top-1 agreement with eager fp32 "
                f"{h['top1_agreement']:.1%}, perplexity {h['ppl_artifact']:.3f} vs {h['ppl_eager_fp32']:.3f} "
                f"({h['ppl_change']:+.2%}")
        line += f", goal <= {v['goal_ppl_change']:.0%})" if "goal_ppl_change" in v else ")"
        if "greedy" in v:
            g = v["greedy"]
            line += (f"; greedy {g['new_tokens']} tokens x {g['prompts']} prompts "
                     f"{'identical' if g['greedy_identical'] else 'DIFFER'}, max |logit diff| {g['max_logit_diff']:.1e}")
        lines.append(line)
    Console(width=max(100, Console().width)).print(t)
    print("\n".join(lines))
    for s in m["backends"].values():
        if "delegation" in s:
            d = s["delegation"]
            portable = ", ".join(f"{k} x{v}" for k, v in d["portable_ops"].items()) or "none"
            print(f"executorch: {d['xnnpack_ops']} ops in XNNPACK, portable ops: {portable}; "
                  f"backbone delegate calls per method: {max(d['backbone_delegate_calls'].values())}")
        if "matmulnbits" in s and m["quant"]["scheme"] != "fp32":
            mm = s["matmulnbits"]
            bb = sum(v["matmulnbits"] for v in mm["backbone"].values())
            want = sum(v["linear_layers"] for v in mm["backbone"].values())
            if s.get("expert_form") == "weights":
                experts = (f"experts in the weights form (int8 + one scale per column, run by one shared "
                           f"DynamicQuantizeMatMul graph; own session after {s.get('promote_after', '?')} uses)")
            else:
                experts = (f"{mm['per_expert']} per expert "
                           f"({'all experts' if mm['experts_ok'] else 'NOT all experts'})")
            print(f"onnx: MatMulNBits {bb}/{want} linear layers in the backbone, {experts}; routers stay fp32")
    emb = m["embedding"]["bytes"]
    print(f"embedding table ({m['quant']['embedding']}): {human(emb)}")
    if p := m.get("peer"):
        print(f"PEER rows ({p['dtype']}, u and v of an expert bundled, read in {p['page_bytes']}-byte pages): "
              f"{human(peer_rows_bytes(m))} in {len(p['layers'])} file(s), layers {', '.join(sorted(p['layers']))}; "
              f"{p['heads']} heads x top-{p['top_k']} rows per token and layer")
    c = q.get("head_choice")
    head = f"LM head: {q['head']}"
    if c:
        trials = ", ".join(f"{b} {c[b]:.3f}" for b in m["backends"] if b in c)
        head += (f" (auto: held-out perplexity with an int4 head: {trials}; fp32 head {c['fp32']:.3f}; int4 is "
                 f"used only within +{c['tolerance']:.1%} of the fp32 head on every backend)")
    print(head)


if __name__ == "__main__":
    app()
