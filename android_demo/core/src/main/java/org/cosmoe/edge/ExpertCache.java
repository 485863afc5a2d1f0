package org.cosmoe.edge;

import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CountDownLatch;

/**
 * Resident experts under a byte budget (experts.py ExpertCache): the same hit/miss/evict decisions
 * and the same event sequence. The bytes of an expert being prefetched are reserved before its
 * load starts, so the budget holds at every moment, with or without prefetch. Evicting closes the
 * program, which frees its native memory.
 */
public final class ExpertCache {
    /** (kind, key, resident bytes at the event): the trace the conformance tests compare. */
    public interface Listener {
        void onEvent(String kind, ExpertKey key, long residentBytes);
    }

    private final ExpertSource store;
    private final long budget;
    private final CachePolicy policy;
    private final Listener listener;
    private final Map<ExpertKey, ProgramRunner> resident = new LinkedHashMap<>();
    private final Map<ExpertKey, CountDownLatch> loading = new HashMap<>();
    private final Set<ExpertKey> prefetched = new HashSet<>();
    private long bytes;
    private long peakBytes;
    private int hits;
    private int misses;
    private int evictions;
    private int prefetchUseful;

    public ExpertCache(ExpertSource store, long budget, CachePolicy policy, Listener listener) {
        this.store = store;
        this.budget = budget;
        this.policy = policy;
        this.listener = listener;
    }

    /** The program for {@code key}, loading it (and evicting others, never those in {@code pinned}) on a miss. */
    public ProgramRunner get(ExpertKey key, Set<ExpertKey> pinned) {
        CountDownLatch pending;
        synchronized (this) {
            pending = loading.get(key);
            policy.request(key);
        }
        if (pending != null) {
            awaitUninterruptibly(pending);
        }
        synchronized (this) {
            if (!policy.keeps()) {
                for (ExpertKey k : new ArrayList<>(resident.keySet())) {
                    evict(k);
                }
            }
            ProgramRunner program = resident.get(key);
            if (program != null) {
                hits++;
                if (prefetched.remove(key)) {
                    prefetchUseful++;
                }
                policy.touch(key);
                event("hit", key);
                return program;
            }
            misses++;
            event("miss", key);
            makeRoom(store.cost(key), pinned);
            program = store.load(key);
            insert(key, program, true);
            return program;
        }
    }

    /**
     * Starts loading {@code key} ahead of need if it fits by evicting only unpinned experts. Called
     * on a background thread: the load itself runs outside the lock, so hits do not wait for it.
     */
    public boolean prefetch(ExpertKey key, Set<ExpertKey> pinned) {
        long cost;
        CountDownLatch done = new CountDownLatch(1);
        synchronized (this) {
            if (resident.containsKey(key) || loading.containsKey(key)) {
                return false;
            }
            cost = store.cost(key);
            long evictable = 0;
            for (ExpertKey k : resident.keySet()) {
                if (!pinned.contains(k)) {
                    evictable += store.cost(k);
                }
            }
            if (bytes - evictable + cost > budget) {
                return false;
            }
            makeRoom(cost, pinned);
            bytes += cost;  // reserved now, so concurrent misses see it
            loading.put(key, done);
        }
        ProgramRunner program;
        try {
            program = store.load(key);
        } catch (RuntimeException | Error e) {
            synchronized (this) {
                bytes -= cost;
                loading.remove(key).countDown();
            }
            throw e;
        }
        synchronized (this) {
            bytes -= cost;
            insert(key, program, false);
            prefetched.add(key);
            event("prefetch", key);
            loading.remove(key).countDown();
        }
        return true;
    }

    public synchronized boolean isResident(ExpertKey key) {
        return resident.containsKey(key);
    }

    /** Releases every resident program (end of a run); not counted as evictions. */
    public synchronized void releaseAll() {
        for (ProgramRunner p : resident.values()) {
            p.close();
        }
        resident.clear();
        bytes = 0;
    }

    private void makeRoom(long cost, Set<ExpertKey> pinned) {
        while (bytes + cost > budget) {
            List<ExpertKey> candidates = new ArrayList<>();
            for (ExpertKey k : resident.keySet()) {
                if (!pinned.contains(k)) {
                    candidates.add(k);
                }
            }
            if (candidates.isEmpty()) {
                throw new ArtifactException(String.format(Locale.ROOT, "memory budget of %,d bytes cannot hold the "
                        + "experts one layer needs", budget));
            }
            evict(policy.victim(candidates));
        }
    }

    private void insert(ExpertKey key, ProgramRunner program, boolean touch) {
        resident.put(key, program);
        bytes += store.cost(key);
        if (bytes > budget) {
            throw new IllegalStateException("resident experts exceed the budget");
        }
        peakBytes = Math.max(peakBytes, bytes);
        if (touch) {
            policy.touch(key);
        } else {
            policy.arrived(key);
        }
    }

    private void evict(ExpertKey key) {
        resident.remove(key).close();
        bytes -= store.cost(key);
        policy.forget(key);
        prefetched.remove(key);
        evictions++;
        event("evict", key);
    }

    private void event(String kind, ExpertKey key) {
        if (listener != null) {
            listener.onEvent(kind, key, bytes);
        }
    }

    private static void awaitUninterruptibly(CountDownLatch latch) {
        boolean interrupted = false;
        while (true) {
            try {
                latch.await();
                break;
            } catch (InterruptedException e) {
                interrupted = true;
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }

    public long budget() {
        return budget;
    }

    public synchronized long residentBytes() {
        return bytes;
    }

    public synchronized long peakBytes() {
        return peakBytes;
    }

    public synchronized int hits() {
        return hits;
    }

    public synchronized int misses() {
        return misses;
    }

    public synchronized int evictions() {
        return evictions;
    }

    public synchronized int prefetchUseful() {
        return prefetchUseful;
    }

    public synchronized Set<ExpertKey> residentKeys() {
        return Collections.unmodifiableSet(new HashSet<>(resident.keySet()));
    }
}
