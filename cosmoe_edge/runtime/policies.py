"""Which resident expert to evict. The cache calls a policy under its lock: `request` when an expert is
asked for (before it is found or loaded), `touch` on every use, `arrived` when a prefetched expert lands
unused, `forget` on eviction, `victim` to choose among the experts it may evict. The Android core's
CachePolicy mirrors these (tests/conformance/cache.json)."""

from abc import ABC, abstractmethod


class Policy(ABC):
    keeps = True  # False: a policy that holds nothing between uses

    def __init__(self, n_layers: int, num_experts: int):
        self.n_layers, self.num_experts = n_layers, num_experts
        self.order: dict = {}  # recency, oldest first, of every resident expert (dicts keep insertion order)

    def request(self, key):  # noqa: B027  (a hook: only policies that plan on the layer cycle need it)
        """`key` is asked for: the engine is at its layer."""

    def touch(self, key):
        """`key` was just used: it becomes the most recent."""
        self.order.pop(key, None)
        self.order[key] = None

    def arrived(self, key):
        """A prefetched expert arrived: it ranks as just used unless it already has a place."""
        self.order.setdefault(key, None)

    def forget(self, key):
        self.order.pop(key, None)

    def recency_rank(self) -> dict:
        """key -> its place in the recency order, 0 the oldest: how ties go to the least recent."""
        return {k: i for i, k in enumerate(self.order)}

    @abstractmethod
    def victim(self, candidates) -> tuple:
        """The expert to evict among `candidates` (resident, not pinned)."""


class LRU(Policy):
    """Evict the expert used longest ago."""

    def victim(self, candidates) -> tuple:
        return next(k for k in self.order if k in candidates)


class LFU(Policy):
    """Evict the expert used least often so far (counts survive eviction); ties go to the least recent."""

    def __init__(self, n_layers: int, num_experts: int):
        super().__init__(n_layers, num_experts)
        self.uses: dict = {}

    def touch(self, key):
        super().touch(key)
        self.uses[key] = self.uses.get(key, 0) + 1

    def victim(self, candidates) -> tuple:
        rank = self.recency_rank()
        return min(candidates, key=lambda k: (self.uses.get(k, 0), rank.get(k, -1)))


class NoCache(LRU):
    """Keep nothing: every expert use loads it from storage (the naive offloading floor)."""

    keeps = False


class NextUse(Policy):
    """Evict the expert whose next use is expected farthest away (Belady's rule, with the future estimated).
    Decode visits layers 0..L-1 in turn, so an expert of layer m is next needed after d = (m - c) mod L
    layer visits from the layer c being run (L once this visit has used it), and only if its layer chooses it: with
    probability p at each visit, counted per expert and per state (chosen at its layer's last visit, or
    not: routing is sticky), the expected wait is d + L (1/p - 1) visits. LRU, where it keeps the expert
    needed next, empties the cache on this cycle once the budget holds less than one token's experts.
    p = chosen / visits, starting from a prior of what routing usually does before an expert has a history:
    one chosen at its layer's last visit is chosen again 2 times in 3 (the BlES model it was set on switched ~1/3
    of its experts per token; the sticky one shipped since ~1/6), one not chosen 1 time in 4 (top-2 of 8).
    Waits are compared as fractions of integers, so the Java mirror decides identically. Ties go to the least
    recently used."""

    PRIOR = {True: (2, 3), False: (1, 4)}  # (chosen, visits) before any count

    def __init__(self, n_layers: int, num_experts: int):
        super().__init__(n_layers, num_experts)
        self.layer = -1  # the layer being visited (-1: none yet, so layer 0 comes first)
        self.chosen: set = set()  # its experts asked for at this visit
        self.last: dict = {}  # key -> chosen at the last finished visit of its layer
        self.counts: dict = {}  # (key, state) -> [chosen, visits] at the visit after one in that state

    def request(self, key):
        if key[0] != self.layer:
            self._end_visit()
            self.layer, self.chosen = key[0], set()
        self.chosen.add(key)

    def _end_visit(self):
        if self.layer < 0:
            return
        for e in range(self.num_experts):
            key = (self.layer, e)
            if key in self.last:
                c = self.counts.setdefault((key, self.last[key]), list(self.PRIOR[self.last[key]]))
                c[0] += key in self.chosen
                c[1] += 1
            self.last[key] = key in self.chosen

    def _wait(self, key) -> tuple[int, int]:
        """The expected wait as a fraction (numerator, denominator): d + L (b/a - 1) = (d a + L (b - a)) / a.
        The engine asks for a layer's resident experts before it loads any (engine.py), so when a miss needs
        room, the resident experts of the layer being visited that this visit has not asked for will not be
        (d = L, not chosen), and those it has asked for are done until its next visit (d = L, chosen)."""
        L = self.n_layers
        if key[0] == self.layer:  # the engine asks for resident experts first: a miss ends what this visit keeps
            d, state = L, key in self.chosen
        else:
            d, state = (key[0] - self.layer) % L, self.last.get(key, False)
        a, b = self.counts.get((key, state), self.PRIOR[state])
        return d * a + L * (b - a), a

    def victim(self, candidates) -> tuple:
        rank = self.recency_rank()
        best, best_wait = None, None
        for k in candidates:
            n, a = self._wait(k)
            if best is None:
                best, best_wait = k, (n, a)
                continue
            bn, ba = best_wait
            if n * ba > bn * a or (n * ba == bn * a and rank.get(k, -1) < rank.get(best, -1)):
                best, best_wait = k, (n, a)
        return best


POLICIES = {"nextuse": NextUse, "lru": LRU, "lfu": LFU, "none": NoCache}
DEFAULT = "nextuse"
