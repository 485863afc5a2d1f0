package org.cosmoe.edge;

import java.util.Arrays;
import java.util.Collection;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Which resident expert to evict (policies.py NextUse / LRU / LFU / NoCache). {@code order} is the
 * recency list, oldest first, of every resident expert; the cache calls these under its lock:
 * {@code request} when an expert is asked for, {@code touch} on every use, {@code arrived} when a
 * prefetched expert lands, {@code forget} on eviction, {@code victim} to choose whom to evict.
 */
public abstract class CachePolicy {
    /** policies.py POLICIES, the default first. */
    public static final List<String> NAMES = Collections.unmodifiableList(Arrays.asList("nextuse", "lru", "lfu",
            "none"));
    public static final String DEFAULT = "nextuse";

    protected final LinkedHashMap<ExpertKey, Boolean> order = new LinkedHashMap<>();

    /** Refuses a name that is not a policy. */
    public static void check(String name) {
        if (!NAMES.contains(name)) {
            throw new IllegalArgumentException("unknown cache policy '" + name + "'; choose " + String.join(", ", NAMES));
        }
    }

    /** The policy {@code name} for a model of {@code nLayers} layers of {@code numExperts} experts. */
    public static CachePolicy named(String name, int nLayers, int numExperts) {
        check(name);
        switch (name) {
            case "nextuse":
                return new NextUse(nLayers, numExperts);
            case "lru":
                return new Lru();
            case "lfu":
                return new Lfu();
            default:
                return new NoCache();
        }
    }

    /** {@code key} is asked for: the engine is at its layer. */
    public void request(ExpertKey key) {
    }

    /** False for a policy that holds nothing between uses. */
    public boolean keeps() {
        return true;
    }

    /** The expert was just used: it becomes the most recent. */
    public void touch(ExpertKey key) {
        order.remove(key);
        order.put(key, Boolean.TRUE);
    }

    /** A prefetched expert arrived: it ranks as just used unless it already has a place. */
    public void arrived(ExpertKey key) {
        order.put(key, Boolean.TRUE);
    }

    public void forget(ExpertKey key) {
        order.remove(key);
    }

    public abstract ExpertKey victim(Collection<ExpertKey> candidates);

    /** Each resident expert's place in the recency order, 0 the oldest: how ties go to the least recent. */
    protected Map<ExpertKey, Integer> recencyRank() {
        Map<ExpertKey, Integer> rank = new HashMap<>();
        for (ExpertKey k : order.keySet()) {
            rank.put(k, rank.size());
        }
        return rank;
    }

    /** Evict the expert used longest ago. */
    public static class Lru extends CachePolicy {
        @Override
        public ExpertKey victim(Collection<ExpertKey> candidates) {
            for (ExpertKey k : order.keySet()) {
                if (candidates.contains(k)) {
                    return k;
                }
            }
            throw new IllegalStateException("no resident expert to evict");
        }
    }

    /** Evict the expert used least often so far (counts survive eviction); ties go to the least recent. */
    public static final class Lfu extends CachePolicy {
        private final Map<ExpertKey, Integer> uses = new HashMap<>();

        @Override
        public void touch(ExpertKey key) {
            super.touch(key);
            Integer n = uses.get(key);
            uses.put(key, n == null ? 1 : n + 1);
        }

        @Override
        public ExpertKey victim(Collection<ExpertKey> candidates) {
            Map<ExpertKey, Integer> rank = recencyRank();
            ExpertKey best = null;
            int bestUses = 0;
            int bestRank = 0;
            for (ExpertKey k : candidates) {
                int u = uses.containsKey(k) ? uses.get(k) : 0;
                int r = rank.containsKey(k) ? rank.get(k) : -1;
                if (best == null || u < bestUses || (u == bestUses && r < bestRank)) {
                    best = k;
                    bestUses = u;
                    bestRank = r;
                }
            }
            return best;
        }
    }

    /**
     * Evict the expert whose next use is expected farthest away (policies.py NextUse, which says why):
     * an expert of layer m waits d = (m - c) mod L layer visits from the visited layer c (L for c's own,
     * since the engine asks for resident experts first), then L (b/a - 1) more, where a/b counts how
     * often it was chosen at the visit after one in its state (chosen at its layer's last visit or not),
     * from a prior of 2/3 and 1/4. Waits are compared as integer fractions; ties go to the least recently
     * used.
     */
    public static final class NextUse extends CachePolicy {
        private final int nLayers;
        private final int numExperts;
        private int layer = -1;
        private final Set<ExpertKey> chosen = new HashSet<>();
        private final Map<ExpertKey, Boolean> last = new HashMap<>();
        private final Map<ExpertKey, long[]> afterChosen = new HashMap<>();
        private final Map<ExpertKey, long[]> afterNot = new HashMap<>();

        public NextUse(int nLayers, int numExperts) {
            this.nLayers = nLayers;
            this.numExperts = numExperts;
        }

        @Override
        public void request(ExpertKey key) {
            if (key.layer != layer) {
                endVisit();
                layer = key.layer;
                chosen.clear();
            }
            chosen.add(key);
        }

        private void endVisit() {
            if (layer < 0) {
                return;
            }
            for (int e = 0; e < numExperts; e++) {
                ExpertKey k = new ExpertKey(layer, e);
                Boolean state = last.get(k);
                if (state != null) {
                    Map<ExpertKey, long[]> counts = state ? afterChosen : afterNot;
                    long[] c = counts.get(k);
                    if (c == null) {
                        c = prior(state);
                        counts.put(k, c);
                    }
                    c[0] += chosen.contains(k) ? 1 : 0;
                    c[1] += 1;
                }
                last.put(k, chosen.contains(k));
            }
        }

        /** {numerator, denominator} of the expected wait d + L (b/a - 1) = (d a + L (b - a)) / a. */
        private long[] waitFor(ExpertKey key) {
            long d;
            boolean state;
            if (key.layer == layer) {
                d = nLayers;
                state = chosen.contains(key);
            } else {
                d = Math.floorMod(key.layer - layer, nLayers);
                Boolean s = last.get(key);
                state = s != null && s;
            }
            long[] c = (state ? afterChosen : afterNot).get(key);
            if (c == null) {
                c = prior(state);
            }
            return new long[] {d * c[0] + nLayers * (c[1] - c[0]), c[0]};
        }

        /** policies.py NextUse.PRIOR: chosen 2 in 3 after being chosen, 1 in 4 after not. */
        private static long[] prior(boolean chosenLast) {
            return chosenLast ? new long[] {2, 3} : new long[] {1, 4};
        }

        @Override
        public ExpertKey victim(Collection<ExpertKey> candidates) {
            Map<ExpertKey, Integer> rank = recencyRank();
            ExpertKey best = null;
            long[] bestWait = null;
            for (ExpertKey k : candidates) {
                long[] w = waitFor(k);
                if (best == null) {
                    best = k;
                    bestWait = w;
                    continue;
                }
                long lhs = w[0] * bestWait[1];
                long rhs = bestWait[0] * w[1];
                int r = rank.containsKey(k) ? rank.get(k) : -1;
                int rb = rank.containsKey(best) ? rank.get(best) : -1;
                if (lhs > rhs || (lhs == rhs && r < rb)) {
                    best = k;
                    bestWait = w;
                }
            }
            return best;
        }
    }

    /** Keep nothing: every expert use loads it from storage (the naive offloading floor). */
    public static final class NoCache extends Lru {
        @Override
        public boolean keeps() {
            return false;
        }
    }
}
