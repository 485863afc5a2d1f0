"""Cache policies replayed on recorded routing, against Belady's offline optimum: the policy that knows
the future (evict the expert whose next use is farthest away), an upper bound for the benchmark and
never a runtime policy. Experts cost one unit each here; the capacity is a number of experts."""

from cosmoe_edge.runtime.cache import ExpertCache


def visits(steps: list[dict]) -> list[tuple[int, list[int]]]:
    """A traced generation (RoutingLog.trace) as layer visits: per step and layer, the experts its tokens chose."""
    return [(s["layer"], sorted({int(x) for row in s["experts"] for x in row})) for s in steps]


class _UnitStore:
    def cost(self, key):
        return 1

    load_cost = cost

    def load(self, key):
        return _Nothing()


class _Nothing:
    def release(self):
        pass


def replay(layer_visits, policy: str, capacity: int, shape: tuple[int, int]) -> tuple[float, list]:
    """Hit rate of `policy` holding at most `capacity` experts, asked as the engine asks (per visit, resident
    experts first, then by id, each pinning itself), and the requests in that order (for Belady)."""
    cache, requests = ExpertCache(_UnitStore(), capacity, policy, shape), []
    for layer, experts in layer_visits:
        for e in sorted(experts, key=lambda e: (not cache.is_resident((layer, e)), e)):
            requests.append((layer, e))
            cache.get((layer, e), frozenset({(layer, e)}))
    return (cache.hits / len(requests) if requests else 0.0), requests


def belady_hit_rate(requests: list[tuple[int, int]], capacity: int) -> float:
    """Hits over requests for the offline optimum with `capacity` experts."""
    nxt, seen = [0] * len(requests), {}
    for i in range(len(requests) - 1, -1, -1):  # index of each request's next use of the same expert
        nxt[i] = seen.get(requests[i], len(requests))
        seen[requests[i]] = i
    resident: dict = {}  # key -> index of its next use
    hits = 0
    for i, key in enumerate(requests):
        if key in resident:
            hits += 1
        elif len(resident) >= capacity:
            del resident[max(resident, key=resident.get)]
        resident[key] = nxt[i]
    return hits / len(requests) if requests else 0.0
