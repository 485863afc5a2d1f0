"""Which resident expert to evict. The cache calls a policy under its lock: `touch` on every use,
`arrived` when a prefetched expert lands unused, `forget` on eviction, `victim` to choose among the
experts it may evict. The Android core's CachePolicy mirrors these (tests/conformance/cache.json)."""

from abc import ABC, abstractmethod


class Policy(ABC):
    keeps = True  # False: a policy that holds nothing between uses

    def __init__(self):
        self.order: dict = {}  # recency, oldest first, of every resident expert (dicts keep insertion order)

    def touch(self, key):
        """`key` was just used: it becomes the most recent."""
        self.order.pop(key, None)
        self.order[key] = None

    def arrived(self, key):
        """A prefetched expert arrived: it ranks as just used unless it already has a place."""
        self.order.setdefault(key, None)

    def forget(self, key):
        self.order.pop(key, None)

    @abstractmethod
    def victim(self, candidates) -> tuple:
        """The expert to evict among `candidates` (resident, not pinned)."""


class LRU(Policy):
    """Evict the expert used longest ago."""

    def victim(self, candidates) -> tuple:
        return next(k for k in self.order if k in candidates)


class LFU(Policy):
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
