package org.cosmoe.edge;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * The check before an ExecuTorch program is handed to the runtime (backends.py check_pte_header; the
 * app's ExecuTorchLoader calls it):
 * ExecuTorch 1.5.1 aborts the whole process on some damaged headers, so a .pte whose header does
 * not describe a program of the file's size is refused with kind corrupt_program. Layout: root
 * offset u32, identifier "ET12", then the extended header "eh00", its length u32, program size u64,
 * segment offset u64 and segment size u64, all little-endian.
 */
public final class PteHeader {
    private PteHeader() {
    }

    public static void check(File path) {
        byte[] head = new byte[40];
        int n = 0;
        try (InputStream in = new FileInputStream(path)) {
            int r;
            while (n < head.length && (r = in.read(head, n, head.length - n)) > 0) {
                n += r;
            }
        } catch (IOException e) {
            throw new ArtifactException("cannot read " + path.getName() + ": " + e.getMessage(), "missing_file");
        }
        long size = path.length();
        if (n < 40) {
            throw bad(path, "shorter than its header");
        }
        ByteBuffer b = ByteBuffer.wrap(head).order(ByteOrder.LITTLE_ENDIAN);
        if (!(head[4] == 'E' && head[5] == 'T' && head[6] == '1' && head[7] == '2')) {
            throw bad(path, "file identifier is not ET12");
        }
        if (!(head[8] == 'e' && head[9] == 'h' && head[10] == '0' && head[11] == '0')) {
            throw bad(path, "no extended header");
        }
        long root = b.getInt(0) & 0xFFFFFFFFL;
        long headerLen = b.getInt(12) & 0xFFFFFFFFL;
        long programSize = b.getLong(16);
        long segmentBase = b.getLong(24);
        long segmentSize = headerLen >= 32 ? b.getLong(32) : 0;
        // sizes beyond 2^63 read as negative longs: refused like any size that does not fit
        if (headerLen < 24 || programSize < 0 || !(8 + headerLen <= root && root < programSize && programSize <= size)) {
            throw bad(path, "header sizes do not fit the file");
        }
        if (segmentBase != 0 && (segmentBase < 0 || segmentSize < 0 || !(programSize <= segmentBase
                && segmentBase + segmentSize <= size))) {
            throw bad(path, "segment table does not fit the file");
        }
    }

    private static ArtifactException bad(File path, String why) {
        return new ArtifactException("cannot load " + path.getName() + ": corrupt or truncated ExecuTorch program ("
                + why + ")", "corrupt_program");
    }
}
