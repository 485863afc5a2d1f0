package org.cosmoe.edge;

import com.google.gson.Gson;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.stream.JsonReader;
import com.google.gson.stream.JsonToken;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.StringReader;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;

/**
 * artifact/manifest.json, read and checked exactly as cosmoe_edge/runtime/manifest.py does: the same
 * checks in the same order, the same error kinds and messages.
 */
public final class Manifest {
    public static final int FORMAT_VERSION = 2;
    public static final String MANIFEST = "manifest.json";
    public static final List<String> BACKENDS = Collections.unmodifiableList(Arrays.asList("executorch", "onnx"));
    private static final String[] REQUIRED = {"model", "tokenizer", "embedding", "quant", "backends"};

    public final File root;
    public final JsonObject json;

    private Manifest(File root, JsonObject json) {
        this.root = root;
        this.json = json;
    }

    public static Manifest load(File artifact) {
        if (!artifact.exists()) {
            throw new ArtifactException("artifact folder not found: " + artifact, "not_found");
        }
        if (!artifact.isDirectory()) {
            throw new ArtifactException(artifact + " is not a folder (expected an artifact written by edge-export)",
                    "not_a_folder");
        }
        File path = new File(artifact, MANIFEST);
        if (!path.isFile()) {
            throw new ArtifactException(artifact + " has no " + MANIFEST + ": not an artifact written by edge-export",
                    "no_manifest");
        }
        JsonElement parsed = parseStrict(path);
        JsonElement version = parsed.isJsonObject() ? parsed.getAsJsonObject().get("format_version") : null;
        if (!isVersion(version)) {
            throw new ArtifactException(path + " has format_version " + Json.pyRepr(version) + "; this runtime reads "
                    + "version " + FORMAT_VERSION + " (re-export the model with this version of edge-export)",
                    "bad_format_version");
        }
        JsonObject m = parsed.getAsJsonObject();
        for (String key : REQUIRED) {
            if (!m.has(key)) {
                throw new ArtifactException(path + " lacks '" + key + "'", "missing_key");
            }
        }
        if (m.has("peer")) {  // PEER layers (cosmoe_edge/runtime/rows.py) are not ported to this runtime yet
            throw new ArtifactException(artifact + " has PEER layers, which this runtime does not run yet (edge-run does)",
                    "unsupported_peer");
        }
        return new Manifest(artifact, m);
    }

    /** Python's json.loads: strict UTF-8, strict JSON, nothing after the value. */
    private static JsonElement parseStrict(File path) {
        try {
            byte[] bytes = Files.readAllBytes(path.toPath());
            String text = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT).decode(ByteBuffer.wrap(bytes)).toString();
            JsonReader reader = new JsonReader(new StringReader(text));
            reader.setLenient(false);
            JsonElement e = new Gson().getAdapter(JsonElement.class).read(reader);
            if (reader.peek() != JsonToken.END_DOCUMENT) {
                throw new IOException("extra data after the JSON value");
            }
            return e;
        } catch (CharacterCodingException e) {
            throw new ArtifactException(path + " is not valid JSON (not UTF-8 text)", "bad_json");
        } catch (IOException | RuntimeException e) {
            throw new ArtifactException(path + " is not valid JSON (" + e.getMessage() + ")", "bad_json");
        }
    }

    private static boolean isVersion(JsonElement v) {
        return v != null && v.isJsonPrimitive() && v.getAsJsonPrimitive().isNumber()
                && v.getAsDouble() == FORMAT_VERSION;
    }

    public JsonObject backendSection(String backend) {
        JsonElement b = json.get("backends");
        List<String> have = new ArrayList<>();
        if (b.isJsonObject()) {
            have.addAll(b.getAsJsonObject().keySet());
        }
        Collections.sort(have);
        if (!BACKENDS.contains(backend)) {
            throw new ArtifactException("unknown backend '" + backend + "'; choose one of " + join(BACKENDS),
                    "unknown_backend");
        }
        if (!have.contains(backend)) {
            throw new ArtifactException("this artifact has no " + backend + " programs (it has: "
                    + (have.isEmpty() ? "none" : join(have)) + ")", "missing_backend");
        }
        return b.getAsJsonObject().getAsJsonObject(backend);
    }

    public FileEntry entry(String key) {
        return FileEntry.of(json.get(key));
    }

    /** The entry's file, after checking its size (always) and sha256 (when asked). */
    public File checkFile(FileEntry entry, boolean verifySha) {
        File path = new File(root, entry.path);
        if (!path.isFile()) {
            throw new ArtifactException("missing file " + entry.path + " in " + root, "missing_file");
        }
        long size = path.length();
        if (size != entry.bytes) {
            throw new ArtifactException(entry.path + " is " + size + " bytes, the manifest says " + entry.bytes
                    + ": truncated or replaced file", "size_mismatch");
        }
        if (verifySha && entry.sha256 == null) {
            throw new ArtifactException("the manifest entry for " + entry.path + " lacks 'sha256'", "missing_key");
        }
        if (verifySha && !sha256(path).equals(entry.sha256)) {
            throw new ArtifactException(entry.path + " does not match its sha256 in the manifest: corrupt file",
                    "sha_mismatch");
        }
        return path;
    }

    static String sha256(File path) {
        try (InputStream in = new FileInputStream(path)) {
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            byte[] buf = new byte[1 << 20];
            for (int n; (n = in.read(buf)) > 0; ) {
                md.update(buf, 0, n);
            }
            StringBuilder hex = new StringBuilder();
            for (byte x : md.digest()) {
                hex.append(String.format("%02x", x & 0xff));
            }
            return hex.toString();
        } catch (IOException e) {
            throw new ArtifactException("cannot read " + path + " (" + e.getMessage() + ")");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    private static String join(List<String> items) {
        StringBuilder sb = new StringBuilder();
        for (String s : items) {
            sb.append(sb.length() == 0 ? "" : ", ").append(s);
        }
        return sb.toString();
    }
}
