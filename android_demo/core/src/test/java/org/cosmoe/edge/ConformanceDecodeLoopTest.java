package org.cosmoe.edge;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

import java.io.File;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

/**
 * generation.json replayed through the Java decode loop: programs that return Python's recorded
 * router logits and a head whose argmax is Python's next token. The loop must call the layers in
 * the same chunks at the same positions, choose the same experts, produce the same tokens, and
 * (with cache.json's budgets and policies) make the same expert cache events as the Python engine.
 */
public class ConformanceDecodeLoopTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    private final JsonObject g = Conformance.json("generation.json");
    private final int[] prompt = Conformance.ints(g.get("prompt_ids"));
    private final int[] generated = Conformance.ints(g.get("generated_ids"));
    private final JsonArray steps = g.getAsJsonArray("steps");

    /** Python's trace, served layer by layer in call order. */
    private final class Replay implements RecordedPrograms.Script {
        private final List<List<JsonObject>> perLayer = new ArrayList<>();
        private final int[] next;

        Replay() {
            int layers = g.get("n_layers").getAsInt();
            for (int l = 0; l < layers; l++) {
                perLayer.add(new ArrayList<JsonObject>());
            }
            for (JsonElement e : steps) {
                perLayer.get(e.getAsJsonObject().get("layer").getAsInt()).add(e.getAsJsonObject());
            }
            next = new int[layers];
        }

        @Override
        public float[] routerLogits(int layer, int pos0, int tokens, float[] h) {
            // layers pass h through and experts add zeros: every layer sees the embedding rows of
            // the tokens at these positions, so the loop must feed back exactly Python's tokens
            int dim = h.length / tokens;
            for (int t = 0; t < tokens; t++) {
                int id = pos0 + t < prompt.length ? prompt[pos0 + t] : generated[pos0 + t - prompt.length];
                for (int c = 0; c < dim; c++) {
                    assertEquals("token at position " + (pos0 + t), TestArtifact.embeddingValue(id, c),
                            h[t * dim + c], 0f);
                }
            }
            List<JsonObject> q = perLayer.get(layer);
            if (next[layer] >= q.size()) {
                throw new AssertionError("layer " + layer + " called more often than in Python");
            }
            JsonObject s = q.get(next[layer]++);
            assertEquals("pos0 of layer " + layer + " call", s.get("pos0").getAsInt(), pos0);
            assertEquals("tokens in layer " + layer + " call at " + pos0, s.getAsJsonArray("router_logits").size(),
                    tokens);
            return Conformance.matrix(s.get("router_logits"));
        }

        @Override
        public float[] headLogits(int call) {
            float[] logits = new float[vocab()];
            logits[generated[call]] = 1f;
            return logits;
        }

        void assertAllUsed() {
            for (int l = 0; l < next.length; l++) {
                assertEquals("layer " + l + " calls", perLayer.get(l).size(), next[l]);
            }
        }
    }

    private int vocab() {
        int max = 0;
        for (int id : prompt) {
            max = Math.max(max, id);
        }
        for (int id : generated) {
            max = Math.max(max, id);
        }
        return max + 1;
    }

    private TestArtifact spec() {
        TestArtifact a = new TestArtifact();
        a.vocab = vocab();
        a.nLayers = g.get("n_layers").getAsInt();
        a.numExperts = g.get("num_experts").getAsInt();
        a.topK = g.get("top_k").getAsInt();
        a.stickyDelta = g.get("sticky_delta").getAsDouble();
        a.layerMaxTokens = g.get("layer_max_tokens").getAsInt();
        a.expertMaxTokens = g.get("expert_max_tokens").getAsInt();
        a.maxSeqLen = prompt.length + generated.length;
        for (JsonElement e : Conformance.json("cache.json").getAsJsonArray("costs")) {
            JsonObject c = e.getAsJsonObject();
            a.costs.put(new ExpertKey(c.get("layer").getAsInt(), c.get("expert").getAsInt()),
                    c.get("cost").getAsLong());
        }
        return a;
    }

    private List<Integer> list(int[] ids) {
        List<Integer> out = new ArrayList<>();
        for (int id : ids) {
            out.add(id);
        }
        return out;
    }

    @Test
    public void sameTokensChunksAndExpertChoicesAsPython() throws IOException {
        TestArtifact a = spec();
        File root = a.write(tmp.newFolder());
        Replay replay = new Replay();
        RecordedPrograms programs = new RecordedPrograms(replay, a);
        EngineOptions o = new EngineOptions();
        o.trace = true;
        try (Engine engine = EngineFactory.open(root, o, programs)) {
            Generator.Result r = Generator.generate(engine, prompt, generated.length, Sampler.greedy(), null, null,
                    null);
            assertEquals(list(generated), r.ids);
            List<RoutingLog.Step> trace = engine.routing().trace();
            assertEquals(steps.size(), trace.size());
            for (int i = 0; i < trace.size(); i++) {
                JsonObject s = steps.get(i).getAsJsonObject();
                assertEquals("step " + i + " pos0", s.get("pos0").getAsInt(), trace.get(i).pos0);
                assertEquals("step " + i + " layer", s.get("layer").getAsInt(), trace.get(i).layer);
                int[][] want = Conformance.intRows(s.get("experts"));
                assertEquals(want.length, trace.get(i).experts.length);
                for (int t = 0; t < want.length; t++) {
                    assertArrayEquals("step " + i + " token " + t, want[t], trace.get(i).experts[t]);
                }
            }
        }
        replay.assertAllUsed();
        int heads = 0;
        for (String c : programs.calls) {
            heads += c.equals("head") ? 1 : 0;
        }
        assertEquals("one head call per generated token", generated.length, heads);
        assertEquals("every program released", programs.opened.size(), programs.closed);
    }

    @Test
    public void sameCacheEventsAsPythonAtEveryRecordedBudget() throws IOException {
        JsonObject cache = Conformance.json("cache.json");
        int runs = 0;
        for (JsonElement re : cache.getAsJsonArray("runs")) {
            JsonObject run = re.getAsJsonObject();
            if (run.get("prefetch").getAsBoolean()) {
                continue;  // the replayed programs have no real expert input to guess from: ConformanceCacheTest has these
            }
            TestArtifact a = spec();
            File root = a.write(tmp.newFolder());
            final List<String> events = new ArrayList<>();
            EngineOptions o = new EngineOptions();
            o.budgetBytes = run.get("budget").getAsLong();
            o.cachePolicy = run.get("policy").getAsString();
            o.onCacheEvent = CacheEvents.into(events);
            String label = o.cachePolicy + " at " + o.budgetBytes;
            try (Engine engine = EngineFactory.open(root, o, new RecordedPrograms(new Replay(), a))) {
                assertEquals(label, cache.get("expert_bytes_total").getAsLong(), engine.store.totalCost());
                Generator.Result r = Generator.generate(engine, prompt, generated.length, Sampler.greedy(), null,
                        null, null);
                assertEquals(label, list(generated), r.ids);
                assertEquals(label, CacheEvents.recorded(run), events);
                assertEquals(label + " hits", run.get("hits").getAsInt(), engine.cache.hits());
                assertEquals(label + " misses", run.get("misses").getAsInt(), engine.cache.misses());
                assertEquals(label + " evictions", run.get("evictions").getAsInt(), engine.cache.evictions());
            }
            runs++;
        }
        assertTrue("no cache runs", runs > 0);
    }
}
