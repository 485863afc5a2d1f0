package org.cosmoe.edge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import org.junit.Test;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/** The parts of ExpertCache the conformance runs do not reach: prefetch, the "none" policy, a budget too small. */
public class ExpertCacheTest {
    /** Every expert costs 100; loads wait on {@code gate} when one is set; closes are counted. */
    private static final class Store implements ExpertSource {
        volatile CountDownLatch gate;
        final CountDownLatch loadStarted = new CountDownLatch(1);
        int closed;

        @Override
        public long cost(ExpertKey key) {
            return 100;
        }

        @Override
        public ProgramRunner load(ExpertKey key) {
            loadStarted.countDown();
            if (gate != null) {
                try {
                    gate.await(10, TimeUnit.SECONDS);
                } catch (InterruptedException e) {
                    throw new IllegalStateException(e);
                }
            }
            return new ProgramRunner() {
                @Override
                public FloatTensor[] run(String method, FloatTensor... inputs) {
                    return new FloatTensor[0];
                }

                @Override
                public void close() {
                    closed++;
                }
            };
        }
    }

    private static ExpertKey k(int layer, int expert) {
        return new ExpertKey(layer, expert);
    }

    private static Set<ExpertKey> set(ExpertKey... keys) {
        return new HashSet<>(Arrays.asList(keys));
    }

    @Test
    public void prefetchReservesBytesAndEvictsOnlyUnpinned() {
        List<String> events = new ArrayList<>();
        Store store = new Store();
        ExpertCache c = new ExpertCache(store, 200, CachePolicy.named("lru", 1, 16), CacheEvents.into(events));
        c.get(k(0, 0), Collections.singleton(k(0, 0)));
        assertTrue(c.prefetch(k(1, 0), set(k(0, 0), k(0, 1))));
        assertEquals(k(1, 0) + " now resident", true, c.isResident(k(1, 0)));
        c.get(k(1, 0), Collections.singleton(k(1, 0)));
        assertTrue(c.prefetch(k(1, 1), set(k(1, 0))));
        assertFalse("no room without evicting a pinned expert", c.prefetch(k(0, 1), set(k(1, 0), k(1, 1))));
        assertFalse("already resident", c.prefetch(k(1, 1), set()));
        assertEquals(Arrays.asList("[\"miss\",0,0,0]", "[\"prefetch\",1,0,200]", "[\"hit\",1,0,200]",
                "[\"evict\",0,0,100]", "[\"prefetch\",1,1,200]"), events);
        assertEquals(1, c.prefetchUseful());
        assertEquals(1, store.closed);
        assertEquals(200, c.peakBytes());
    }

    @Test
    public void aMissWaitsForThePrefetchInFlight() throws InterruptedException {
        final Store store = new Store();
        store.gate = new CountDownLatch(1);
        final ExpertCache c = new ExpertCache(store, 300, CachePolicy.named("lfu", 1, 16), null);
        Thread prefetcher = new Thread(new Runnable() {
            @Override
            public void run() {
                c.prefetch(k(0, 2), Collections.<ExpertKey>emptySet());
            }
        });
        prefetcher.start();
        assertTrue(store.loadStarted.await(10, TimeUnit.SECONDS));
        assertEquals("reserved while loading", 100, c.residentBytes());
        final ProgramRunner[] got = new ProgramRunner[1];
        Thread main = new Thread(new Runnable() {
            @Override
            public void run() {
                got[0] = c.get(k(0, 2), Collections.singleton(k(0, 2)));
            }
        });
        main.start();
        Thread.sleep(50);
        assertTrue("get returned before the load finished", got[0] == null);
        store.gate.countDown();
        main.join(10000);
        prefetcher.join(10000);
        assertTrue(got[0] != null);
        assertEquals(1, c.hits());
        assertEquals(0, c.misses());
        assertEquals(1, c.prefetchUseful());
        assertEquals(100, c.residentBytes());
    }

    @Test
    public void policyNoneKeepsNothingBetweenUses() {
        List<String> events = new ArrayList<>();
        ExpertCache c = new ExpertCache(new Store(), 1000, CachePolicy.named("none", 1, 16), CacheEvents.into(events));
        c.get(k(0, 1), Collections.singleton(k(0, 1)));
        c.get(k(0, 1), Collections.singleton(k(0, 1)));
        assertEquals(Arrays.asList("[\"miss\",0,1,0]", "[\"evict\",0,1,0]", "[\"miss\",0,1,0]"), events);
        assertEquals(0, c.hits());
    }

    @Test
    public void lfuEvictsTheLeastUsedThenTheLeastRecent() {
        List<String> events = new ArrayList<>();
        ExpertCache c = new ExpertCache(new Store(), 200, CachePolicy.named("lfu", 1, 16), CacheEvents.into(events));
        for (ExpertKey key : Arrays.asList(k(0, 0), k(0, 0), k(0, 1), k(0, 2))) {
            c.get(key, Collections.singleton(key));
        }
        assertEquals("[\"evict\",0,1,100]", events.get(4));
    }

    @Test
    public void failsWhenEverythingResidentIsPinned() {
        ExpertCache c = new ExpertCache(new Store(), 150, CachePolicy.named("lru", 1, 16), null);
        c.get(k(0, 0), Collections.singleton(k(0, 0)));
        try {
            c.get(k(0, 1), set(k(0, 0), k(0, 1)));
            fail("loaded past the budget");
        } catch (ArtifactException e) {
            assertEquals("memory budget of 150 bytes cannot hold the experts one layer needs", e.getMessage());
        }
    }
}
