package org.cosmoe.edge;

import java.io.File;
import java.util.List;

/**
 * Opens program files with the given methods loaded up front, so a corrupt file fails at load
 * (kind corrupt_program) and not in the middle of a generation. The app's loader is ExecuTorch;
 * tests use recorded fakes.
 */
public interface ProgramLoader {
    ProgramRunner open(File path, List<String> methods);
}
