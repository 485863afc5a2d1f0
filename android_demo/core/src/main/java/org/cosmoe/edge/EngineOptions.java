package org.cosmoe.edge;

/** How to open an artifact (the options of edge-run that shape the engine). */
public final class EngineOptions {
    public String backend = "executorch";
    /** Bytes of resident experts; null: every expert fits (edge-run's "all"). */
    public Long budgetBytes = null;
    public String cachePolicy = CachePolicy.DEFAULT;
    /** Check each file's sha256 on its first load (sizes are always checked). */
    public boolean verify = true;
    public boolean prefetch = false;
    /** Keep every step's routing choices (conformance tests). */
    public boolean trace = false;
    public ExpertCache.Listener onCacheEvent = null;
    /** Experts that run per token; null: the model's k_main (compressed experts), else its top_k. */
    public Integer expertsPerToken = null;
    /** wait, compressed or skip (Selection). */
    public String onMiss = "wait";
    public double skipBelow = 0.5;
    public double cacheBias = 0.0;
}
