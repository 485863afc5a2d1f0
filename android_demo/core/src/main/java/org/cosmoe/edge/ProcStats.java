package org.cosmoe.edge;

import java.io.BufferedReader;
import java.io.FileOutputStream;
import java.io.FileReader;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Paths;

/**
 * What the OS says about this process (cosmoe_edge/runtime/metrics.py): VmRSS and VmHWM from
 * /proc/self/status, storage reads from /proc/self/io. -1 where the kernel does not let us read.
 */
public final class ProcStats {
    private ProcStats() {
    }

    public static long rssBytes() {
        return statusKb("VmRSS");
    }

    /** VmHWM: the high-water mark of resident memory (since start, or since {@link #resetPeak()}). */
    public static long peakRssBytes() {
        return statusKb("VmHWM");
    }

    /** Bytes this process caused to be read from storage (page-cache hits do not count). */
    public static long storageReadBytes() {
        try (BufferedReader r = new BufferedReader(new FileReader("/proc/self/io"))) {
            for (String line; (line = r.readLine()) != null; ) {
                if (line.startsWith("read_bytes:")) {
                    return Long.parseLong(line.substring("read_bytes:".length()).trim());
                }
            }
            return 0;
        } catch (IOException | NumberFormatException e) {
            return -1;
        }
    }

    /**
     * This process as "pid@starttime" (field 22 of /proc/self/stat), as the Python runtime reports it:
     * unique even when the OS reuses a pid. "unknown" where procfs cannot be read.
     */
    public static String processId() {
        try {
            String pid = Files.readSymbolicLink(Paths.get("/proc/self")).toString();
            String stat = new String(Files.readAllBytes(Paths.get("/proc/self/stat")), "UTF-8");
            String[] after = stat.substring(stat.lastIndexOf(')') + 1).trim().split("\\s+");
            return pid + "@" + after[19];
        } catch (IOException | RuntimeException e) {
            return "unknown";
        }
    }

    /**
     * Restarts VmHWM at the current RSS (writing 5 to /proc/self/clear_refs), so a run in a long-lived
     * app process reports its own peak as a fresh edge-run process would. False where not allowed.
     */
    public static boolean resetPeak() {
        try (OutputStream out = new FileOutputStream("/proc/self/clear_refs")) {
            out.write('5');
            return true;
        } catch (IOException | SecurityException e) {
            return false;
        }
    }

    private static long statusKb(String key) {
        try (BufferedReader r = new BufferedReader(new FileReader("/proc/self/status"))) {
            for (String line; (line = r.readLine()) != null; ) {
                if (line.startsWith(key + ":")) {
                    String v = line.substring(key.length() + 1).trim();
                    if (v.endsWith("kB")) {
                        return Long.parseLong(v.substring(0, v.length() - 2).trim()) * 1024;
                    }
                }
            }
            return 0;
        } catch (IOException | NumberFormatException e) {
            return -1;
        }
    }
}
