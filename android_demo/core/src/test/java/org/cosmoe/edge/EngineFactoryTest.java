package org.cosmoe.edge;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

import java.io.File;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/** Opening an artifact, and the decode loop's chunking, slicing, prefetch and checks on a synthetic one. */
public class EngineFactoryTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    private final TestArtifact a = new TestArtifact();

    private Engine open(File root, EngineOptions o, RecordedPrograms programs) {
        return EngineFactory.open(root, o, programs);
    }

    private static int[] ids(int n) {
        int[] out = new int[n];
        for (int i = 0; i < n; i++) {
            out[i] = (i * 3 + 1) % 16;
        }
        return out;
    }

    private void expectKind(String kind, File root, EngineOptions o, String message) {
        try {
            open(root, o, new RecordedPrograms(new SyntheticScript(a), a)).close();
            fail("opened; expected " + kind);
        } catch (ArtifactException e) {
            assertEquals(kind, e.kind());
            if (message != null) {
                assertEquals(message, e.getMessage());
            }
        }
    }

    @Test
    public void cmoeRoutingIsReadFromTheManifestAndRefusesPrefetch() throws IOException {
        com.google.gson.JsonObject routing = new com.google.gson.JsonObject();
        routing.addProperty("kind", "cmoe");
        routing.add("selection_bias", new com.google.gson.Gson().toJsonTree(new float[][] {{0f, 0f, 0f, 0.5f},
                {0f, 0f, 0f, 0f}}));
        routing.add("weight_scale", new com.google.gson.Gson().toJsonTree(new float[][] {{1f, 1f, 1f, 1f},
                {0f, 0f, 0f, 0f}}));
        a.routing = routing;
        File root = a.write(tmp.newFolder());
        ModelConfig cfg = ModelConfig.of(Manifest.load(root));
        assertTrue(cfg.cmoe());
        float[] scores = {3f, 2f, 1f, 0f};
        Router.Routing r0 = cfg.route(0, scores);  // layer 0's bias lifts expert 3 over expert 1
        assertEquals(Arrays.asList(0, 3), Arrays.asList(r0.experts[0][0], r0.experts[0][1]));
        Router.Routing plain = Router.route(scores, 4, 2, false);
        assertEquals(1f + plain.weights[0][0], r0.weights[0][0], 1e-6f);  // 1 + scale * p
        assertEquals(1f, cfg.route(1, scores).weights[0][1], 0f);  // scale 0: weight 1
        EngineOptions o = new EngineOptions();
        o.prefetch = true;
        expectKind("artifact", root, o, "prefetch guesses with a linear router; this model's router is CMoE's");
        open(root, new EngineOptions(), new RecordedPrograms(new SyntheticScript(a), a)).close();
    }

    @Test
    public void peerLayersAreRefusedInOneLine() throws IOException {
        File root = a.write(tmp.newFolder());
        File path = new File(root, Manifest.MANIFEST);
        com.google.gson.JsonObject m = com.google.gson.JsonParser.parseString(
                new String(java.nio.file.Files.readAllBytes(path.toPath()), java.nio.charset.StandardCharsets.UTF_8))
                .getAsJsonObject();
        m.add("peer", new com.google.gson.JsonObject());
        java.nio.file.Files.write(path.toPath(), m.toString().getBytes(java.nio.charset.StandardCharsets.UTF_8));
        expectKind("unsupported_peer", root, new EngineOptions(),
                root + " has PEER layers, which this runtime does not run yet (edge-run does)");
    }

    @Test
    public void budgetBelowTheLargestTopKIsRefused() throws IOException {
        File root = a.write(tmp.newFolder());
        EngineOptions o = new EngineOptions();
        o.budgetBytes = 1999L;
        expectKind("budget_too_small", root, o, "memory budget 1,999 bytes is below the minimum of 2,000 bytes "
                + "(the 2 largest experts a layer may need at once)");
        o.budgetBytes = 2000L;
        open(root, o, new RecordedPrograms(new SyntheticScript(a), a)).close();
        assertEquals(Arrays.asList(2000L, 8000L), box(EngineFactory.budgetRange(Manifest.load(root), "executorch")));
    }

    private static List<Long> box(long[] v) {
        List<Long> out = new ArrayList<>();
        for (long x : v) {
            out.add(x);
        }
        return out;
    }

    @Test
    public void backendsAreCheckedAsPythonDoes() throws IOException {
        File root = a.write(tmp.newFolder());
        EngineOptions o = new EngineOptions();
        o.backend = "onnx";
        expectKind("missing_backend", root, o, "this artifact has no onnx programs (it has: executorch)");
        o.backend = "tflite";
        expectKind("unknown_backend", root, o, "unknown backend 'tflite'; choose one of executorch, onnx");
    }

    @Test
    public void aCorruptExpertFailsOnItsFirstLoadOnlyWhenVerifying() throws IOException {
        File root = a.write(tmp.newFolder());
        try (RandomAccessFile f = new RandomAccessFile(new File(root, "executorch/experts/l00_e00.pte"), "rw")) {
            f.write('X');
        }
        for (boolean verify : new boolean[] {true, false}) {
            EngineOptions o = new EngineOptions();
            o.verify = verify;
            try (Engine engine = open(root, o, new RecordedPrograms(new SyntheticScript(a), a))) {
                Generator.generate(engine, ids(12), 4, Sampler.greedy(), null, null, null);
                assertTrue("corrupt expert used without verification", !verify);
            } catch (ArtifactException e) {
                assertTrue(verify);
                assertEquals("sha_mismatch", e.kind());
            }
        }
    }

    @Test
    public void promptsRunInChunksAndExpertsInSlices() throws IOException {
        a.layerMaxTokens = 4;
        a.expertMaxTokens = 2;
        File root = a.write(tmp.newFolder());
        RecordedPrograms programs = new RecordedPrograms(new SyntheticScript(a), a);
        try (Engine engine = open(root, new EngineOptions(), programs)) {
            Generator.Result r = Generator.generate(engine, ids(10), 3, Sampler.greedy(), null, null, null);
            assertEquals(Arrays.asList(3, 8, 13), r.ids);
        }
        List<String> layer0 = new ArrayList<>();
        int heads = 0;
        int expertRows = 0;
        for (String c : programs.calls) {
            if (c.startsWith("layer_0")) {
                layer0.add(c);
            }
            heads += c.equals("head") ? 1 : 0;
            expertRows += c.startsWith("expert ") ? Integer.parseInt(c.substring(c.lastIndexOf(' ') + 1)) : 0;
        }
        assertEquals(Arrays.asList("layer_0 0 4", "layer_0 4 4", "layer_0 8 2", "layer_0 10 1", "layer_0 11 1"),
                layer0);
        assertEquals("head once per forward", 3, heads);
        assertEquals("every token's k experts ran once", 12 * a.topK * a.nLayers, expertRows);
        assertEquals("every program released", programs.opened.size(), programs.closed);
        assertEquals("k_past, v_past rows checked", a.nLayers * (0 + 4 + 8 + 10 + 11), programs.pastRowsChecked);
    }

    @Test
    public void layerProgramsReadThePastRowsOfTheCurrentSequenceUpToTheLastPosition() throws IOException {
        a.maxSeqLen = 12;
        a.layerMaxTokens = 5;
        File root = a.write(tmp.newFolder());
        RecordedPrograms programs = new RecordedPrograms(new SyntheticScript(a), a);
        try (Engine engine = open(root, new EngineOptions(), programs)) {
            Generator.generate(engine, ids(7), 3, Sampler.greedy(), null, null, null);
            // a new sequence over the old one's rows: its own k, v must be read back, the stale
            // rows never (RecordedPrograms checks each call's k_past, v_past against what it returned)
            int[] other = {5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11};
            engine.reset();
            engine.forward(other);
            engine.forward(new int[] {9});  // pos0 = 11: P = max_seq_len - 1 past rows, the most a program takes
            try {
                engine.forward(new int[] {9});
                fail("ran past max_seq_len");
            } catch (ArtifactException expected) {
                // refused before any program ran
            }
        }
        List<String> layer1 = new ArrayList<>();
        for (String c : programs.calls) {
            if (c.startsWith("layer_1")) {
                layer1.add(c);
            }
        }
        assertEquals(Arrays.asList("layer_1 0 5", "layer_1 5 2", "layer_1 7 1", "layer_1 8 1",
                "layer_1 0 5", "layer_1 5 5", "layer_1 10 1", "layer_1 11 1"), layer1);
        assertEquals(a.nLayers * (5 + 7 + 8 + 5 + 10 + 11), programs.pastRowsChecked);
    }

    @Test
    public void compressedExpertsRunOneExpertOnTheScaledInput() throws IOException {
        a.kMain = 1;
        a.compressedValue = 1.5f;  // every vector 1.5: theta = 1.5 whichever expert stands in
        File root = a.write(tmp.newFolder());
        RecordedPrograms programs = new RecordedPrograms(new SyntheticScript(a), a);
        int[] prompt = ids(6);
        try (Engine engine = open(root, new EngineOptions(), programs)) {
            Generator.generate(engine, prompt, 3, Sampler.greedy(), null, null, null);
            int tokens = prompt.length + 2;
            assertEquals(1, engine.selection.expertsPerToken);
            assertEquals(tokens * a.nLayers, engine.counts.expertsRun);
            assertEquals(tokens * a.nLayers, engine.counts.compressed);
        }
        // layer 0's experts see the embedding rows (x passes through the recorded layer) times theta
        List<float[]> rows = programs.expertInputs.get(0);
        for (int t = 0; t < prompt.length; t++) {
            float[] want = new float[a.dim];
            for (int c = 0; c < a.dim; c++) {
                want[c] = TestArtifact.embeddingValue(prompt[t], c) * 1.5f;
            }
            boolean found = false;
            for (float[] r : rows) {
                found |= Arrays.equals(r, want);
            }
            assertTrue("no expert got token " + t + "'s row times theta", found);
        }
        EngineOptions o = new EngineOptions();
        o.expertsPerToken = 3;
        expectKind("bad_option", root, o, "--experts-per-token must be between 1 and the model's top-k (2), not 3");
    }

    /** The synthetic routing, shifted by one position for each new sequence: sequences start on other experts. */
    private RecordedPrograms.Script shiftedPerSequence() {
        SyntheticScript synthetic = new SyntheticScript(a);
        int[] sequence = {-1};
        return new RecordedPrograms.Script() {
            @Override
            public float[] routerLogits(int layer, int pos0, int tokens, float[] h) {
                sequence[0] += pos0 == 0 && layer == 0 ? 1 : 0;
                return synthetic.routerLogits(layer, pos0 + sequence[0], tokens, h);
            }

            @Override
            public float[] headLogits(int call) {
                return synthetic.headLogits(call);
            }
        };
    }

    @Test
    public void stickyDeltaKeepsThePreviousTokensExpertsAndResetsPerSequence() throws IOException {
        int[] prompt = ids(6);
        EngineOptions o = new EngineOptions();
        o.trace = true;
        File plainRoot = a.write(tmp.newFolder());
        double plainRate = 0;
        int[][] plainFirst = new int[2][];  // layer 0's experts for each sequence's first token
        try (Engine engine = open(plainRoot, o, new RecordedPrograms(shiftedPerSequence(), a))) {
            for (int i = 0; i < 2; i++) {
                Generator.generate(engine, prompt, 4, Sampler.greedy(), null, null, null);
                plainRate += engine.routing().switchRate();
                plainFirst[i] = engine.routing().trace().get(0).experts[0];
            }
        }
        assertTrue("the synthetic routing never switches, so this test checks nothing", plainRate > 0);
        assertTrue("both sequences start on the same experts, so the reset is not checked",
                !Arrays.equals(plainFirst[0], plainFirst[1]));
        a.stickyDelta = 1000;  // larger than any logit margin: each layer keeps its first token's experts
        File root = a.write(tmp.newFolder());
        try (Engine engine = open(root, o, new RecordedPrograms(shiftedPerSequence(), a))) {
            for (int i = 0; i < 2; i++) {  // Generator.generate resets: the second sequence starts afresh
                Generator.generate(engine, prompt, 4, Sampler.greedy(), null, null, null);
                assertEquals(0.0, engine.routing().switchRate(), 0.0);
                assertArrayEquals(plainFirst[i], engine.routing().trace().get(0).experts[0]);
            }
        }
    }

    @Test
    public void prefetchStaysWithinTheBudget() throws IOException {
        File root = a.write(tmp.newFolder());
        for (long budget : new long[] {2000, 3000, 8000}) {
            final long[] peak = {0};
            EngineOptions o = new EngineOptions();
            o.prefetch = true;
            o.budgetBytes = budget;
            o.onCacheEvent = new ExpertCache.Listener() {
                @Override
                public void onEvent(String kind, ExpertKey key, long residentBytes) {
                    peak[0] = Math.max(peak[0], residentBytes);
                }
            };
            try (Engine engine = open(root, o, new RecordedPrograms(new SyntheticScript(a), a))) {
                Generator.generate(engine, ids(6), 10, Sampler.greedy(), null, null, null);
                assertTrue("prefetch issued nothing at " + budget, engine.prefetchIssued() > 0);
                assertTrue(engine.cache.peakBytes() <= budget);
                assertTrue(peak[0] <= budget);
            }
        }
    }

    /**
     * Experts run resident-first but are summed in id order: with k > 2 a residency-ordered sum made the
     * output depend on the budget (engine.py's test_expert_sum_does_not_depend_on_which_experts_are_resident).
     * Top-4 of 5 experts, one excluded per position, the others at weight 0.25 exactly; outputs 1e8, 1,
     * -1e8, 1, 1 make the order show in float32. Layer 1's input must be layer 0's input plus the id-ordered
     * sum, at every budget.
     */
    @Test
    public void expertSumIsInIdOrderAtEveryBudget() throws IOException {
        a.numExperts = 5;
        a.topK = 4;
        File root = a.write(tmp.newFolder());
        final float[] values = {1e8f, 1f, -1e8f, 1f, 1f};
        for (Long budget : new Long[] {null, 5000L, 6000L, 7000L, 8000L}) {
            final List<float[]> inputs = new ArrayList<>();
            final List<Integer> firstPositions = new ArrayList<>();
            RecordedPrograms programs = new RecordedPrograms(new RecordedPrograms.Script() {
                @Override
                public float[] routerLogits(int layer, int pos0, int tokens, float[] h) {
                    inputs.add(h.clone());
                    firstPositions.add(pos0);
                    float[] logits = new float[tokens * a.numExperts];
                    for (int t = 0; t < tokens; t++) {
                        logits[t * a.numExperts + (pos0 + t) % a.numExperts] = -1000f;
                    }
                    return logits;
                }

                @Override
                public float[] headLogits(int call) {
                    return new float[a.vocab];
                }
            }, a);
            programs.expertValues = new float[][] {values, values};
            EngineOptions o = new EngineOptions();
            o.budgetBytes = budget;
            try (Engine engine = open(root, o, programs)) {
                engine.forward(ids(5));
                for (int t = 0; t < 8; t++) {
                    engine.forward(new int[] {t});
                }
            }
            for (int call = 0; call < inputs.size(); call += 2) {  // (layer 0 input, layer 1 input) per step
                float[] h0 = inputs.get(call);
                float[] h1 = inputs.get(call + 1);
                for (int t = 0; t < h0.length / a.dim; t++) {
                    int excluded = (firstPositions.get(call) + t) % a.numExperts;
                    float sum = 0f;
                    for (int e = 0; e < a.numExperts; e++) {
                        sum += e == excluded ? 0f : 0.25f * values[e];
                    }
                    for (int c = 0; c < a.dim; c++) {
                        assertEquals("budget " + budget + ", call " + call + ", token " + t, h0[t * a.dim + c] + sum,
                                h1[t * a.dim + c], 0f);
                    }
                }
            }
        }
    }
}
