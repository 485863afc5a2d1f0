package org.cosmoe.edge;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

/** One file the manifest names: path relative to the artifact, size, sha256 (+ expert fields). */
public final class FileEntry {
    public final String path;
    public final long bytes;
    public final String sha256;
    public final JsonObject json;

    private FileEntry(String path, long bytes, String sha256, JsonObject json) {
        this.path = path;
        this.bytes = bytes;
        this.sha256 = sha256;
        this.json = json;
    }

    public static FileEntry of(JsonElement element) {
        if (element == null || !element.isJsonObject()) {
            throw new ArtifactException("a manifest file entry is not an object", "missing_key");
        }
        JsonObject o = element.getAsJsonObject();
        String sha = o.has("sha256") && !o.get("sha256").isJsonNull() ? o.get("sha256").getAsString() : null;
        return new FileEntry(Json.string(o, "path"), Json.longValue(o, "bytes"), sha, o);
    }

    public int intField(String key) {
        return (int) Json.longValue(json, key);
    }

    /** Bytes an expert holds while resident: its program plus its planned activations. */
    public long residentBytes() {
        return json.has("resident_bytes") ? Json.longValue(json, "resident_bytes") : bytes;
    }
}
