package org.cosmoe.edge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import com.google.gson.JsonObject;
import com.google.gson.JsonParser;

import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/** A whole edge-run on a synthetic artifact: streamed text, stop, and the report's keys. */
public class EdgeRunTest {
    /** cosmoe_edge/runtime/run.py's report keys, in its order. */
    private static final List<String> KEYS = Arrays.asList("backend", "engine", "quant", "prompt_tokens", "generated_tokens",
            "text", "ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "token_latency_ms", "load_ms",
            "peak_rss_bytes", "rss_after_load_bytes", "storage_read_bytes", "memory_budget_bytes", "expert_bytes_total",
            "resident_expert_bytes_peak", "expert_hits", "expert_misses", "expert_evictions", "expert_hit_rate",
            "expert_switch_rate", "prefetch", "expert_load_ms", "expert_loads", "process");

    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    private final TestArtifact a = new TestArtifact();

    private File artifact() throws IOException {
        a.vocab = Conformance.tokenizerVocabSize();  // the synthetic model must cover the real tokenizer's ids
        a.eosId = 0;
        a.tokenizerJson = new String(Files.readAllBytes(Conformance.file("tokenizer.json").toPath()),
                StandardCharsets.UTF_8);
        return a.write(tmp.newFolder());
    }

    private EdgeRun.Request request(File root) {
        EdgeRun.Request r = new EdgeRun.Request();
        r.artifact = root;
        r.prompt = "The dictionary type is";
        r.maxNewTokens = 8;
        return r;
    }

    @Test
    public void reportHasEdgeRunsKeysAndStreamsTheText() throws IOException {
        File root = artifact();
        final StringBuilder streamed = new StringBuilder();
        final List<EdgeRun.Progress> progress = new ArrayList<>();
        EdgeRun.Listener listener = new EdgeRun.Listener() {
            @Override
            public void write(String text) {
                streamed.append(text);
            }

            @Override
            public void onProgress(EdgeRun.Progress p) {
                progress.add(p);
            }
        };
        EdgeRun.Request req = request(root);
        req.memoryBudget = "50%";
        Report r = EdgeRun.run(req, new RecordedPrograms(new SyntheticScript(a), a), listener, null);
        JsonObject json = JsonParser.parseString(r.toJson()).getAsJsonObject();
        assertEquals(new ArrayList<String>(), ReportSchema.problems(json));
        int misses = json.get("expert_misses").getAsInt();
        assertTrue(json.get("expert_misses_decode").getAsInt() <= misses);
        assertEquals(false, json.get("preloaded").getAsBoolean());
        Tokenizer tok = Tokenizer.fromFile(new File(root, "tokenizer.json"));
        assertEquals(tok.encode(req.prompt).length, json.get("prompt_tokens").getAsInt());
        assertEquals(8, json.get("generated_tokens").getAsInt());
        assertEquals(req.prompt + r.text, streamed.toString());
        assertEquals(8, progress.size());
        assertEquals(4000, json.get("memory_budget_bytes").getAsLong());
        assertEquals(8000, json.get("expert_bytes_total").getAsLong());
        assertEquals("fp32", json.get("quant").getAsString());
        int hits = json.get("expert_hits").getAsInt();
        assertEquals((double) hits / (hits + misses), json.get("expert_hit_rate").getAsDouble(), 1e-12);
        assertTrue(json.get("resident_expert_bytes_peak").getAsLong() <= 4000);
        assertTrue(json.get("peak_rss_bytes").getAsLong() > 0);
        assertTrue(json.get("process").getAsString().matches("\\d+@\\d+"));
        String table = MetricsTable.of(r);
        for (String row : new String[] {"time to first token", "decode", "peak RSS (VmHWM)", "storage read",
            "expert hits / misses / evictions", "expert hit rate", "expert switch rate"}) {
            assertTrue(row, table.contains(row));
        }
    }

    /** The check itself fails on drift: a key missing, one extra, one of the wrong type, or keys reordered. */
    @Test
    public void schemaCheckCatchesDrift() {
        Report report = new Report();
        report.backend = "executorch";
        report.quant = "int4";
        report.text = "";
        report.process = "1@2";
        JsonObject ok = JsonParser.parseString(report.toJson()).getAsJsonObject();
        assertEquals(new ArrayList<String>(), ReportSchema.problems(ok));
        assertEquals(ReportSchema.schema().getAsJsonObject("properties").getAsJsonObject("report_version")
                .get("const").getAsInt(), Report.VERSION);

        JsonObject missing = ok.deepCopy();
        missing.remove("expert_misses_decode");
        assertEquals(Arrays.asList("missing key expert_misses_decode"), ReportSchema.problems(missing));
        JsonObject extra = ok.deepCopy();
        extra.addProperty("pid", 1);
        assertEquals(Arrays.asList("unknown key pid"), ReportSchema.problems(extra));
        JsonObject nested = ok.deepCopy();
        nested.getAsJsonObject("prefetch").remove("useful");
        assertEquals(Arrays.asList("missing key prefetch.useful"), ReportSchema.problems(nested));
        JsonObject wrongType = ok.deepCopy();
        wrongType.addProperty("expert_hits", 1.5);
        assertEquals(Arrays.asList("expert_hits should be integer, is 1.5"), ReportSchema.problems(wrongType));
        JsonObject version = ok.deepCopy();
        version.addProperty("report_version", 1);
        assertEquals(Arrays.asList("report_version should be 5, is 1"), ReportSchema.problems(version));
        JsonObject reordered = new JsonObject();
        reordered.add("quant", ok.get("quant"));
        for (String k : ok.keySet()) {
            if (!k.equals("quant")) {
                reordered.add(k, ok.get(k));
            }
        }
        assertEquals(1, ReportSchema.problems(reordered).size());
    }

    @Test
    public void stopEndsTheRunWithTheTokensSoFar() throws IOException {
        final List<Integer> seen = new ArrayList<>();
        EdgeRun.Listener listener = new EdgeRun.Listener() {
            @Override
            public void write(String text) {
            }

            @Override
            public void onProgress(EdgeRun.Progress p) {
                seen.add(p.generatedTokens);
            }
        };
        Report r = EdgeRun.run(request(artifact()), new RecordedPrograms(new SyntheticScript(a), a), listener,
                new Generator.StopSignal() {
                    @Override
                    public boolean stopRequested() {
                        return seen.size() >= 3;
                    }
                });
        assertEquals(3, r.generatedTokens);
    }

    @Test
    public void badRequestsFailWithTheirKinds() throws IOException {
        File root = artifact();
        EdgeRun.Request req = request(root);
        req.memoryBudget = "lots";
        expect("bad_budget", req);
        req = request(root);
        req.artifact = new File(root, "nope");
        expect("not_found", req);
        req = request(root);
        req.prompt = "<|endoftext|>";
        try {
            EdgeRun.run(req, new RecordedPrograms(new SyntheticScript(a), a), null, null);
        } catch (ArtifactException e) {
            fail("the special token alone is one token: " + e.getMessage());
        }
    }

    private void expect(String kind, EdgeRun.Request req) {
        try {
            EdgeRun.run(req, new RecordedPrograms(new SyntheticScript(a), a), null, null);
            fail("ran; expected " + kind);
        } catch (ArtifactException e) {
            assertEquals(kind, e.kind());
        }
    }
}
