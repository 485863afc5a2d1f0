package org.cosmoe.edge;

import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonObject;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * A synthetic artifact on disk in the exporter's layout (manifest with sizes and sha256s,
 * embedding and routers safetensors, stand-in program files), for tests that go through
 * {@link EngineFactory} with recorded programs instead of ExecuTorch.
 */
final class TestArtifact {
    int vocab = 16;
    int dim = 8;
    int nLayers = 2;
    int nHeads = 4;
    int nKvHeads = 2;
    int headDim = 4;
    int maxSeqLen = 64;
    int numExperts = 4;
    int topK = 2;
    int layerMaxTokens = 64;
    int expertMaxTokens = 32;
    String tokenizerJson = "{}";
    Integer eosId = null;
    /** The manifest's "routing" (a CMoE-carved model's), or null for the softmax router. */
    JsonObject routing = null;
    /** Compressed experts: model.k_main, and the value of every element of every vector (0: none). */
    int kMain = 0;
    float compressedValue = 1f;
    /** model.sticky_delta (0: absent). */
    double stickyDelta = 0;
    /** resident_bytes per (layer, expert); missing: 1000. */
    final Map<ExpertKey, Long> costs = new LinkedHashMap<>();

    File write(File root) throws IOException {
        new File(root, "executorch/experts").mkdirs();
        JsonObject manifest = new JsonObject();
        manifest.addProperty("format_version", Manifest.FORMAT_VERSION);
        JsonObject model = new JsonObject();
        model.addProperty("vocab_size", vocab);
        model.addProperty("dim", dim);
        model.addProperty("n_layers", nLayers);
        model.addProperty("n_heads", nHeads);
        model.addProperty("n_kv_heads", nKvHeads);
        model.addProperty("head_dim", headDim);
        model.addProperty("max_seq_len", maxSeqLen);
        model.addProperty("rope_theta", 10000.0);
        model.addProperty("num_experts", numExperts);
        model.addProperty("top_k", topK);
        if (kMain > 0) {
            model.addProperty("k_main", kMain);
        }
        if (stickyDelta > 0) {
            model.addProperty("sticky_delta", stickyDelta);
        }
        manifest.add("model", model);
        if (routing != null) {
            manifest.add("routing", routing);
        }
        JsonObject quant = new JsonObject();
        quant.addProperty("scheme", "fp32");
        manifest.add("quant", quant);
        manifest.addProperty("layer_max_tokens", layerMaxTokens);
        manifest.addProperty("expert_max_tokens", expertMaxTokens);

        JsonObject tok = entry(root, "tokenizer.json", tokenizerJson.getBytes(StandardCharsets.UTF_8));
        tok.addProperty("eos_id", eosId);
        manifest.add("tokenizer", tok);
        float[] emb = new float[vocab * dim];
        for (int i = 0; i < emb.length; i++) {
            emb[i] = embeddingValue(i / dim, i % dim);
        }
        Map<String, float[]> embTensors = new LinkedHashMap<>();
        embTensors.put("weight", emb);
        manifest.add("embedding", entry(root, "embedding.safetensors",
                safetensors(embTensors, new long[] {vocab, dim})));
        Map<String, float[]> routers = new LinkedHashMap<>();
        for (int l = 0; l < nLayers; l++) {
            float[] w = new float[numExperts * dim];
            for (int i = 0; i < w.length; i++) {
                w[i] = ((i * 31 + l * 7) % 11) * 0.1f - 0.5f;
            }
            routers.put("layer_" + l, w);
        }
        manifest.add("routers", entry(root, "routers.safetensors",
                safetensors(routers, new long[] {numExperts, dim})));
        if (kMain > 0) {
            Map<String, float[]> vectors = new LinkedHashMap<>();
            for (int l = 0; l < nLayers; l++) {
                float[] v = new float[numExperts * dim];
                java.util.Arrays.fill(v, compressedValue);
                vectors.put("layer_" + l, v);
            }
            manifest.add("compressed_experts", entry(root, "compressed.safetensors",
                    safetensors(vectors, new long[] {numExperts, dim})));
        }

        JsonObject backbone = new JsonObject();
        JsonArray files = new JsonArray();
        files.add(entry(root, "executorch/backbone.pte", "backbone".getBytes(StandardCharsets.UTF_8)));
        backbone.add("files", files);
        JsonObject parts = new JsonObject();
        for (int l = 0; l <= nLayers; l++) {
            String name = l < nLayers ? "layer_" + l : "head";
            JsonObject p = new JsonObject();
            p.addProperty("path", "executorch/backbone.pte");
            p.addProperty("method", name);
            parts.add(name, p);
        }
        backbone.add("parts", parts);
        JsonArray experts = new JsonArray();
        for (int l = 0; l < nLayers; l++) {
            for (int e = 0; e < numExperts; e++) {
                String path = String.format("executorch/experts/l%02d_e%02d.pte", l, e);
                JsonObject x = entry(root, path, ("expert " + l + " " + e).getBytes(StandardCharsets.UTF_8));
                x.addProperty("layer", l);
                x.addProperty("expert", e);
                Long cost = costs.get(new ExpertKey(l, e));
                x.addProperty("resident_bytes", cost == null ? 1000L : cost);
                experts.add(x);
            }
        }
        JsonObject section = new JsonObject();
        section.add("backbone", backbone);
        section.add("experts", experts);
        JsonObject backends = new JsonObject();
        backends.add("executorch", section);
        manifest.add("backends", backends);
        Files.write(new File(root, "manifest.json").toPath(),
                new GsonBuilder().setPrettyPrinting().create().toJson(manifest).getBytes(StandardCharsets.UTF_8));
        return root;
    }

    /** The synthetic embedding: row id is id + 0.01 * column, so each row names its token. */
    static float embeddingValue(int id, int column) {
        return id + 0.01f * column;
    }

    private static JsonObject entry(File root, String path, byte[] content) throws IOException {
        File f = new File(root, path);
        Files.write(f.toPath(), content);
        JsonObject o = new JsonObject();
        o.addProperty("path", path);
        o.addProperty("bytes", content.length);
        o.addProperty("sha256", Manifest.sha256(f));
        return o;
    }

    /** F32 tensors, all of one shape, in the safetensors layout. */
    static byte[] safetensors(Map<String, float[]> tensors, long[] shape) {
        StringBuilder header = new StringBuilder("{");
        long offset = 0;
        for (Map.Entry<String, float[]> t : tensors.entrySet()) {
            long end = offset + 4L * t.getValue().length;
            header.append(header.length() > 1 ? "," : "").append('"').append(t.getKey())
                    .append("\":{\"dtype\":\"F32\",")
                    .append("\"shape\":").append(java.util.Arrays.toString(shape).replace(" ", ""))
                    .append(",\"data_offsets\":[").append(offset).append(',').append(end).append("]}");
            offset = end;
        }
        header.append('}');
        return pack(header.toString(), tensors);
    }

    static byte[] pack(String header, Map<String, float[]> tensors) {
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteBuffer len = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(h.length);
        out.write(len.array(), 0, 8);
        out.write(h, 0, h.length);
        for (float[] v : tensors.values()) {
            ByteBuffer b = ByteBuffer.allocate(4 * v.length).order(ByteOrder.LITTLE_ENDIAN);
            b.asFloatBuffer().put(v);
            out.write(b.array(), 0, b.capacity());
        }
        return out.toByteArray();
    }
}
