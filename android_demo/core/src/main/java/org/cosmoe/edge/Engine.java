package org.cosmoe.edge;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

/**
 * The decode loop over an artifact (cosmoe_edge/runtime/engine.py Engine). Per layer l, for the T tokens
 * of a step at positions pos0..pos0+T-1: h, x, logits, k, v = layer_l(h, cos, sin, k_past_l,
 * v_past_l, mask), where k_past_l, v_past_l are the first max(pos0, 1) rows of the layer's
 * position-major cache (see {@link KvCache}, {@link AttentionMask}); store k, v (T, n_kv_heads,
 * head_dim) at rows pos0..pos0+T-1; route x by logits; h += sum_k w_k * expert_k(x). Prompts run
 * in chunks of layer_max_tokens; the head runs on the last row.
 */
public final class Engine implements AutoCloseable {
    /** A backbone part: the program holding it and the method to call. */
    public static final class Part {
        final ProgramRunner program;
        final String method;

        public Part(ProgramRunner program, String method) {
            this.program = program;
            this.method = method;
        }
    }

    public final ModelConfig cfg;
    public final ExpertStore store;
    public final ExpertCache cache;
    private final Embedding embedding;
    private final Map<String, Part> parts;
    private final List<ProgramRunner> backbone;
    private final float[][] routers;
    private final boolean trace;
    private final Rope rope;
    private final KvCache kv;
    private final ExecutorService prefetcher;
    private volatile int prefetchIssued;
    private Future<?> prefetchPending;
    private RoutingLog routing;
    private int pos;
    public final Selection selection;
    public final Selection.Counts counts = new Selection.Counts();
    /** Per layer, the (E, D) compressed-expert vectors; null when the artifact has none. */
    private final float[][][] vectors;
    /** Per layer, the sticky top-k state; null when the model has no sticky delta. */
    private final Selection.Sticky[] sticky;

    /** {@code routers} (one (E, D) matrix per layer) turns prefetch on; null leaves it off. */
    public Engine(ModelConfig cfg, Embedding embedding, Map<String, Part> parts, List<ProgramRunner> backbone,
                  ExpertStore store, ExpertCache cache, float[][] routers, boolean trace, Selection selection,
                  float[][][] vectors) {
        this.cfg = cfg;
        this.embedding = embedding;
        this.parts = parts;
        this.backbone = backbone;
        this.store = store;
        this.cache = cache;
        this.routers = routers;
        this.trace = trace;
        this.selection = selection;
        this.vectors = vectors;
        this.sticky = cfg.stickyDelta > 0 ? new Selection.Sticky[cfg.nLayers] : null;
        for (int layer = 0; sticky != null && layer < cfg.nLayers; layer++) {
            sticky[layer] = new Selection.Sticky(cfg.stickyDelta, cfg.numExperts);
        }
        this.rope = new Rope(cfg.headDim, cfg.maxSeqLen, cfg.ropeTheta);
        this.kv = new KvCache(cfg.nLayers, cfg.nKvHeads, cfg.maxSeqLen, cfg.headDim);
        this.prefetcher = routers == null ? null : Executors.newSingleThreadExecutor();
        this.routing = new RoutingLog(trace);
    }

    /** Start a new sequence. Old cache rows need no clearing: programs only see rows before pos. */
    public void reset() {
        pos = 0;
        routing = new RoutingLog(trace);
        for (Selection.Sticky s : sticky == null ? new Selection.Sticky[0] : sticky) {
            s.reset();
        }
    }

    public RoutingLog routing() {
        return routing;
    }

    public int prefetchIssued() {
        return prefetchIssued;
    }

    /** Runs {@code ids} at the next positions; returns the last token's logits. */
    public float[] forward(int[] ids) {
        if (pos + ids.length > cfg.maxSeqLen) {
            throw new ArtifactException("sequence would exceed the model's " + cfg.maxSeqLen + " positions");
        }
        float[] logits = null;
        for (int i = 0; i < ids.length; i += cfg.layerMaxTokens) {
            int[] chunk = Arrays.copyOfRange(ids, i, Math.min(ids.length, i + cfg.layerMaxTokens));
            float[] h = step(chunk);
            if (i + cfg.layerMaxTokens >= ids.length) {
                float[] last = Arrays.copyOfRange(h, (chunk.length - 1) * cfg.dim, chunk.length * cfg.dim);
                logits = run("head", FloatTensor.of(last, 1, cfg.dim))[0].toArray();
            }
        }
        return logits;
    }

