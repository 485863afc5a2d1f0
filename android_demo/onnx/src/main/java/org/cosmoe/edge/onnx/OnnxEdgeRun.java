package org.cosmoe.edge.onnx;

import org.cosmoe.edge.ArtifactException;
import org.cosmoe.edge.EdgeRun;
import org.cosmoe.edge.Report;

import java.io.File;

/**
 * edge-run on a desktop JVM with the ONNX backend: the Java core (what the app runs) on a real artifact, so its
 * results can be held against the Python runtime's. Prints the report JSON (schema: report.schema.json).
 * Usage: OnnxEdgeRun ARTIFACT PROMPT [MAX_NEW_TOKENS] [MEMORY_BUDGET]. Exit 2 with one line on a bad artifact.
 */
public final class OnnxEdgeRun {
    private OnnxEdgeRun() {
    }

    public static void main(String[] args) {
        if (args.length < 2) {
            System.err.println("usage: OnnxEdgeRun ARTIFACT PROMPT [MAX_NEW_TOKENS] [MEMORY_BUDGET]");
            System.exit(2);
        }
        EdgeRun.Request req = new EdgeRun.Request();
        req.artifact = new File(args[0]);
        req.prompt = args[1];
        req.backend = "onnx";
        req.maxNewTokens = args.length > 2 ? Integer.parseInt(args[2]) : req.maxNewTokens;
        req.memoryBudget = args.length > 3 ? args[3] : req.memoryBudget;
        try {
            Report r = EdgeRun.run(req, new OnnxLoader(1), null, null);
            System.out.println(r.toJson());
        } catch (ArtifactException | IllegalArgumentException e) {
            System.err.println("OnnxEdgeRun: error: " + e.getMessage());
            System.exit(2);
        }
    }
}
