package org.cosmoe.edge;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import org.junit.Test;

/** Budget strings, UTF-8 repair, sampling, percentiles: each against what the Python side gives. */
public class SmallPartsTest {
    @Test
    public void budgetsParseAsEdgeRunParsesThem() {
        long total = 1000003;
        assertNull(BudgetParser.parse("all", total));
        assertEquals(Long.valueOf(64000000L), BudgetParser.parse("64MB", total));
        assertEquals(Long.valueOf(1610612736L), BudgetParser.parse("1.5GiB", total));
        assertEquals(Long.valueOf(300000L), BudgetParser.parse("300000", total));
        assertEquals(Long.valueOf(250000L), BudgetParser.parse("25%", total));
        assertEquals(Long.valueOf(125000L), BudgetParser.parse(" 12.5 % ", total));
        assertEquals(Long.valueOf(10240L), BudgetParser.parse("10kib", total));
        assertEquals(Long.valueOf(7L), BudgetParser.parse("7b", total));
        assertEquals(Long.valueOf(2000000000L), BudgetParser.parse("2 gb", total));
        for (String bad : new String[] {"", "lots", "-5MB", "5 TB", "1e6"}) {
            try {
                BudgetParser.parse(bad, total);
                fail("accepted " + bad);
            } catch (ArtifactException e) {
                assertEquals("bad_budget", e.kind());
            }
        }
    }

    @Test
    public void brokenUtf8IsRepairedAsPythonDoes() {
        // bytes.decode("utf-8", "replace") gives one U+FFFD per maximal ill-formed subpart
        int[][] cases = {{0xF0, 0x9F, 0x9A}, {0xE6, 0x97}, {0xC0, 0x80}, {0xED, 0xA0, 0x80}, {0xF4, 0x90, 0x80, 0x80},
            {0xF0, 0x9F, 0x41}, {0xFF, 0x41, 0x80}, {0xF0, 0x9F, 0x9A, 0x80}};
        String[] want = {"\uFFFD", "\uFFFD", "\uFFFD\uFFFD", "\uFFFD\uFFFD\uFFFD", "\uFFFD\uFFFD\uFFFD\uFFFD",
            "\uFFFDA", "\uFFFDA\uFFFD", "\uD83D\uDE80"};
        for (int i = 0; i < cases.length; i++) {
            byte[] b = new byte[cases[i].length];
            for (int j = 0; j < b.length; j++) {
                b[j] = (byte) cases[i][j];
            }
            assertEquals("case " + i, want[i], Utf8.decodeLossy(b, b.length));
        }
    }

    @Test
    public void routingTiesGoToTheLowerExpertId() {
        Router.Routing r = Router.route(new float[] {1f, 2f, 2f, 0f, 2f, 2f, 2f, 2f}, 4, 2);
        assertEquals("[1, 2]", java.util.Arrays.toString(r.experts[0]));
        assertEquals("[0, 1]", java.util.Arrays.toString(r.experts[1]));
        assertEquals(0.5f, r.weights[1][0], 0f);
    }

    @Test
    public void greedyTakesTheFirstLargestLogit() {
        assertEquals(1, Sampler.greedy().sample(new float[] {0f, 3f, 3f, -1f}));
    }

    @Test
    public void samplingIsSeededAndFiltered() {
        float[] logits = {2f, 1.9f, 1.8f, -5f, 0.5f};
        Sampler a = new Sampler(1.0, 0, 1.0, 7);
        Sampler b = new Sampler(1.0, 0, 1.0, 7);
        boolean varied = false;
        int first = a.sample(logits);
        assertEquals(first, b.sample(logits));
        for (int i = 0; i < 50; i++) {
            int x = a.sample(logits);
            assertEquals(x, b.sample(logits));
            varied |= x != first;
        }
        assertTrue("temperature 1 never varied", varied);
        Sampler topK1 = new Sampler(5.0, 1, 1.0, 3);
        Sampler topP = new Sampler(5.0, 0, 0.01, 3);
        for (int i = 0; i < 20; i++) {
            assertEquals(0, topK1.sample(logits));
            assertEquals(0, topP.sample(logits));
        }
    }

    @Test
    public void percentilesAreNumpys() {
        assertEquals(3.0, Report.percentile(new double[] {1.0, 1.5, 2.6, 3.0, 4.0, 5.3, 9.0}, 50), 0);
        assertEquals(7.889999999999997, Report.percentile(new double[] {1.0, 1.5, 2.6, 3.0, 4.0, 5.3, 9.0}, 95), 0);
        assertEquals(0.6699999999999999, Report.percentile(new double[] {0.1, 0.7}, 95), 0);
        assertEquals(0.25, Report.percentile(new double[] {0.15, 0.2, 0.3, 0.9}, 50), 0);
        assertEquals(0.0, Report.percentile(new double[0], 50), 0);
    }

    @Test
    public void procStatsReadThisProcess() {
        long rss = ProcStats.rssBytes();
        assertTrue(rss > 0);
        assertTrue(ProcStats.peakRssBytes() >= rss);
        assertTrue(ProcStats.storageReadBytes() >= -1);
    }
}
