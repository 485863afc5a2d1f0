package org.cosmoe.edge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import org.junit.Test;

import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

/**
 * cache.json: the Java expert cache, driven with generation.json's routing choices in the order the
 * Python engine requests experts (per step, per layer: the needed experts, resident first, then by
 * id), makes the identical event list and counts at each recorded budget and policy.
 */
public class ConformanceCacheTest {
    private final JsonObject cache = Conformance.json("cache.json");
    private final JsonObject g = Conformance.json("generation.json");

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
        for (JsonElement re : cache.getAsJsonArray("runs")) {
            JsonObject run = re.getAsJsonObject();
            List<String> events = new ArrayList<>();
            ExpertCache c = new ExpertCache(costs(), run.get("budget").getAsLong(),
                    CachePolicy.named(run.get("policy").getAsString()), CacheEvents.into(events));
            for (JsonElement se : g.getAsJsonArray("steps")) {
                JsonObject step = se.getAsJsonObject();
                int layer = step.get("layer").getAsInt();
                TreeSet<Integer> needed = new TreeSet<>();
                for (int[] row : Conformance.intRows(step.get("experts"))) {
                    for (int e : row) {
                        needed.add(e);
                    }
                }
                List<Integer> order = new ArrayList<>();
                for (int e : needed) {
                    if (c.isResident(new ExpertKey(layer, e))) {
                        order.add(e);
                    }
                }
                for (int e : needed) {
                    if (!order.contains(e)) {
                        order.add(e);
                    }
                }
                for (int e : order) {
                    ExpertKey key = new ExpertKey(layer, e);
                    c.get(key, Collections.singleton(key));
                }
            }
            String label = run.get("policy").getAsString() + " at " + run.get("budget");
            assertEquals(label, CacheEvents.recorded(run), events);
            assertEquals(label + " hits", run.get("hits").getAsInt(), c.hits());
            assertEquals(label + " misses", run.get("misses").getAsInt(), c.misses());
            assertEquals(label + " evictions", run.get("evictions").getAsInt(), c.evictions());
            assertTrue(label + " stays within budget", c.peakBytes() <= run.get("budget").getAsLong());
            runs++;
        }
        assertTrue("no cache runs", runs > 0);
    }
}
