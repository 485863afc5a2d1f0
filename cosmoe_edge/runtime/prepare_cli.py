"""edge-prepare: write the native engine's packed-weights cache for an artifact, once per device."""

import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from cosmoe_edge.errors import EdgeError, exit_error

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
fail = partial(exit_error, "edge-prepare")


@app.command(help="Prepare ARTIFACT for this device: load every ExecuTorch program once through the native engine "
                  "and keep XNNPACK's packed weights in a cache outside the artifact (keyed by the artifact, the "
                  "ExecuTorch version and the CPU's features), so that edge-run maps an expert's packed bytes on a "
                  "miss instead of packing them. Run it again after re-exporting or upgrading; edge-run says when it "
                  "runs without a fitting cache.")
def main(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder written by edge-export (read only).")],
    cache_dir: Annotated[Path | None, typer.Option(help="Where prepared caches live (default: $COSMOE_EDGE_CACHE, "
                                                        "else ~/.cache/cosmoe-edge).")] = None,
    status: Annotated[bool, typer.Option("--status", help="Only say whether a fitting cache exists.")] = False,
    threads: Annotated[int, typer.Option(help="XNNPACK threads while packing.")] = 1,
):
    from cosmoe_edge.runtime.backends import silenced_stderr
    from cosmoe_edge.runtime.manifest import load_manifest
    from cosmoe_edge.runtime.prepare import prepare
    from cosmoe_edge.runtime.prepare import status as cache_status

    try:
        load_manifest(artifact)
        if status:
            path, line = cache_status(artifact, cache_dir)
            print(line)
            sys.exit(0 if path else 1)
        print(f"edge-prepare: packing {artifact}'s programs (every expert once) ...", file=sys.stderr)
        with silenced_stderr():
            meta = prepare(artifact, cache_dir, threads)
    except EdgeError as e:
        fail(str(e))
    print(f"{meta['folder']}: {meta['packed']['bytes'] / 1e6:.1f} MB packed in {meta['seconds']:.1f} s "
          f"(ExecuTorch {meta['executorch_version']})")


if __name__ == "__main__":
    app()
