package org.cosmoe.edge.demo;

import org.cosmoe.edge.ArtifactException;
import org.cosmoe.edge.ProgramLoader;
import org.cosmoe.edge.ProgramRunner;
import org.cosmoe.edge.PteHeader;
import org.pytorch.executorch.Module;

import java.io.File;
import java.util.List;

/**
 * Opens .pte programs with the ExecuTorch Android library, loading every method up front (as the
 * Python runtime's load_method does) so a corrupt file fails here as corrupt_program. Its header is
 * checked first, as backends.py does.
 */
final class ExecuTorchLoader implements ProgramLoader {
    private final int threads;

    /** {@code threads}: XNNPACK threads per call; 1 as edge-run's default (decode-sized matmuls). */
    ExecuTorchLoader(int threads) {
        this.threads = threads;
    }

    @Override
    public ProgramRunner open(File path, List<String> methods) {
        PteHeader.check(path);  // some damaged headers abort the process inside ExecuTorch 1.5.1
        Module module = null;
        try {
            // mmap with mlock, errors ignored: the data loader the Python runtime (pybindings) uses
            module = Module.load(path.getAbsolutePath(), Module.LOAD_MODE_MMAP_USE_MLOCK_IGNORE_ERRORS, threads);
            for (String method : methods) {
                module.loadMethod(method);
            }
            return new ExecuTorchProgram(module);
        } catch (RuntimeException e) {
            if (module != null) {
                module.destroy();
            }
            String detail = String.valueOf(e.getMessage()).split("\n", 2)[0];
            throw new ArtifactException("cannot load " + path.getName() + ": corrupt or truncated ExecuTorch program ("
                    + detail.substring(0, Math.min(160, detail.length())) + ")", "corrupt_program");
        }
    }
}
