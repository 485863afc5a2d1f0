package org.cosmoe.edge;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.gson.JsonPrimitive;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The report contract, cosmoe_edge/runtime/report.schema.json (the file the Python runtime reads), and
 * the same check Python's report.py applies: the keys in the schema's order, none missing, none extra,
 * each of its type.
 */
final class ReportSchema {
    private ReportSchema() {
    }

    static File file() {
        return new File(Conformance.repoFile("report.schema", "cosmoe_edge/runtime/report.schema.json"));
    }

    static JsonObject schema() {
        try {
            return JsonParser.parseString(new String(Files.readAllBytes(file().toPath()), StandardCharsets.UTF_8))
                    .getAsJsonObject();
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    /** What is wrong with {@code report}, as one line per problem; empty when it follows the schema. */
    static List<String> problems(JsonObject report) {
        List<String> out = new ArrayList<>();
        check("", report, schema(), out);
        return out;
    }

    private static void check(String where, JsonObject value, JsonObject schema, List<String> out) {
        JsonObject props = schema.getAsJsonObject("properties");
        List<String> want = new ArrayList<>(props.keySet());
        List<String> have = new ArrayList<>(value.keySet());
        for (String k : want) {
            if (!value.has(k)) {
                out.add("missing key " + where + k);
            }
        }
        for (String k : have) {
            if (!props.has(k)) {
                out.add("unknown key " + where + k);
            }
        }
        if (out.isEmpty() && !want.equals(have)) {
            out.add("keys of " + (where.isEmpty() ? "the report" : where) + " out of order: " + have);
        }
        for (Map.Entry<String, JsonElement> e : value.entrySet()) {
            if (props.has(e.getKey())) {
                checkValue(where + e.getKey(), e.getValue(), props.getAsJsonObject(e.getKey()), out);
            }
        }
    }

    private static void checkValue(String key, JsonElement v, JsonObject spec, List<String> out) {
        String type = spec.get("type").getAsString();
        boolean ok;
        switch (type) {
            case "object":
                ok = v.isJsonObject();
                if (ok) {
                    check(key + ".", v.getAsJsonObject(), spec, out);
                }
                break;
            case "string":
                ok = v.isJsonPrimitive() && v.getAsJsonPrimitive().isString();
                break;
            case "boolean":
                ok = v.isJsonPrimitive() && v.getAsJsonPrimitive().isBoolean();
                break;
            case "integer":
                ok = isNumber(v) && v.getAsDouble() == Math.rint(v.getAsDouble()) && !v.getAsString().contains(".");
                break;
            case "number":
                ok = isNumber(v);
                break;
            default:
                throw new IllegalStateException("report.schema.json: unknown type " + type);
        }
        if (!ok) {
            out.add(key + " should be " + type + ", is " + v);
        } else if (spec.has("const") && !spec.get("const").equals(v)) {
            out.add(key + " should be " + spec.get("const") + ", is " + v);
        }
    }

    private static boolean isNumber(JsonElement v) {
        return v.isJsonPrimitive() && ((JsonPrimitive) v).isNumber();
    }
}
