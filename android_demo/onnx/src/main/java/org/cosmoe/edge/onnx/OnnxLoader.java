package org.cosmoe.edge.onnx;

import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtLoggingLevel;
import ai.onnxruntime.OrtSession;

import org.cosmoe.edge.ArtifactException;
import org.cosmoe.edge.ProgramLoader;
import org.cosmoe.edge.ProgramRunner;

import java.io.File;
import java.util.List;

/**
 * Opens .onnx programs with onnxruntime's Java API (ai.onnxruntime, the same on Android and a desktop JVM), with
 * the session options the Python runtime uses (backends.py session_options): sequential, no memory arena (an
 * evicted expert's memory goes back to the allocator), the basic optimiser for the small expert graphs. ONNX
 * files have one entry point, so the methods are not looked up. A file that does not load is corrupt_program.
 */
public final class OnnxLoader implements ProgramLoader {
    private final OrtEnvironment env = OrtEnvironment.getEnvironment();
    private final int threads;

    /** {@code threads}: intra-op threads per session; 1 as edge-run's default (decode-sized matmuls). */
    public OnnxLoader(int threads) {
        this.threads = threads;
    }

    @Override
    public ProgramRunner open(File path, List<String> methods) {
        try (OrtSession.SessionOptions so = new OrtSession.SessionOptions()) {
            so.setIntraOpNumThreads(threads);
            so.setInterOpNumThreads(1);
            so.setExecutionMode(OrtSession.SessionOptions.ExecutionMode.SEQUENTIAL);
            so.setCPUArenaAllocator(false);
            so.setSessionLogLevel(OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR);
            if ("experts".equals(path.getParentFile().getName())) {  // a 3-matmul graph: loads ~40% faster
                so.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.BASIC_OPT);
            }
            return new OnnxProgram(env, env.createSession(path.getAbsolutePath(), so), path.getName());
        } catch (OrtException e) {
            String detail = String.valueOf(e.getMessage()).split("\n", 2)[0];
            throw new ArtifactException("cannot load " + path.getName() + ": corrupt or truncated ONNX program ("
                    + detail.substring(0, Math.min(160, detail.length())) + ")", "corrupt_program");
        }
    }
}
