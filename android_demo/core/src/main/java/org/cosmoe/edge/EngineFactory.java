package org.cosmoe.edge;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import java.io.File;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Opens an artifact into an {@link Engine} in the order engine.py's Engine.__init__ does (so the
 * first error a broken artifact hits is the same): manifest, backend section, embedding, routers
 * (with prefetch), backbone programs, expert store, budget check, cache.
 */
public final class EngineFactory {
    private EngineFactory() {
    }

    public static Engine open(File artifact, EngineOptions o, ProgramLoader loader) {
        Manifest m = Manifest.load(artifact);
        JsonObject section = m.backendSection(o.backend);
        ModelConfig cfg = ModelConfig.of(m);
        Embedding embedding = Embedding.load(m.checkFile(m.entry("embedding"), o.verify));
        if (o.prefetch && cfg.cmoe()) {
            throw new ArtifactException("prefetch guesses with a linear router; this model's router is CMoE's");
        }
        float[][] routers = o.prefetch ? routers(m, cfg, o.verify) : null;
        float[][][] vectors = m.json.has("compressed_experts") ? vectors(m, cfg, o.verify) : null;
        Selection selection = Selection.resolve(cfg, vectors != null, o.expertsPerToken, o.onMiss, o.skipBelow,
                o.cacheBias);
        CachePolicy policy = CachePolicy.named(o.cachePolicy, cfg.nLayers, cfg.numExperts);

        JsonObject bb = Json.object(section, "backbone");
        JsonObject partsJson = Json.object(bb, "parts");
        Map<String, ProgramRunner> programs = new LinkedHashMap<>();
        Map<String, Engine.Part> parts = new LinkedHashMap<>();
        try {
            for (JsonElement f : bb.getAsJsonArray("files")) {
                FileEntry entry = FileEntry.of(f);
                File path = m.checkFile(entry, o.verify);
                List<String> methods = new ArrayList<>();
                for (Map.Entry<String, JsonElement> p : partsJson.entrySet()) {
                    if (Json.string(p.getValue().getAsJsonObject(), "path").equals(entry.path)) {
                        methods.add(Json.string(p.getValue().getAsJsonObject(), "method"));
                    }
                }
                programs.put(entry.path, loader.open(path, methods));
            }
            for (Map.Entry<String, JsonElement> p : partsJson.entrySet()) {
                JsonObject part = p.getValue().getAsJsonObject();
                ProgramRunner program = programs.get(Json.string(part, "path"));
                if (program == null) {
                    throw new ArtifactException("backbone part " + p.getKey() + " names a file the manifest does "
                            + "not list", "missing_file");
                }
                parts.put(p.getKey(), new Engine.Part(program, Json.string(part, "method")));
            }

            List<FileEntry> experts = new ArrayList<>();
            for (JsonElement e : section.getAsJsonArray("experts")) {
                experts.add(FileEntry.of(e));
            }
            ExpertStore store = new ExpertStore(m, experts, o.verify, loader);
            long total = store.totalCost();
            long minBudget = minBudget(selection.expertsPerToken, store.maxCost());
            long budget = o.budgetBytes == null ? total : o.budgetBytes;
            if (budget < minBudget) {
                throw new ArtifactException(String.format(Locale.ROOT, "memory budget %,d bytes is below the "
                        + "minimum of %,d bytes (the %d largest experts a layer may need at once)", budget, minBudget,
                        selection.expertsPerToken), "budget_too_small");
            }
            ExpertCache cache = new ExpertCache(store, budget, policy, o.onCacheEvent);
            return new Engine(cfg, embedding, parts, new ArrayList<>(programs.values()), store, cache, routers,
                    o.trace, selection, vectors);
        } catch (RuntimeException e) {
            for (ProgramRunner p : programs.values()) {
                p.close();
            }
            throw e;
        }
    }

    /** The smallest budget that works: the largest experts one layer may need at once (k of them). */
    public static long minBudget(int k, long largestExpert) {
        return k * largestExpert;
    }

    /** [minimum budget, all experts' bytes] of a backend, for the budget slider. */
    public static long[] budgetRange(Manifest m, String backend) {
        long total = 0;
        long max = 0;
        for (JsonElement e : m.backendSection(backend).getAsJsonArray("experts")) {
            long cost = FileEntry.of(e).residentBytes();
            total += cost;
            max = Math.max(max, cost);
        }
        ModelConfig cfg = ModelConfig.of(m);
        return new long[] {minBudget(cfg.kMain > 0 ? cfg.kMain : cfg.topK, max), total};
    }

    /** compressed.safetensors: per layer, the (E, D) compressed-expert vectors. */
    private static float[][][] vectors(Manifest m, ModelConfig cfg, boolean verify) {
        SafeTensors st = SafeTensors.read(m.checkFile(m.entry("compressed_experts"), verify));
        float[][][] out = new float[cfg.nLayers][cfg.numExperts][];
        for (int l = 0; l < cfg.nLayers; l++) {
            float[] flat = st.floats("layer_" + l);
            if (flat.length != cfg.numExperts * cfg.dim) {
                throw new ArtifactException("compressed.safetensors: layer_" + l + " should be (num_experts, dim)");
            }
            for (int e = 0; e < cfg.numExperts; e++) {
                out[l][e] = java.util.Arrays.copyOfRange(flat, e * cfg.dim, (e + 1) * cfg.dim);
            }
        }
        return out;
    }

    private static float[][] routers(Manifest m, ModelConfig cfg, boolean verify) {
        SafeTensors st = SafeTensors.read(m.checkFile(m.entry("routers"), verify));
        float[][] out = new float[cfg.nLayers][];
        for (int l = 0; l < cfg.nLayers; l++) {
            out[l] = st.floats("layer_" + l);
            if (out[l].length != cfg.numExperts * cfg.dim) {
                throw new ArtifactException("routers.safetensors: layer_" + l + " should be (num_experts, dim)");
            }
        }
        return out;
    }
}
