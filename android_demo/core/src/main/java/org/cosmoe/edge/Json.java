package org.cosmoe.edge;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonPrimitive;

/** Typed reads from a manifest's JSON, failing with the same kind Python's KeyError maps to. */
final class Json {
    private Json() {
    }

    static JsonElement get(JsonObject o, String key) {
        JsonElement e = o.get(key);
        if (e == null || e.isJsonNull()) {
            throw new ArtifactException("the manifest lacks '" + key + "'", "missing_key");
        }
        return e;
    }

    static String string(JsonObject o, String key) {
        return get(o, key).getAsString();
    }

    static long longValue(JsonObject o, String key) {
        return get(o, key).getAsLong();
    }

    static double doubleValue(JsonObject o, String key) {
        return get(o, key).getAsDouble();
    }

    static JsonObject object(JsonObject o, String key) {
        JsonElement e = get(o, key);
        if (!e.isJsonObject()) {
            throw new ArtifactException("the manifest's '" + key + "' is not an object", "missing_key");
        }
        return e.getAsJsonObject();
    }

    /** Python's repr() of a JSON value, for messages that must read like the Python runtime's. */
    static String pyRepr(JsonElement e) {
        if (e == null || e.isJsonNull()) {
            return "None";
        }
        if (e.isJsonPrimitive()) {
            JsonPrimitive p = e.getAsJsonPrimitive();
            if (p.isBoolean()) {
                return p.getAsBoolean() ? "True" : "False";
            }
            if (p.isString()) {
                return "'" + p.getAsString().replace("\\", "\\\\").replace("'", "\\'") + "'";
            }
            return p.getAsNumber().toString();
        }
        return e.toString();
    }
}
