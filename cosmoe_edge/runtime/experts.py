"""Experts on flash, and the few that fit in memory.

ExpertStore knows where each (layer, expert) program is and loads one on demand (size checked
always, sha256 on its first load). ExpertCache keeps loaded programs under a byte budget and asks
a policy which one to drop. Eviction releases the program and returns freed heap to the OS
(malloc_trim), so the budget holds for RSS, not just for this file's bookkeeping.
"""

import threading
import time
from collections import OrderedDict
from pathlib import Path

from cosmoe_edge.runtime.backends import open_program
from cosmoe_edge.runtime.manifest import ArtifactError, check_file
from cosmoe_edge.runtime.metrics import release_heap


class ExpertStore:
    def __init__(self, artifact: Path, backend: str, entries: list[dict], verify_sha: bool, threads: int):
        self.artifact, self.backend, self.verify_sha, self.threads = Path(artifact), backend, verify_sha, threads
        self.entries = {(e["layer"], e["expert"]): e for e in entries}
        self.verified: set[tuple[int, int]] = set()
        self.loads, self.load_ns = 0, 0

    def cost(self, key) -> int:
        """Bytes an expert holds while resident: its program plus the activation memory planned for it."""
        e = self.entries[key]
        return e.get("resident_bytes", e["bytes"])

    def load(self, key):
        if key not in self.entries:
            raise ArtifactError(f"the manifest lists no expert {key[1]} in layer {key[0]}")
        t = time.perf_counter_ns()
        path = check_file(self.artifact, self.entries[key], self.verify_sha and key not in self.verified)
        self.verified.add(key)
        program = open_program(self.backend, path, ["forward"], self.threads, expert=True)
        self.loads += 1
        self.load_ns += time.perf_counter_ns() - t
        return program


class LRU:
    """Evict the expert used longest ago."""

    keeps = True  # False: a policy that holds nothing between uses

    def __init__(self):
        self.order: OrderedDict = OrderedDict()

    def touch(self, key):
        self.order[key] = None
        self.order.move_to_end(key)

    def forget(self, key):
        self.order.pop(key, None)

    def victim(self, candidates) -> tuple:
        return next(k for k in self.order if k in candidates)


class LFU(LRU):
    """Evict the expert used least often so far (counts survive eviction); ties go to the least recent."""

    def __init__(self):
        super().__init__()
        self.uses: dict = {}

    def touch(self, key):
        super().touch(key)
        self.uses[key] = self.uses.get(key, 0) + 1

    def victim(self, candidates) -> tuple:
        rank = {k: i for i, k in enumerate(self.order)}
        return min(candidates, key=lambda k: (self.uses.get(k, 0), rank.get(k, -1)))


class NoCache(LRU):
    """Keep nothing: every expert use loads it from storage (the naive offloading floor)."""

    keeps = False


POLICIES = {"lru": LRU, "lfu": LFU, "none": NoCache}


class ExpertCache:
    """Resident experts under `budget` bytes. The bytes of an expert being prefetched are reserved
    before its load starts, so the budget holds at every moment, with or without prefetch."""

    def __init__(self, store: ExpertStore, budget: int, policy: str = "lru", on_event=None):
        self.store, self.budget, self.policy = store, budget, POLICIES[policy]()
        self.resident: dict = {}
        self.loading: dict = {}  # key -> threading.Event, prefetches in flight
        self.bytes = 0
        self.peak_bytes = 0
        self.hits = self.misses = self.evictions = 0
        self.prefetched: set = set()
        self.prefetch_useful = 0
        self.on_event = on_event  # (kind, key, resident_bytes): the trace the conformance tests replay
        self.lock = threading.Lock()

    def _event(self, kind, key):
        if self.on_event is not None:
            self.on_event(kind, key, self.bytes)

    def get(self, key, pinned=frozenset()):
        """The program for `key`, loading it (and evicting others, never those in `pinned`) on a miss."""
        with self.lock:
            pending = self.loading.get(key)
        if pending is not None:
            pending.wait()
        with self.lock:
            if not self.policy.keeps:
                for k in list(self.resident):
                    self._evict(k)
            program = self.resident.get(key)
            if program is not None:
                self.hits += 1
                if key in self.prefetched:
                    self.prefetched.discard(key)
                    self.prefetch_useful += 1
                self.policy.touch(key)
                self._event("hit", key)
                return program
            self.misses += 1
            self._event("miss", key)
            self._make_room(self.store.cost(key), pinned)
            program = self.store.load(key)
            self._insert(key, program)
            return program

    def prefetch(self, key, pinned=frozenset()) -> bool:
        """Start loading `key` ahead of need if it fits by evicting only unpinned experts; the load
        itself runs outside the lock, so hits on the main thread do not wait for it."""
        with self.lock:
            if key in self.resident or key in self.loading:
                return False
            cost = self.store.cost(key)
            evictable = sum(self.store.cost(k) for k in self.resident if k not in pinned)
            if self.bytes - evictable + cost > self.budget:
                return False
            self._make_room(cost, pinned)
            self.bytes += cost  # reserved now, so concurrent misses see it
            self.loading[key] = threading.Event()
        try:
            program = self.store.load(key)
        except BaseException:
            with self.lock:
                self.bytes -= cost
                self.loading.pop(key).set()
            raise
        with self.lock:
            self.bytes -= cost
            self._insert(key, program, touch=False)
            self.prefetched.add(key)
            self._event("prefetch", key)
            self.loading.pop(key).set()
        return True

    def _make_room(self, cost, pinned):
        while self.bytes + cost > self.budget:
            candidates = [k for k in self.resident if k not in pinned]
            if not candidates:
                raise ArtifactError(f"memory budget of {self.budget:,} bytes cannot hold the experts one layer needs")
            self._evict(self.policy.victim(candidates))

    def _insert(self, key, program, touch=True):
        self.resident[key] = program
        self.bytes += self.store.cost(key)
        assert self.bytes <= self.budget, "resident experts exceed the budget"
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        if touch:
            self.policy.touch(key)
        else:  # prefetched: ranks as just used, so it is not the next victim
            self.policy.order[key] = None

    def _evict(self, key):
        self.resident.pop(key).release()
        self.bytes -= self.store.cost(key)
        self.policy.forget(key)
        self.prefetched.discard(key)
        self.evictions += 1
        self._event("evict", key)
        release_heap()
