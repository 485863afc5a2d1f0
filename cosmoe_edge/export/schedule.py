"""Run the parts of an export in worker processes, bounded by memory, and resumably.

The work folder `.{out}.partial` holds the files finished so far, a record of each one with its
sha256 in `.export/parts/` (written by the worker right after the file: a part counts as done only
when its file still matches), and `.export/journal.json`: the learned templates and the options they
were made with. `--resume` continues only an export of the same checkpoint with the same options and
exporter versions.
"""

import fcntl
import json
import math
import multiprocessing
import os
import shutil
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from cosmoe_edge.errors import EdgeError, ExportError
from cosmoe_edge.export import build
from cosmoe_edge.runtime.manifest import sha256_file

# A worker's peak RSS: the libraries (torch, executorch, onnx: measured ~0.6 GB after the first part)
# plus a multiple of the largest part's fp32 weights (lowering holds the module, its quantised copy,
# the traced graph and the serialised program). Calibrated by scripts/export_scale.py, which prints the
# measured peaks next to this estimate.
WORKER_BASE_BYTES = 700e6
WORKER_BYTES_PER_WEIGHT_BYTE = 8
PARENT_RESERVE_BYTES = 500e6  # the main process: the embedding table while it is written, the pool


def checkpoint_identity(path) -> dict:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


class Workdir:
    def __init__(self, out: Path, options: dict, resume: bool):
        self.root = out.parent / f".{out.name}.partial"
        self.state = self.root / ".export"
        self.options, self.done, self.templates = options, {}, {}
        self.root.mkdir(exist_ok=True)
        self._fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ExportError(f"another edge-export is writing {out} (its work folder {self.root} is locked)",
                              "busy") from None
        journal = self.state / "journal.json"
        if resume and journal.is_file():
            saved = json.loads(journal.read_text())
            if saved["options"] != options:
                changed = sorted(k for k in options if saved["options"].get(k) != options[k])
                if "scheme" in changed and "head" in changed:
                    changed.remove("head")  # the head's scheme follows the artifact's
                self.close()
                raise ExportError(f"the unfinished export in {self.root} was made with another {', '.join(changed)}; "
                                  "drop --resume to start over", "resume_mismatch")
            self.templates = saved["templates"]
            for f in sorted((self.state / "parts").glob("*.json")):
                record = json.loads(f.read_text())
                rel = record["path"]
                path = self.root / rel
                if path.is_file() and path.stat().st_size == record["bytes"] and sha256_file(path) == record["sha256"]:
                    self.done[rel] = record
        else:
            for child in self.root.iterdir():  # a stale unfinished export, not asked to resume
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        self.state.mkdir(exist_ok=True)
        self.resumed = len(self.done)
        self.save()

    def template_file(self, backend: str, kind: str) -> str:
        return str(self.state / f"template-{backend}-{kind}.pkl")

    def save(self):
        build.write_atomic(self.state / "journal.json",
                           json.dumps({"options": self.options, "templates": self.templates}).encode())

    def finish(self):
        shutil.rmtree(self.state, ignore_errors=True)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self):
        shutil.rmtree(self.root, ignore_errors=True)
        self.close()

    def keep_or_discard(self):
        """Interrupted: keep what is finished for --resume (nothing finished: nothing to keep)."""
        if not list((self.state / "parts").glob("*.json")):
            self.discard()
        self.close()


def available_memory() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: line.split()[1] for line in f}
    return int(info["MemAvailable"]) * 1024


def worker_estimate(cfg) -> int:
    """Expected peak RSS of one worker: from the largest part's fp32 weights (expert, layer or head)."""
    d = cfg.dim
    rank = cfg.wd_rank if cfg.expert_kind == "wd" else 0
    expert = 3 * (rank * (d + cfg.expert_hidden) if rank else d * cfg.expert_hidden)
    attn = d * cfg.head_dim * (2 * cfg.n_heads + 3 * cfg.n_kv_heads) + cfg.n_heads * cfg.head_dim * d
    layer = attn + 3 * d * cfg.shared_expert_hidden + cfg.num_experts * d
    head = cfg.vocab_size * d
    return int(WORKER_BASE_BYTES + WORKER_BYTES_PER_WEIGHT_BYTE * 4 * max(expert, layer, head))


