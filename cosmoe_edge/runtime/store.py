"""Experts on flash: where each (layer, expert) program is, what it costs resident, and loading one
on demand: size checked always, sha256 on its first load and again whenever the file changed since
(its inode, size or modification time); without sha256 checks, an ExecuTorch program's header is
checked before every load instead."""

import os
import time
from pathlib import Path

from cosmoe_edge.errors import ArtifactError
from cosmoe_edge.runtime.backends import open_program
from cosmoe_edge.runtime.manifest import check_file, expert_cost


class ExpertStore:
    def __init__(self, artifact: Path, backend: str, entries: list[dict], verify_sha: bool, threads: int):
        self.artifact, self.backend, self.verify_sha, self.threads = Path(artifact), backend, verify_sha, threads
        self.entries = {(e["layer"], e["expert"]): e for e in entries}
        self.verified: dict = {}  # key -> (inode, size, mtime) of the file when its sha256 matched
        self.loads, self.load_ns = 0, 0

    def cost(self, key) -> int:
        return expert_cost(self.entries[key])

    def total_cost(self) -> int:
        return sum(self.cost(k) for k in self.entries)

    def max_cost(self) -> int:
        return max(self.cost(k) for k in self.entries)

    def load(self, key):
        if key not in self.entries:
            raise ArtifactError(f"the manifest lists no expert {key[1]} in layer {key[0]}", "missing_expert")
        t = time.perf_counter_ns()
        entry = self.entries[key]
        try:
            st = os.stat(self.artifact / entry["path"])
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            identity = None  # check_file says what is missing
        fresh = self.verify_sha and self.verified.get(key) != identity
        path = check_file(self.artifact, entry, fresh)
        if self.verify_sha:
            self.verified[key] = identity
        program = open_program(self.backend, path, ["forward"], self.threads, expert=True, sha_checked=self.verify_sha)
        self.loads += 1
        self.load_ns += time.perf_counter_ns() - t
        return program
