"""edge-eval: perplexity of an artifact as the runtime runs it, under the same options as edge-run."""

import json
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from cosmoe_edge.errors import EdgeError, exit_error
from cosmoe_edge.runtime.options import RunOptions

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


fail = partial(exit_error, "edge-eval")  # one line on stderr, exit code 2 (or the one given)


@app.command(help="Perplexity of an ARTIFACT as edge-run runs it: the text is fed one token at a time (teacher "
                  "forcing), so the expert cache, the memory budget and the miss policies act as in generation; "
                  "the speed and misses of that run come with the perplexity. Without --text it scores the "
                  "held-out text the artifact carries (the model's validation sample).")
def main(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder written by edge-export.")],
    text: Annotated[Path | None, typer.Option(help="UTF-8 text file to score (default: the artifact's held-out "
                                                   "text).")] = None,
    tokens: Annotated[int, typer.Option(help="Score at most this many tokens.")] = 2048,
    window: Annotated[int, typer.Option(help="Tokens per window; each window starts a new sequence.")] = 256,
    backend: Annotated[str, typer.Option(help="executorch or onnx.")] = RunOptions.backend,
    memory_budget: Annotated[str, typer.Option(help="Bytes of resident experts: all, 64MB, 1.5GiB, or 25%.")]
    = RunOptions.memory_budget,
    cache_policy: Annotated[str, typer.Option(help="nextuse, lru, lfu or none (as edge-run).")] = RunOptions.cache_policy,
    prefetch: Annotated[bool, typer.Option(help="Guess the next layer's experts and load them early.")] = RunOptions.prefetch,
    cold: Annotated[bool, typer.Option(help="Drop the artifact's files from the page cache first.")] = RunOptions.cold,
    verify: Annotated[bool, typer.Option(help="Check each file's sha256 on its first load.")] = RunOptions.verify,
    threads: Annotated[int, typer.Option(help="Threads per program call.")] = RunOptions.threads,
    preload: Annotated[bool, typer.Option(help="Load every expert first.")] = RunOptions.preload,
    experts_per_token: Annotated[int | None, typer.Option(help="Experts that run per token (as edge-run).")]
    = RunOptions.experts_per_token,
    on_miss: Annotated[str, typer.Option(help="wait, compressed or skip (as edge-run).")] = RunOptions.on_miss,
    skip_below: Annotated[float, typer.Option(help="With --on-miss skip: the weight below which a miss is "
                                                   "dropped.")] = RunOptions.skip_below,
    cache_bias: Annotated[float, typer.Option(help="Added to resident experts' router logits (as edge-run).")]
    = RunOptions.cache_bias,
    engine: Annotated[str | None, typer.Option(help="native or python (as edge-run).")] = RunOptions.engine,
    packed_cache: Annotated[bool, typer.Option(help="native: use edge-prepare's packed-weights cache.")]
    = RunOptions.packed_cache,
    report: Annotated[Path | None, typer.Option(help="Write the result here as JSON.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cosmoe_edge.runtime.backends import silenced_stderr
    from cosmoe_edge.runtime.perplexity import evaluate

    try:
        body = None
        if text is not None:
            try:
                body = text.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                fail(f"cannot read --text {text}: {e}")
        options = RunOptions(prompt=body or "-", backend=backend, memory_budget=memory_budget,
                             cache_policy=cache_policy, prefetch=prefetch, cold=cold, verify=verify, threads=threads,
                             preload=preload, experts_per_token=experts_per_token, on_miss=on_miss,
                             skip_below=skip_below, cache_bias=cache_bias, engine=engine, packed_cache=packed_cache)
        with Progress(TextColumn("edge-eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      disable=quiet, transient=True) as bar, silenced_stderr():
            task = bar.add_task("eval", total=None)
            result = evaluate(artifact, options.check(), body, window, tokens,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    except EdgeError as e:
        fail(str(e))
    if report is not None:
        report.write_text(json.dumps(result, indent=1))
    s = result["selection"]
    print(f"perplexity {result['perplexity']:.3f} over {result['tokens_scored']} tokens; "
          f"{result['tokens_per_s']:.1f} tok/s, {result['misses_per_token']:.3f} misses/token "
          f"(hit rate {result['expert_hit_rate']:.1%}); experts/token {s['experts_per_token']}, "
          f"on miss {s['on_miss']}, cache bias {s['cache_bias']:g}")


def command(artifact, options: RunOptions, tokens: int, report=None) -> list[str]:
    """The edge-eval command line for these options (edge-run's, less the prompt and sampling)."""
    from cosmoe_edge.runtime.cli import command as run_command

    argv = run_command(artifact, options, report, module="cosmoe_edge.runtime.eval_cli",
                       skip=("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed"))
    return argv + [f"--tokens={tokens}"]


if __name__ == "__main__":
    app()
