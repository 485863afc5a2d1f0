package org.cosmoe.edge;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import java.util.ArrayList;
import java.util.List;

/** cache.json events as strings ["kind",layer,expert,resident_bytes], the form the tests compare. */
final class CacheEvents {
    private CacheEvents() {
    }

    static List<String> recorded(JsonObject run) {
        List<String> out = new ArrayList<>();
        for (JsonElement e : run.getAsJsonArray("events")) {
            out.add(e.toString());
        }
        return out;
    }

    static ExpertCache.Listener into(final List<String> events) {
        return new ExpertCache.Listener() {
            @Override
            public void onEvent(String kind, ExpertKey key, long residentBytes) {
                events.add("[\"" + kind + "\"," + key.layer + "," + key.expert + "," + residentBytes + "]");
            }
        };
    }
}
