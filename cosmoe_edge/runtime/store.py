"""Experts on flash: where each (layer, expert) program is, what it costs resident, and loading one
on demand (size checked always, sha256 on its first load)."""

import time
from pathlib import Path

from cosmoe_edge.errors import ArtifactError
from cosmoe_edge.runtime.backends import open_program
from cosmoe_edge.runtime.manifest import check_file, expert_cost


class ExpertStore:
    def __init__(self, artifact: Path, backend: str, entries: list[dict], verify_sha: bool, threads: int):
        self.artifact, self.backend, self.verify_sha, self.threads = Path(artifact), backend, verify_sha, threads
        self.entries = {(e["layer"], e["expert"]): e for e in entries}
        self.verified: set[tuple[int, int]] = set()
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
        path = check_file(self.artifact, self.entries[key], self.verify_sha and key not in self.verified)
        self.verified.add(key)
        program = open_program(self.backend, path, ["forward"], self.threads, expert=True)
        self.loads += 1
        self.load_ns += time.perf_counter_ns() - t
        return program
