package org.cosmoe.edge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import org.junit.Test;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * cache.json: the Java expert cache, given the operations the Python engine asked of its cache (get or
 * prefetch, with the experts it pinned) in the recorded order, makes the identical event list and
 * counts at each recorded budget and policy, with and without prefetch.
 */
public class ConformanceCacheTest {
    private final JsonObject cache = Conformance.json("cache.json");

    /** Costs from cache.json; loading gives a program that does nothing. */
    private static final class Costs implements ExpertSource {
        final Map<ExpertKey, Long> cost = new HashMap<>();

        @Override
        public long cost(ExpertKey key) {
            return cost.get(key);
        }

        @Override
        public ProgramRunner load(ExpertKey key) {
            return new ProgramRunner() {
                @Override
                public FloatTensor[] run(String method, FloatTensor... inputs) {
                    throw new UnsupportedOperationException();
                }

                @Override
                public void close() {
                }
            };
        }
    }

    private Costs costs() {
        Costs c = new Costs();
        for (JsonElement e : cache.getAsJsonArray("costs")) {
            JsonObject o = e.getAsJsonObject();
            c.cost.put(new ExpertKey(o.get("layer").getAsInt(), o.get("expert").getAsInt()), o.get("cost").getAsLong());
        }
        return c;
    }

    @Test
    public void budgetsFollowFromCosts() {
        long total = 0;
        long max = 0;
        for (long v : costs().cost.values()) {
            total += v;
            max = Math.max(max, v);
        }
        assertEquals(cache.get("expert_bytes_total").getAsLong(), total);
        assertEquals(cache.get("min_budget").getAsLong(), EngineFactory.minBudget(cache.get("top_k").getAsInt(), max));
    }

    @Test
    public void sameEventsAsPythonForEveryRun() {
        int runs = 0;
        int prefetchRuns = 0;
        for (JsonElement re : cache.getAsJsonArray("runs")) {
            JsonObject run = re.getAsJsonObject();
            List<String> events = new ArrayList<>();
            ExpertCache c = new ExpertCache(costs(), run.get("budget").getAsLong(),
                    CachePolicy.named(run.get("policy").getAsString(), cache.get("n_layers").getAsInt(),
                    cache.get("num_experts").getAsInt()), CacheEvents.into(events));
            for (JsonElement oe : run.getAsJsonArray("ops")) {
                JsonArray op = oe.getAsJsonArray();
                ExpertKey key = new ExpertKey(op.get(1).getAsInt(), op.get(2).getAsInt());
                Set<ExpertKey> pinned = new HashSet<>();
                for (JsonElement p : op.get(3).getAsJsonArray()) {
                    pinned.add(new ExpertKey(p.getAsJsonArray().get(0).getAsInt(), p.getAsJsonArray().get(1).getAsInt()));
                }
                String kind = op.get(0).getAsString();
                if (kind.equals("get")) {
                    c.get(key, pinned);
                } else if (kind.equals("prefetch")) {
                    c.prefetch(key, pinned);
                } else {
                    throw new AssertionError("unknown cache operation " + kind);
                }
            }
            String label = run.get("policy").getAsString() + " at " + run.get("budget")
                    + (run.get("prefetch").getAsBoolean() ? " with prefetch" : "");
            assertEquals(label, CacheEvents.recorded(run), events);
            assertEquals(label + " hits", run.get("hits").getAsInt(), c.hits());
            assertEquals(label + " misses", run.get("misses").getAsInt(), c.misses());
            assertEquals(label + " evictions", run.get("evictions").getAsInt(), c.evictions());
            assertEquals(label + " useful prefetches", run.get("prefetch_useful").getAsInt(), c.prefetchUseful());
            assertTrue(label + " stays within budget", c.peakBytes() <= run.get("budget").getAsLong());
            runs++;
            prefetchRuns += run.get("prefetch").getAsBoolean() ? 1 : 0;
        }
        assertTrue("no cache runs", runs > 0);
        assertTrue("no prefetch runs", prefetchRuns > 0);
    }
}
