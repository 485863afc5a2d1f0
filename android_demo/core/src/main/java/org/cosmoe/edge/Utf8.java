package org.cosmoe.edge;

/**
 * UTF-8 to text replacing each maximal ill-formed subpart with one U+FFFD, as Rust's
 * String::from_utf8_lossy (the tokenizers library) and Python's errors="replace" do. The JDK's
 * decoder differs on some inputs (surrogate code points), so streamed text would differ too.
 */
public final class Utf8 {
    private Utf8() {
    }

    public static String decodeLossy(byte[] b, int len) {
        StringBuilder sb = new StringBuilder(len);
        int i = 0;
        while (i < len) {
            int c = b[i] & 0xff;
            if (c < 0x80) {
                sb.append((char) c);
                i++;
                continue;
            }
            int need;
            int cp;
            int lo = 0x80;
            int hi = 0xBF;
            if (c >= 0xC2 && c <= 0xDF) {
                need = 1;
                cp = c & 0x1F;
            } else if (c >= 0xE0 && c <= 0xEF) {
                need = 2;
                cp = c & 0x0F;
                lo = c == 0xE0 ? 0xA0 : 0x80;
                hi = c == 0xED ? 0x9F : 0xBF;
            } else if (c >= 0xF0 && c <= 0xF4) {
                need = 3;
                cp = c & 0x07;
                lo = c == 0xF0 ? 0x90 : 0x80;
                hi = c == 0xF4 ? 0x8F : 0xBF;
            } else {
                sb.append('\uFFFD');
                i++;
                continue;
            }
            int j = i + 1;
            boolean ok = true;
            for (int k = 0; k < need; k++, j++) {
                int d = j < len ? b[j] & 0xff : -1;
                if (d < lo || d > hi) {
                    ok = false;
                    break;
                }
                cp = (cp << 6) | (d & 0x3F);
                lo = 0x80;
                hi = 0xBF;
            }
            if (ok) {
                sb.appendCodePoint(cp);
            } else {
                sb.append('\uFFFD');
            }
            i = j;
        }
        return sb.toString();
    }
}
