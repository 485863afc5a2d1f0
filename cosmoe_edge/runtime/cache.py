"""The experts that fit in memory: loaded programs under a byte budget.

ExpertCache asks its store (store.py) for an expert's cost and program, and a policy (policies.py)
which resident expert to drop. Eviction releases the program and returns freed heap to the OS
(malloc_trim), so the budget holds for RSS, not just for this file's bookkeeping. Every decision is
an event (hit, miss, evict, prefetch, promote, with the resident bytes after it): the trace that
tests/conformance/cache.json records and the Android core replays.

An expert in the ONNX weights form is charged its mapped weights when loaded and is promoted to a
prepacked session of its own (charged its full cost) once it has been used `store.promote_after` times
while resident (at its first use when the budget holds every expert at full cost: nothing will evict
it), if the budget has room for that without evicting anything: hot experts then run at full speed,
and a tight budget holds more experts in their cheaper form.
"""

import threading

from cosmoe_edge.errors import RequestError
from cosmoe_edge.runtime.metrics import release_heap
from cosmoe_edge.runtime.policies import POLICIES


class ExpertCache:
    """Resident experts under `budget` bytes. The bytes of an expert being prefetched are reserved
    before its load starts, so the budget holds at every moment, with or without prefetch."""

    def __init__(self, store, budget: int, policy: str, shape: tuple[int, int], on_event=None):
        """`shape`: (n_layers, num_experts), the layer cycle some policies plan on."""
        self.store, self.budget, self.policy = store, budget, POLICIES[policy](*shape)
        self._resident: dict = {}
        self._charge: dict = {}  # key -> bytes it is charged now
        self._uses: dict = {}  # key -> uses since it was loaded (for promotion)
        # uses after which a loaded expert is promoted (None: the store's experts never are); at the first
        # use when the budget holds every expert at full cost, since nothing will evict it
        self._promote_after = getattr(store, "promote_after", None)
        if self._promote_after is not None and budget >= store.total_cost():
            self._promote_after = 1
        self._loading: dict = {}  # key -> threading.Event, prefetches in flight
        self.bytes = 0
        self.peak_bytes = 0
        self.hits = self.misses = self.evictions = 0
        self._prefetched: set = set()
        self.prefetch_useful = 0
        self.on_event = on_event  # (kind, key, resident_bytes)
        self._lock = threading.Lock()

    def is_resident(self, key) -> bool:
        with self._lock:
            return key in self._resident

    def get(self, key, pinned=frozenset()):
        """The program for `key`, loading it (and evicting others, never those in `pinned`) on a miss."""
        with self._lock:
            pending = self._loading.get(key)
            self.policy.request(key)
        if pending is not None:
            pending.wait()
        with self._lock:
            if not self.policy.keeps:
                for k in list(self._resident):
                    self._evict(k)
            program = self._resident.get(key)
            if program is not None:
                self.hits += 1
                if key in self._prefetched:
                    self._prefetched.discard(key)
                    self.prefetch_useful += 1
                self.policy.touch(key)
                self._event("hit", key)
                self._maybe_promote(key, program)
                return program
            self.misses += 1
            self._event("miss", key)
            self._make_room(self.store.load_cost(key), pinned)
            program = self.store.load(key)
            self._insert(key, program)
            self._uses[key] = 0  # the use that loaded it counts below (a prefetched expert's load does not)
            self._maybe_promote(key, program)
            self.policy.touch(key)
            return program

    def _maybe_promote(self, key, program):
        if self._promote_after is None or not getattr(program, "promotable", False):
            return
        self._uses[key] += 1
        extra = self.store.cost(key) - self._charge[key]
        if self._uses[key] >= self._promote_after and self.bytes + extra <= self.budget:
            self.store.promote(program)
            self._charge[key] += extra
            self.bytes += extra
            self.peak_bytes = max(self.peak_bytes, self.bytes)
            self._event("promote", key)

    def prefetch(self, key, pinned=frozenset()) -> bool:
        """Start loading `key` ahead of need if it fits by evicting only unpinned experts; the load
        itself runs outside the lock, so hits on the main thread do not wait for it."""
        with self._lock:
            if key in self._resident or key in self._loading:
                return False
            cost = self.store.load_cost(key)
            evictable = sum(self._charge[k] for k in self._resident if k not in pinned)
            if self.bytes - evictable + cost > self.budget:
                return False
            self._make_room(cost, pinned)
            self.bytes += cost  # reserved now, so concurrent misses see it
            self._loading[key] = threading.Event()
        try:
            program = self.store.load(key)
        except BaseException:
            with self._lock:
                self.bytes -= cost
                self._loading.pop(key).set()
            raise
        with self._lock:
            self.bytes -= cost
            self._insert(key, program)
            self.policy.arrived(key)  # ranks as just used, so it is not the next victim
            self._prefetched.add(key)
            self._event("prefetch", key)
            self._loading.pop(key).set()
        return True

    def fill(self, keys) -> int:
        """Load `keys` in order while each fits without evicting (what a runtime without lazy loading
        does up front). Counted as misses: reset_counters() after it to count only what follows."""
        n = 0
        for key in keys:
            with self._lock:
                if self.bytes + self.store.load_cost(key) > self.budget:
                    break
            self.get(key)
            n += 1
        return n

    def reset_counters(self):
        with self._lock:
            self.hits = self.misses = self.evictions = self.prefetch_useful = 0
            self.peak_bytes = self.bytes

    def release_all(self):
        """Release every resident program (end of a run); not counted as evictions."""
        with self._lock:
            for key in list(self._resident):
                self._resident.pop(key).release()
                self.policy.forget(key)
            self._charge.clear()
            self._uses.clear()
            self._prefetched.clear()
            self.bytes = 0
        release_heap()

    def _event(self, kind, key):
        if self.on_event is not None:
            self.on_event(kind, key, self.bytes)

    def _make_room(self, cost, pinned):
        while self.bytes + cost > self.budget:
            candidates = [k for k in self._resident if k not in pinned]
            if not candidates:
                raise RequestError(f"memory budget of {self.budget:,} bytes cannot hold the experts one layer needs",
                                   "budget_too_small")
            self._evict(self.policy.victim(candidates))

    def _insert(self, key, program):
        self._resident[key] = program
        self._charge[key] = self.store.load_cost(key)
        self._uses[key] = 0
        self.bytes += self._charge[key]
        if self.bytes > self.budget:  # an invariant, not an assert: it must hold under python -O too
            raise RuntimeError(f"resident experts ({self.bytes:,} bytes) exceed the budget ({self.budget:,})")
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def _evict(self, key):
        self._resident.pop(key).release()
        self.bytes -= self._charge.pop(key)
        self._uses.pop(key)
        self.policy.forget(key)
        self._prefetched.discard(key)
        self.evictions += 1
        self._event("evict", key)
        release_heap()