    private FloatTensor[] run(String part, FloatTensor... inputs) {
        Part p = parts.get(part);
        if (p == null) {
            throw new ArtifactException("the manifest's backbone has no part '" + part + "'");
        }
        return p.program.run(p.method, inputs);
    }

    private float[] step(int[] ids) {
        int n = ids.length;
        int p0 = pos;
        int d = cfg.dim;
        float[] h = embedding.rows(ids);
        int kvRow = cfg.nKvHeads * cfg.headDim;
        FloatTensor mask = AttentionMask.build(p0, n, cfg.rep());
        FloatTensor cos = rope.cos(p0, n);
        FloatTensor sin = rope.sin(p0, n);
        for (int layer = 0; layer < cfg.nLayers; layer++) {
            FloatTensor[] out = run("layer_" + layer, FloatTensor.of(h, n, d), cos, sin, kv.pastKeys(layer, p0),
                    kv.pastValues(layer, p0), mask);
            if (out.length != 5 || out[0].numel() != n * d || out[1].numel() != n * d
                    || out[2].numel() != n * cfg.numExperts || out[3].numel() != n * kvRow
                    || out[4].numel() != n * kvRow) {
                throw new IllegalStateException("layer_" + layer + " returned outputs of unexpected shapes");
            }
            kv.write(layer, p0, out[3], out[4]);
            float[] x = out[1].toArray();
            Router.Routing r;
            float[][] theta = null;
            if (cfg.cmoe()) {
                r = cfg.route(layer, out[2].toArray());
                counts.expertsRun += n * cfg.topK;
            } else {
                boolean[] resident = null;
                if (selection.needsResidency()) {
                    resident = new boolean[cfg.numExperts];
                    for (int e = 0; e < cfg.numExperts; e++) {
                        resident[e] = cache.isResident(new ExpertKey(layer, e));
                    }
                }
                Selection.Result s = selection.select(out[2].toArray(), cfg.numExperts, cfg.topK, cfg.routerRenorm,
                        vectors == null ? null : vectors[layer], resident, counts,
                        sticky == null ? null : sticky[layer]);
                r = s.routing;
                theta = s.theta;
            }
            routing.add(layer, p0, r.experts);
            prefetchNext(layer, x, n);
            float[] y = experts(layer, theta == null ? x : scaled(x, theta), n, r);
            float[] hOut = out[0].toArray();
            h = new float[n * d];
            for (int i = 0; i < h.length; i++) {
                h[i] = hOut[i] + y[i];
            }
        }
        pos += n;
        return h;
    }

    /**
     * Sum over each token's k experts of weight * expert(x). Every expert runs once on all of its
     * tokens (in slices of the program's maximum), the ones already resident first, then by id; the
     * sum is taken in expert-id order whatever ran first (float addition is not associative: with
     * k > 2 an order that followed residency made the output depend on the budget; engine.py too).
     */
    /** Row t of x times theta[t]: the input of the experts that run when others stand in compressed. */
    private static float[] scaled(float[] x, float[][] theta) {
        float[] out = new float[x.length];
        int d = theta[0].length;
        for (int i = 0; i < x.length; i++) {
            out[i] = x[i] * theta[i / d][i % d];
        }
        return out;
    }

