package org.cosmoe.edge;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/** The metrics panel: the rows edge-run prints (cosmoe_edge/runtime/cli.py print_metrics), as text. */
public final class MetricsTable {
    private MetricsTable() {
    }

    public static String of(Report r) {
        List<String[]> rows = new ArrayList<>();
        rows.add(row("tokens (prompt / generated)", r.promptTokens + " / " + r.generatedTokens));
        rows.add(row("time to first token", f("%.1f ms", r.ttftMs)));
        rows.add(row("prefill", f("%.0f tok/s", r.prefillTokensPerS)));
        rows.add(row("decode", f("%.0f tok/s", r.decodeTokensPerS)));
        rows.add(row("token latency p50 / p95 / max", f("%.2f / %.2f / %.2f ms", r.latencyP50Ms, r.latencyP95Ms,
                r.latencyMaxMs)));
        rows.add(row("backbone load", f("%.0f ms", r.loadMs)));
        rows.add(row("peak RSS (VmHWM)", mb(r.peakRssBytes)));
        rows.add(row("RSS after backbone load", mb(r.rssAfterLoadBytes)));
        rows.add(row("storage read", mb(r.storageReadBytes)));
        rows.add(row("resident experts, peak", mb(r.residentExpertBytesPeak)));
        rows.add(row("expert hits / misses / evictions", r.expertHits + " / " + r.expertMisses + " / "
                + r.expertEvictions));
        rows.add(row("expert hit rate", f("%.1f%%", 100 * r.expertHitRate)));
        rows.add(row("expert switch rate", f("%.1f%%", 100 * r.expertSwitchRate)));
        if (r.prefetchIssued > 0) {
            rows.add(row("prefetch issued / useful", r.prefetchIssued + " / " + r.prefetchUseful));
        }
        return "edge-run: " + r.backend + ", " + r.quant + ", budget " + mb(r.memoryBudgetBytes) + " of "
                + mb(r.expertBytesTotal) + " experts\n" + table(rows);
    }

    /** The live rows while tokens stream. */
    public static String of(EdgeRun.Progress p) {
        List<String[]> rows = new ArrayList<>();
        rows.add(row("generated tokens", String.valueOf(p.generatedTokens)));
        rows.add(row("time to first token", f("%.1f ms", p.ttftMs)));
        rows.add(row("decode", f("%.0f tok/s", p.decodeTokensPerS)));
        rows.add(row("peak RSS (VmHWM)", mb(ProcStats.peakRssBytes())));
        rows.add(row("resident experts", mb(p.residentExpertBytes) + " of " + mb(p.memoryBudgetBytes)));
        rows.add(row("expert hits / misses / evictions", p.expertHits + " / " + p.expertMisses + " / "
                + p.expertEvictions));
        return table(rows);
    }

    public static String mb(long bytes) {
        return bytes < 0 ? "n/a" : f("%.1f MB", bytes / 1e6);
    }

    private static String[] row(String name, String value) {
        return new String[] {name, value};
    }

    private static String f(String format, Object... args) {
        return String.format(Locale.ROOT, format, args);
    }

    private static String table(List<String[]> rows) {
        int width = 0;
        for (String[] r : rows) {
            width = Math.max(width, r[0].length());
        }
        StringBuilder sb = new StringBuilder();
        for (String[] r : rows) {
            sb.append(r[0]);
            for (int i = r[0].length(); i < width + 2; i++) {
                sb.append(' ');
            }
            sb.append(r[1]).append('\n');
        }
        return sb.toString();
    }
}
