"""Experts on flash: where each (layer, expert) is, what it costs resident, and loading one on demand:
size checked always, sha256 on its first load and again whenever the file changed since (its inode,
size or modification time); without sha256 checks, an ExecuTorch program's header is checked before
every load instead. An expert is a program of its own, or (ONNX, the weights form) its weights, mapped
and run through the section's shared slot graph."""

import os
import time
from pathlib import Path

from cosmoe_edge.errors import ArtifactError
from cosmoe_edge.runtime.backends import OnnxExpertWeights, OnnxProgram, open_program
from cosmoe_edge.runtime.manifest import check_file, expert_cost, expert_load_cost


class ExpertStore:
    def __init__(self, artifact: Path, backend: str, section: dict, verify_sha: bool, threads: int):
        self.artifact, self.backend, self.verify_sha, self.threads = Path(artifact), backend, verify_sha, threads
        self.entries = {(e["layer"], e["expert"]): e for e in section["experts"]}
        self.slot = self.const_graph = None
        self.promote_after = None  # uses after which a loaded expert earns a session of its own
        if section.get("expert_form", "program") == "weights":
            graphs = section["expert_graphs"]
            self.slot = OnnxProgram(check_file(self.artifact, graphs["slot"], verify_sha), threads, expert=True)
            self.const_graph = check_file(self.artifact, graphs["const"], verify_sha).read_bytes()
            self.promote_after = section.get("promote_after")
        self.verified: dict = {}  # key -> (inode, size, mtime) of the file when its sha256 matched
        self.layouts: dict = {}  # key -> (identity, array layout) of a weights-form file already parsed
        self.loads, self.load_ns = 0, 0

    def cost(self, key) -> int:
        """Bytes resident at full speed: what the budget's percentages are of."""
        return expert_cost(self.entries[key])

    def load_cost(self, key) -> int:
        """Bytes resident once loaded (less, for an expert in the weights form until it is promoted)."""
        return expert_load_cost(self.entries[key])

    def max_load_cost(self) -> int:
        return max(self.load_cost(k) for k in self.entries)

    def promote(self, program):
        program.promote(self.const_graph, self.threads)

    def total_cost(self) -> int:
        return sum(self.cost(k) for k in self.entries)

    def load(self, key):
        if key not in self.entries:
            raise ArtifactError(f"the manifest lists no expert {key[1]} in layer {key[0]}", "missing_expert")
        t = time.perf_counter_ns()
        entry = self.entries[key]
        try:
            st = os.stat(self.artifact / entry["path"])
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            st = identity = None  # check_file says what is missing
        fresh = self.verify_sha and self.verified.get(key) != identity
        path = check_file(self.artifact, entry, fresh, st)
        if self.verify_sha:
            self.verified[key] = identity
        if self.slot is not None:
            known = self.layouts.get(key)
            program = OnnxExpertWeights(path, self.slot, known[1] if known and known[0] == identity else None)
            self.layouts[key] = (identity, program.layout)
        else:
            program = open_program(self.backend, path, ["forward"], self.threads, expert=True,
                                   sha_checked=self.verify_sha)
        self.loads += 1
        self.load_ns += time.perf_counter_ns() - t
        return program

    def close(self):
        if self.slot is not None:
            self.slot.release()
