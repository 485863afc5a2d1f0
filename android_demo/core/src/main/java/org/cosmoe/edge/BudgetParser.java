package org.cosmoe.edge;

import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** edge-run's --memory-budget: "all", a size such as 64MB or 1.5GiB, or a percentage of all experts' bytes. */
public final class BudgetParser {
    private static final Pattern PERCENT = Pattern.compile("(\\d+(?:\\.\\d+)?)\\s*%");
    private static final Pattern SIZE = Pattern.compile("(\\d+(?:\\.\\d+)?)\\s*([kmg]i?b|b)?");
    private static final Map<String, Long> UNITS = new HashMap<>();

    static {
        UNITS.put("b", 1L);
        UNITS.put("kb", 1000L);
        UNITS.put("mb", 1000L * 1000);
        UNITS.put("gb", 1000L * 1000 * 1000);
        UNITS.put("kib", 1024L);
        UNITS.put("mib", 1024L * 1024);
        UNITS.put("gib", 1024L * 1024 * 1024);
    }

    private BudgetParser() {
    }

    /** Bytes, or null for "all" (every expert fits). */
    public static Long parse(String text, long expertBytesTotal) {
        String t = text.trim().toLowerCase(Locale.ROOT);
        if (t.equals("all")) {
            return null;
        }
        Matcher m = PERCENT.matcher(t);
        if (m.matches()) {
            return (long) (Double.parseDouble(m.group(1)) / 100 * expertBytesTotal);
        }
        m = SIZE.matcher(t);
        if (m.matches()) {
            return (long) (Double.parseDouble(m.group(1)) * UNITS.get(m.group(2) == null ? "b" : m.group(2)));
        }
        throw new ArtifactException("cannot read memory budget '" + text + "': use all, a size like 64MB or 1.5GiB, "
                + "or a percentage like 25%", "bad_budget");
    }
}