def choose_jobs(requested: int | None, cfg) -> tuple[int, str | None]:
    """Workers the cores and the free memory allow; a request above that is lowered, with a message."""
    per, free = worker_estimate(cfg), available_memory()
    allowed = max(1, int((free - PARENT_RESERVE_BYTES) // per))
    cores = os.cpu_count() or 1
    if requested is None:
        return min(cores, allowed), None
    if requested > allowed:
        return allowed, (f"--jobs {requested} lowered to {allowed}: a worker needs about {per / 1e9:.1f} GB for this "
                         f"model and {free / 1e9:.1f} GB are available")
    return requested, None


def plan(cfg, backends: list[str]) -> list[tuple[str, str, list[tuple]]]:
    """(backend, kind, indices) per shape: the head, the layer programs (those of PEER layers a shape of
    their own, kind "peer"), the MoE layers' experts."""
    kinds = cfg.ffn_kinds
    moe = [i for i, kind in enumerate(kinds) if kind == "moe"]
    groups = []
    for b in backends:
        groups.append((b, "head", [()]))
        groups.append((b, "layer", [(i,) for i in moe]))
        if "peer" in kinds:
            groups.append((b, "peer", [(i,) for i, kind in enumerate(kinds) if kind == "peer"]))
        groups.append((b, "expert", [(layer, e) for layer in moe for e in range(cfg.num_experts)]))
    return [g for g in groups if g[2]]


def build_backends(ckpt_path: str, cfg, backends, scheme, head_scheme, group_size, jobs, work: Workdir, progress):
    """Build every part not already done (the head in `head_scheme`); returns ({backend: [record]}, stats)."""
    groups = plan(cfg, backends)
    total = {b: sum(len(ix) for bb, _, ix in groups if bb == b) for b in backends}
    records = {b: [] for b in backends}
    for r in work.done.values():
        records[r["backend"]].append(r)
    if progress:
        for b in backends:
            progress(b, len(records[b]), total[b])
    ready, waiting = [], {}  # tasks to submit now; tasks waiting for a template: {template_key: [task]}
    for b, kind, indices in groups:
        todo = [ix for ix in indices if build.part_path(b, scheme, kind, ix) not in work.done]
        if not todo:
            continue
        key = f"{b}/{kind}"
        tfile = work.template_file(b, kind)
        templated = kind != "head" and len(indices) >= 2 and not build.is_weights_form(b, scheme, kind)
        chunk = cfg.num_experts if kind == "expert" else max(1, math.ceil(len(todo) / max(jobs, 1)))
        if templated and key not in work.templates:
            ready.insert(0, (b, kind, indices[:2], tfile, True))  # the longest tasks first
            todo = [ix for ix in todo if ix not in indices[:2]]
            waiting[key] = [(b, kind, todo[i:i + chunk], tfile, False) for i in range(0, len(todo), chunk)]
        else:
            use = tfile if work.templates.get(key) else None
            ready += [(b, kind, todo[i:i + chunk], use, False) for i in range(0, len(todo), chunk)]
    stats = {"jobs": jobs, "worker_peak_rss_bytes": 0, "resumed_parts": work.resumed}
    # spawn: forked children of a process that has run torch can deadlock in its thread pools
    pool = ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=multiprocessing.get_context("spawn"),
                               initializer=ignore_sigint)
    running = {}
    try:
        while ready or running:
            for task in ready:
                b, kind, indices, tfile, learn = task
                running[pool.submit(build.build_parts, ckpt_path, b, head_scheme if kind == "head" else scheme,
                                    group_size, str(work.root), kind, indices, tfile, learn)] = task
            ready = []
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                b, kind, indices, tfile, learn = running.pop(fut)
                try:
                    res = fut.result()
                except (EdgeError, KeyboardInterrupt):
                    raise
                except Exception as e:  # torch.export or a lowering refused this part: say which, in one line
                    first = (str(e).strip().splitlines() or [""])[0][:200]
                    what = build.part_name(kind, indices[0]).replace("_", " ")
                    raise ExportError(f"building the {b} {what} failed: {type(e).__name__}: {first}",
                                      "build_failed") from e
                known = {x["path"] for x in records[b]}
                new = [r for r in res["records"] if r["path"] not in known]
                records[b] += new
                stats["worker_peak_rss_bytes"] = max(stats["worker_peak_rss_bytes"], res["peak_rss"])
                if learn:
                    work.templates[f"{b}/{kind}"] = res["template"]
                    ready += [(tb, tk, ix, tf if res["template"] else None, False)
                              for tb, tk, ix, tf, _ in waiting.pop(f"{b}/{kind}")]
                    work.save()
                if progress:
                    progress(b, len(new), None)
    except BaseException:
        # Ctrl-C or a failed part: stop the workers now rather than wait for their current programs
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return records, stats


def ignore_sigint():
    """Workers leave Ctrl-C to the parent, which stops them and keeps the finished parts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
