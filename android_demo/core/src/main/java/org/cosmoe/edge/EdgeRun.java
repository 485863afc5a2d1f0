package org.cosmoe.edge;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import java.io.File;

/** One edge-run (cosmoe_edge/runtime/run.py run): load, generate, measure; the report edge-run writes. */
public final class EdgeRun {
    /** edge-run's options. */
    public static final class Request {
        public File artifact;
        public String prompt = "";
        public int maxNewTokens = 128;
        public String backend = "executorch";
        public String memoryBudget = "all";
        public String cachePolicy = CachePolicy.DEFAULT;
        public boolean prefetch = false;
        public double temperature = 0.0;
        public int topK = 0;
        public double topP = 1.0;
        public long seed = 0;
        public boolean verify = true;
        /** Experts that run per token; null: the model's default (Selection). */
        public Integer expertsPerToken = null;
        public String onMiss = "wait";
        public double skipBelow = 0.5;
        public double cacheBias = 0.0;

        /** The checks edge-run's command line makes before it starts. */
        public void validate() {
            if (!Manifest.BACKENDS.contains(backend)) {
                throw new IllegalArgumentException("unknown backend '" + backend + "'; choose executorch or onnx");
            }
            CachePolicy.check(cachePolicy);
            if (prompt.isEmpty()) {
                throw new IllegalArgumentException("the prompt is empty");
            }
            if (maxNewTokens < 1) {
                throw new IllegalArgumentException("max new tokens must be at least 1");
            }
            if (temperature < 0 || !(topP > 0 && topP <= 1) || topK < 0) {
                throw new IllegalArgumentException("need temperature >= 0, 0 < top-p <= 1 and top-k >= 0");
            }
        }
    }

    /** Figures while tokens stream, for a live metrics panel. */
    public static final class Progress {
        public int generatedTokens;
        public double ttftMs;
        public double decodeTokensPerS;
        public int expertHits;
        public int expertMisses;
        public int expertEvictions;
        public long residentExpertBytes;
        public long memoryBudgetBytes;
    }

    /** Streamed text (the prompt first, as edge-run echoes it) and progress after each token. */
    public interface Listener extends TextStream.Sink {
        void onProgress(Progress progress);
    }

    private EdgeRun() {
    }

