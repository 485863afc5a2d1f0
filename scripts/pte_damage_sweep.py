"""What the checks before an ExecuTorch program load cost, and what they catch (docs/RUNTIME.md).

Usage: python scripts/pte_damage_sweep.py EXPERT.pte [--rounds 20] [--no-sweep] [--unchecked]

1. Cost: loads of every .pte beside EXPERT (program + its forward method), interleaved: with ExecuTorch's
   Minimal verification; with the full flatbuffer verification the runtime uses (the load of a file whose
   sha256 was checked); and with the header check before it (a load without sha256 checks). Medians,
   and the median of the paired differences to the first, in microseconds.
2. Sweep: each byte of EXPERT's flatbuffer (the header's program size) set to 0xFF, then to 0x00 (0x55
   where it already was), loaded through the runtime with no sha256 check, and run once. Each outcome is
   counted: refused (one-line error), ran (the damage did not matter or changed only values), or crashed
   (the process died: ExecuTorch aborted or segfaulted). Crashes are run in child processes, restarted
   after the byte that killed them. --unchecked: the same sweep with ExecuTorch's Minimal verification
   and no header check (what the runtime did before), for comparison.
"""

import argparse
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

WORKER = r'''
import sys
from pathlib import Path
import numpy as np
from cosmoe_edge.errors import ArtifactError
from cosmoe_edge.runtime.backends import ExecuTorchProgram, import_runtime
import_runtime("executorch", 1)
data, start, end, dim = Path(sys.argv[1]).read_bytes(), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out, unchecked = Path(sys.argv[5]), sys.argv[6] == "unchecked"
if unchecked:
    import torch
    from executorch.runtime import Runtime, Verification

    class ExecuTorchProgram:  # noqa: F811  (the load before the checks)
        def __init__(self, path, methods):
            try:
                self.m = Runtime.get().load_program(path, verification=Verification.Minimal).load_method("forward")
            except RuntimeError:
                raise ArtifactError("refused", "corrupt_program") from None

        def run(self, method, x):
            try:
                self.m.execute([torch.from_numpy(a) for a in x])
            except RuntimeError:
                raise ArtifactError("refused", "program_failed") from None
for i in range(start, end):  # variant i: byte i // 2 set to 0xFF (even i) or 0x00 (odd i)
    off, val = divmod(i, 2)
    val = 0xFF if val == 0 else 0x00
    b = bytearray(data)
    b[off] = val if b[off] != val else 0x55
    out.write_bytes(b)
    print(i, end=" ", flush=True)
    try:
        ExecuTorchProgram(out, ["forward"]).run("forward", [np.zeros((1, dim), np.float32)])
        print("ran", flush=True)
    except ArtifactError:
        print("refused", flush=True)
'''


def cost(expert: Path, rounds: int) -> dict:
    from cosmoe_edge.runtime.backends import check_pte_header, import_runtime

    import_runtime("executorch", 1)  # first: it keeps the imports' log lines off the terminal
    from executorch.runtime import Runtime, Verification

    rt = Runtime.get()

    def minimal(p):
        prog = rt.load_program(p, verification=Verification.Minimal)
        return prog, prog.load_method("forward")

    def verified(p):
        prog = rt.load_program(p, verification=Verification.InternalConsistency)
        return prog, prog.load_method("forward")

    def header(p):
        check_pte_header(p)
        return verified(p)

    paths = sorted(str(p) for p in expert.parent.glob("*.pte"))
    ways = {"Minimal verification": minimal, "full verification": verified, "header check + full verification": header}
    times = {name: [] for name in ways}
    for r in range(rounds):
        items = list(ways.items())
        items = items[r % len(items):] + items[:r % len(items)]  # rotate who goes first
        for p in paths:
            for name, f in items:
                t = time.perf_counter_ns()
                loaded = f(p)
                times[name].append(time.perf_counter_ns() - t)
                del loaded
    base = times["Minimal verification"]
    return {k: (statistics.median(v) / 1e3, statistics.median(a - b for a, b in zip(v, base, strict=True)) / 1e3)
            for k, v in times.items()}


def sweep(expert: Path, dim: int, scratch: Path, unchecked: bool) -> dict:
    data = expert.read_bytes()
    program_size = struct.unpack_from("<Q", data, 16)[0]
    counts, crashed_at, i = {"refused": 0, "ran": 0, "crashed": 0}, [], 0
    while i < 2 * program_size:
        r = subprocess.run([sys.executable, "-c", WORKER, str(expert), str(i), str(2 * program_size), str(dim),
                            str(scratch), "unchecked" if unchecked else "checked"], capture_output=True, text=True)
        lines = r.stdout.split("\n")
        for line in lines:
            if len(line.split()) == 2:
                counts[line.split()[1]] += 1
        if r.returncode == 0:
            break
        dead = int(lines[-1].split()[0]) if lines[-1].split() else i  # the variant loading when the process died
        counts["crashed"] += 1
        crashed_at.append(dead // 2)
        i = dead + 1
    return {"program_bytes": program_size, **counts, "crashed_at": crashed_at}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("expert", type=Path)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--unchecked", action="store_true", help="sweep without the header check and full verification")
    a = ap.parse_args()
    for name, (us, extra) in cost(a.expert, a.rounds).items():
        print(f"load, {name}: {us:.0f} us (median), {extra:+.0f} us (paired)")
    if not a.no_sweep:
        import json

        dim = json.loads((a.expert.parents[2] / "manifest.json").read_text())["model"]["dim"]
        s = sweep(a.expert, dim, a.expert.parent.parent / ".damaged.pte", a.unchecked)
        (a.expert.parent.parent / ".damaged.pte").unlink(missing_ok=True)
        print(f"{'unchecked' if a.unchecked else 'checked'} sweep of {s['program_bytes']} flatbuffer bytes x 2 values: "
              f"refused {s['refused']}, ran {s['ran']}, crashed {s['crashed']} (at bytes {s['crashed_at']})")


if __name__ == "__main__":
    main()
