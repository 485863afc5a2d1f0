package org.cosmoe.edge;

import com.google.gson.GsonBuilder;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The figures of one run, written as the same JSON (same keys, same order) as {@code edge-run --report}.
 * The keys are defined once, in cosmoe_edge/runtime/report.schema.json; a test checks this class against it.
 */
public final class Report {
    /** report.schema.json's report_version. */
    public static final int VERSION = 5;

    public String backend;
    public String quant;
    public int promptTokens;
    public int generatedTokens;
    public String text;
    public double ttftMs;
    public double prefillTokensPerS;
    public double decodeTokensPerS;
    public double latencyP50Ms;
    public double latencyP95Ms;
    public double latencyMaxMs;
    public double loadMs;
    /** No runtime library is imported on the JVM: the native libraries load with the app. */
    public double runtimeImportMs;
    public long peakRssBytes;
    public long rssAfterLoadBytes;
    public long storageReadBytes;
    public long memoryBudgetBytes;
    public long expertBytesTotal;
    public long residentExpertBytesPeak;
    public int expertHits;
    public int expertMisses;
    /** The misses after the first token (the prompt's first loads are the time to first token's). */
    public int expertMissesDecode;
    public int expertEvictions;
    public double expertHitRate;
    public double expertSwitchRate;
    public int prefetchIssued;
    public int prefetchUseful;
    /** The report's selection (cosmoe_edge/runtime/selection.py): the run's choices, then their counts. */
    public int expertsPerToken;
    public String onMiss = "wait";
    public double skipBelow = 0.5;
    public double cacheBias;
    public int expertsRun;
    public int compressed;
    public int missesCompressed;
    public int missesSkipped;
    public int biasChanged;
    public double expertLoadMs;
    public int expertLoads;
    /** The Android demo has no preload option: always false. */
    public boolean preloaded;
    public String process;

    /** Fills the timing figures from a generation's timings, as run.py does. */
    public void setTimings(int promptTokens, long prefillNs, List<Long> tokenNs) {
        this.promptTokens = promptTokens;
        ttftMs = prefillNs / 1e6;
        prefillTokensPerS = prefillNs != 0 ? promptTokens / (prefillNs / 1e9) : 0.0;
        double[] lat = new double[tokenNs.size()];
        double sumMs = 0;
        for (int i = 0; i < lat.length; i++) {
            lat[i] = tokenNs.get(i) / 1e6;
            sumMs += lat[i];
        }
        double decodeS = sumMs / 1e3;
        decodeTokensPerS = decodeS != 0 ? lat.length / decodeS : 0.0;
        Arrays.sort(lat);
        latencyP50Ms = percentile(lat, 50);
        latencyP95Ms = percentile(lat, 95);
        latencyMaxMs = lat.length > 0 ? lat[lat.length - 1] : 0.0;
    }

    /** numpy.percentile's default (linear) method, including its rounding of the interpolation. */
    static double percentile(double[] sorted, double q) {
        if (sorted.length == 0) {
            return 0.0;
        }
        double pos = q / 100 * (sorted.length - 1);
        int lo = (int) Math.floor(pos);
        int hi = Math.min(lo + 1, sorted.length - 1);
        double t = pos - lo;
        double a = sorted[lo];
        double b = sorted[hi];
        return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
    }

    public Map<String, Object> toMap() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("report_version", VERSION);
        m.put("backend", backend);
        m.put("engine", "java");
        m.put("quant", quant);
        m.put("prompt_tokens", promptTokens);
        m.put("generated_tokens", generatedTokens);
        m.put("text", text);
        m.put("ttft_ms", ttftMs);
        m.put("prefill_tokens_per_s", prefillTokensPerS);
        m.put("decode_tokens_per_s", decodeTokensPerS);
        Map<String, Object> lat = new LinkedHashMap<>();
        lat.put("p50", latencyP50Ms);
        lat.put("p95", latencyP95Ms);
        lat.put("max", latencyMaxMs);
        m.put("token_latency_ms", lat);
        m.put("load_ms", loadMs);
        m.put("runtime_import_ms", runtimeImportMs);
        m.put("peak_rss_bytes", peakRssBytes);
        m.put("rss_after_load_bytes", rssAfterLoadBytes);
        m.put("storage_read_bytes", storageReadBytes);
        m.put("memory_budget_bytes", memoryBudgetBytes);
        m.put("expert_bytes_total", expertBytesTotal);
        m.put("resident_expert_bytes_peak", residentExpertBytesPeak);
        m.put("expert_hits", expertHits);
        m.put("expert_misses", expertMisses);
        m.put("expert_misses_decode", expertMissesDecode);
        m.put("expert_evictions", expertEvictions);
        m.put("expert_hit_rate", expertHitRate);
        m.put("expert_switch_rate", expertSwitchRate);
        Map<String, Object> prefetch = new LinkedHashMap<>();
        prefetch.put("issued", prefetchIssued);
        prefetch.put("useful", prefetchUseful);
        m.put("prefetch", prefetch);
        Map<String, Object> selection = new LinkedHashMap<>();
        selection.put("experts_per_token", expertsPerToken);
        selection.put("on_miss", onMiss);
        selection.put("skip_below", skipBelow);
        selection.put("cache_bias", cacheBias);
        selection.put("experts_run", expertsRun);
        selection.put("compressed", compressed);
        selection.put("misses_compressed", missesCompressed);
        selection.put("misses_skipped", missesSkipped);
        selection.put("bias_changed", biasChanged);
        m.put("selection", selection);
        // PEER rows (cosmoe_edge/runtime/rows.py): this runtime has no PEER layers, so the figures are zeros
        Map<String, Object> rows = new LinkedHashMap<>();
        for (String k : new String[] {"budget_bytes", "total_bytes", "resident_bytes_peak", "rows_used", "row_hits",
                "row_misses", "pages_read", "bytes_read", "bytes_read_decode"}) {
            rows.put(k, 0L);
        }
        m.put("rows", rows);
        m.put("expert_load_ms", expertLoadMs);
        m.put("expert_loads", expertLoads);
        m.put("preloaded", preloaded);
        m.put("process", process);
        return m;
    }

    public String toJson() {
        return new GsonBuilder().setPrettyPrinting().disableHtmlEscaping().create().toJson(toMap());
    }
}