    public static Report run(Request req, ProgramLoader loader, final Listener listener, Generator.StopSignal stop) {
        req.validate();
        Manifest manifest = Manifest.load(req.artifact);
        long read0 = ProcStats.storageReadBytes();
        Tokenizer tokenizer = Tokenizer.fromFile(manifest.checkFile(manifest.entry("tokenizer"), req.verify));
        int[] promptIds = tokenizer.encode(req.prompt);
        int maxSeqLen = ModelConfig.of(manifest).maxSeqLen;
        if (promptIds.length == 0) {
            throw new ArtifactException("the prompt encodes to no tokens");
        }
        if (promptIds.length >= maxSeqLen) {
            throw new ArtifactException("the prompt is " + promptIds.length + " tokens; the model's context is "
                    + maxSeqLen);
        }

        long t = System.nanoTime();
        EngineOptions o = new EngineOptions();
        o.backend = req.backend;
        o.budgetBytes = BudgetParser.parse(req.memoryBudget, sectionTotal(manifest, req.backend));
        o.cachePolicy = req.cachePolicy;
        o.verify = req.verify;
        o.prefetch = req.prefetch;
        o.expertsPerToken = req.expertsPerToken;
        o.onMiss = req.onMiss;
        o.skipBelow = req.skipBelow;
        o.cacheBias = req.cacheBias;
        final Engine engine = EngineFactory.open(req.artifact, o, loader);
        Generator.Result result;
        Report r = new Report();
        try {
            r.loadMs = (System.nanoTime() - t) / 1e6;
            r.rssAfterLoadBytes = ProcStats.rssBytes();
            if (listener != null) {
                listener.write(req.prompt);
            }
            final TextStream text = new TextStream(tokenizer, listener);
            final long[] startNs = {System.nanoTime(), 0};  // run start, first-token time
            final int[] count = {0};
            final int[] missesAtFirst = {-1};  // the cache's misses once the prompt is in: what follows is decode's
            Generator.TokenListener onToken = new Generator.TokenListener() {
                @Override
                public void onToken(int token) {
                    text.onToken(token);
                    long now = System.nanoTime();
                    if (count[0]++ == 0) {
                        startNs[1] = now;
                        missesAtFirst[0] = engine.cache.misses();
                    }
                    if (listener != null) {
                        listener.onProgress(progress(engine, count[0], (startNs[1] - startNs[0]) / 1e6,
                                count[0] > 1 ? (count[0] - 1) / ((now - startNs[1]) / 1e9) : 0.0));
                    }
                }
            };
            JsonElement eos = manifest.json.getAsJsonObject("tokenizer").get("eos_id");
            result = Generator.generate(engine, promptIds, req.maxNewTokens,
                    new Sampler(req.temperature, req.topK, req.topP, req.seed),
                    eos == null || eos.isJsonNull() ? null : eos.getAsInt(), onToken, stop);
            r.expertMissesDecode = missesAtFirst[0] < 0 ? 0 : engine.cache.misses() - missesAtFirst[0];
        } finally {
            engine.close();
        }
        ExpertCache c = engine.cache;
        r.backend = req.backend;
        r.quant = manifest.json.getAsJsonObject("quant").get("scheme").getAsString();
        r.generatedTokens = result.ids.size();
        r.text = tokenizer.decode(result.ids);
        r.setTimings(promptIds.length, result.prefillNs, result.tokenNs);
        r.peakRssBytes = ProcStats.peakRssBytes();
        long read1 = ProcStats.storageReadBytes();
        r.storageReadBytes = read0 < 0 || read1 < 0 ? -1 : read1 - read0;
        r.memoryBudgetBytes = c.budget();
        r.expertBytesTotal = engine.store.totalCost();
        r.residentExpertBytesPeak = c.peakBytes();
        r.expertHits = c.hits();
        r.expertMisses = c.misses();
        r.expertEvictions = c.evictions();
        r.expertHitRate = c.hits() + c.misses() > 0 ? (double) c.hits() / (c.hits() + c.misses()) : 0.0;
        r.expertSwitchRate = engine.routing().switchRate();
        r.prefetchIssued = engine.prefetchIssued();
        r.prefetchUseful = c.prefetchUseful();
        r.expertsPerToken = engine.selection.expertsPerToken;
        r.onMiss = engine.selection.onMiss;
        r.skipBelow = engine.selection.skipBelow;
        r.cacheBias = engine.selection.cacheBias;
        r.expertsRun = engine.counts.expertsRun;
        r.compressed = engine.counts.compressed;
        r.missesCompressed = engine.counts.missesCompressed;
        r.missesSkipped = engine.counts.missesSkipped;
        r.biasChanged = engine.counts.biasChanged;
        r.expertLoadMs = engine.store.loadNs() / 1e6;
        r.expertLoads = engine.store.loads();
        r.process = ProcStats.processId();
        return r;
    }

    /** All experts' resident bytes for the backend (0 when it has none): what "25%" is of. */
    static long sectionTotal(Manifest m, String backend) {
        JsonElement b = m.json.get("backends");
        if (b == null || !b.isJsonObject() || !b.getAsJsonObject().has(backend)) {
            return 0;
        }
        JsonObject section = b.getAsJsonObject().getAsJsonObject(backend);
        long total = 0;
        if (section.has("experts")) {
            for (JsonElement e : section.getAsJsonArray("experts")) {
                total += FileEntry.of(e).residentBytes();
            }
        }
        return total;
    }

    private static Progress progress(Engine engine, int generated, double ttftMs, double decodeTokensPerS) {
        Progress p = new Progress();
        ExpertCache c = engine.cache;
        p.generatedTokens = generated;
        p.ttftMs = ttftMs;
        p.decodeTokensPerS = decodeTokensPerS;
        p.expertHits = c.hits();
        p.expertMisses = c.misses();
        p.expertEvictions = c.evictions();
        p.residentExpertBytes = c.residentBytes();
        p.memoryBudgetBytes = c.budget();
        return p;
    }
}
