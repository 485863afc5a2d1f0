package org.cosmoe.edge;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;

/**
 * The vectors scripts/make_conformance.py writes from the Python runtime (tests/conformance/ at
 * the repo root, or the folder named by the system property conformance.dir).
 */
final class Conformance {
    private Conformance() {
    }

    static File dir() {
        return new File(repoFile("conformance.dir", "tests/conformance/generation.json")).getParentFile();
    }

    /** The system property's path, else {@code relative} in the first folder above the working directory that has it. */
    static String repoFile(String property, String relative) {
        String p = System.getProperty(property);
        if (p != null) {
            return property.endsWith(".dir") ? new File(p, new File(relative).getName()).getPath() : p;
        }
        for (File d = new File("").getAbsoluteFile(); d != null; d = d.getParentFile()) {
            File f = new File(d, relative);
            if (f.isFile()) {
                return f.getPath();
            }
        }
        throw new IllegalStateException("no " + relative + " above " + new File("").getAbsolutePath() + "; pass -D"
                + property + "=...");
    }

    static File file(String name) {
        return new File(dir(), name);
    }

    static JsonObject json(String name) {
        try {
            return JsonParser.parseString(new String(Files.readAllBytes(file(name).toPath()), StandardCharsets.UTF_8))
                    .getAsJsonObject();
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Size of the recorded tokenizer's vocabulary: its BPE vocabulary plus the added special tokens. */
    static int tokenizerVocabSize() {
        JsonObject t = json("tokenizer.json");
        int n = t.getAsJsonObject("model").getAsJsonObject("vocab").size();
        for (JsonElement added : t.getAsJsonArray("added_tokens")) {
            n = Math.max(n, added.getAsJsonObject().get("id").getAsInt() + 1);
        }
        return n;
    }

    static int[] ints(JsonElement e) {
        JsonArray a = e.getAsJsonArray();
        int[] out = new int[a.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = a.get(i).getAsInt();
        }
        return out;
    }

    static float[] floats(JsonElement e) {
        JsonArray a = e.getAsJsonArray();
        float[] out = new float[a.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = a.get(i).getAsFloat();
        }
        return out;
    }

    /** A (rows, cols) nested array, row-major. */
    static float[] matrix(JsonElement e) {
        JsonArray rows = e.getAsJsonArray();
        int cols = rows.get(0).getAsJsonArray().size();
        float[] out = new float[rows.size() * cols];
        for (int r = 0; r < rows.size(); r++) {
            float[] row = floats(rows.get(r));
            System.arraycopy(row, 0, out, r * cols, cols);
        }
        return out;
    }

    static int[][] intRows(JsonElement e) {
        JsonArray rows = e.getAsJsonArray();
        int[][] out = new int[rows.size()][];
        for (int r = 0; r < out.length; r++) {
            out[r] = ints(rows.get(r));
        }
        return out;
    }
}
