package org.cosmoe.edge;

import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Which resident expert to evict (experts.py LRU / LFU / NoCache). {@code order} is the recency
 * list, oldest first, of every resident expert; the cache calls these under its lock.
 */
public abstract class CachePolicy {
    protected final LinkedHashMap<ExpertKey, Boolean> order = new LinkedHashMap<>();

    public static CachePolicy named(String name) {
        switch (name) {
            case "lru":
                return new Lru();
            case "lfu":
                return new Lfu();
            case "none":
                return new NoCache();
            default:
                throw new IllegalArgumentException("unknown cache policy '" + name + "'; choose lru, lfu or none");
        }
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
            Map<ExpertKey, Integer> rank = new HashMap<>();
            for (ExpertKey k : order.keySet()) {
                rank.put(k, rank.size());
            }
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

    /** Keep nothing: every expert use loads it from storage (the naive offloading floor). */
    public static final class NoCache extends Lru {
        @Override
        public boolean keeps() {
            return false;
        }
    }
}