    private float[] experts(int layer, float[] x, int n, Router.Routing r) {
        int d = cfg.dim;
        float[] out = new float[n * d];
        TreeSet<Integer> needed = new TreeSet<>();
        for (int[] row : r.experts) {
            for (int e : row) {
                if (e >= 0) {
                    needed.add(e);
                }
            }
        }
        final Set<Integer> resident = new HashSet<>();
        for (int e : needed) {
            if (cache.isResident(new ExpertKey(layer, e))) {
                resident.add(e);
            }
        }
        List<Integer> order = new ArrayList<>(needed);
        Collections.sort(order, new Comparator<Integer>() {
            @Override
            public int compare(Integer a, Integer b) {
                boolean ra = resident.contains(a);
                boolean rb = resident.contains(b);
                return ra != rb ? (ra ? -1 : 1) : Integer.compare(a, b);
            }
        });
        TreeMap<Integer, Contribution> byId = new TreeMap<>();
        for (int e : order) {
            ExpertKey key = new ExpertKey(layer, e);
            ProgramRunner program = cache.get(key, Collections.singleton(key));
            List<int[]> uses = new ArrayList<>();  // (row, slot) where the row chose e
            for (int t = 0; t < n; t++) {
                for (int s = 0; s < cfg.topK; s++) {
                    if (r.experts[t][s] == e) {
                        uses.add(new int[] {t, s});
                    }
                }
            }
            float[] weighted = new float[uses.size() * d];
            for (int i = 0; i < uses.size(); i += cfg.expertMaxTokens) {
                int m = Math.min(cfg.expertMaxTokens, uses.size() - i);
                float[] xs = new float[m * d];
                for (int j = 0; j < m; j++) {
                    System.arraycopy(x, uses.get(i + j)[0] * d, xs, j * d, d);
                }
                float[] y = program.run("forward", FloatTensor.of(xs, m, d))[0].toArray();
                for (int j = 0; j < m; j++) {
                    float w = r.weights[uses.get(i + j)[0]][uses.get(i + j)[1]];
                    for (int c = 0; c < d; c++) {
                        weighted[(i + j) * d + c] = w * y[j * d + c];
                    }
                }
            }
            byId.put(e, new Contribution(uses, weighted));
        }
        for (Contribution part : byId.values()) {
            for (int j = 0; j < part.uses.size(); j++) {
                int t = part.uses.get(j)[0];
                for (int c = 0; c < d; c++) {
                    out[t * d + c] += part.weighted[j * d + c];
                }
            }
        }
        return out;
    }

    /** One expert's weighted outputs and the (row, slot) pairs they belong to. */
    private static final class Contribution {
        final List<int[]> uses;
        final float[] weighted;

        Contribution(List<int[]> uses, float[] weighted) {
            this.uses = uses;
            this.weighted = weighted;
        }
    }

    /**
     * Guesses layer+1's experts by applying its router to this layer's expert input, and loads them
     * on a background thread while this layer's experts run (mixtral-offloading's trick). A prefetch
     * pins only the layer whose experts run beside it, so the previous one must end before this
     * layer's experts run: otherwise it could evict (and close) one in use.
     */
    private void prefetchNext(int layer, float[] x, int n) {
        if (prefetcher == null) {
            return;
        }
        if (prefetchPending != null) {
            awaitPrefetch();
        }
        if (layer + 1 >= cfg.nLayers) {
            return;
        }
        int d = cfg.dim;
        int numE = cfg.numExperts;
        float[] w = routers[layer + 1];
        float[] logits = new float[n * numE];
        for (int t = 0; t < n; t++) {
            for (int e = 0; e < numE; e++) {
                float acc = 0f;
                for (int c = 0; c < d; c++) {
                    acc += x[t * d + c] * w[e * d + c];
                }
                logits[t * numE + e] = acc;
            }
        }
        TreeSet<Integer> guess = new TreeSet<>();
        for (int[] row : Router.route(logits, numE, selection.expertsPerToken, cfg.routerRenorm).experts) {
            for (int e : row) {
                guess.add(e);
            }
        }
        final List<ExpertKey> keys = new ArrayList<>();
        for (int e : guess) {
            ExpertKey k = new ExpertKey(layer + 1, e);
            if (!cache.isResident(k)) {
                keys.add(k);
            }
        }
        if (keys.isEmpty()) {
            return;
        }
        prefetchIssued += keys.size();
        final Set<ExpertKey> current = new HashSet<>();
        for (int e = 0; e < numE; e++) {
            current.add(new ExpertKey(layer, e));
        }
        prefetchPending = prefetcher.submit(new Runnable() {
            @Override
            public void run() {
                for (ExpertKey k : keys) {
                    cache.prefetch(k, current);
                }
            }
        });
    }

    /** Waits for the prefetch in flight; a load that failed there fails here. */
    private void awaitPrefetch() {
        try {
            prefetchPending.get();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (ExecutionException e) {
            Throwable cause = e.getCause();
            if (cause instanceof RuntimeException) {
                throw (RuntimeException) cause;
            }
            if (cause instanceof Error) {
                throw (Error) cause;
            }
            throw new IllegalStateException(cause);
        } finally {
            prefetchPending = null;
        }
    }

    /** Waits for prefetches in flight, then releases every program (backbone and experts). */
    @Override
    public void close() {
        if (prefetcher != null) {
            prefetcher.shutdown();
            try {
                prefetcher.awaitTermination(1, TimeUnit.MINUTES);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        for (ProgramRunner p : backbone) {
            p.close();
        }
        cache.releaseAll();
    }
}
