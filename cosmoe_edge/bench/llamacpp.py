"""llama.cpp, built here from the source tree vendored in llama-cpp-python's PyPI sdist (pinned), to run
the same weights as cosmoe-edge (edge-convert --to gguf). The build is cached under runs/llamacpp/.

On Intel CPUs with AMX, a native build crashed in ggml_backend_amx_mul_mat (seen on another machine of
this project): the AMX instructions are then turned off at compile time.
"""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python; its vendor/llama.cpp is the engine measured
TOOLS = ("llama-completion", "llama-bench", "llama-quantize")
CACHE = Path("runs/llamacpp")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cmake_flags(cpu: set[str]) -> list[str]:
    """A native Release build of the tools only; without AMX where the CPU has it."""
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_SERVER=OFF"]
    if cpu & {"amx_tile", "amx_int8", "amx_bf16"}:
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        flags += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    return flags


def build(cache: Path = CACHE, log=print) -> Path:
    """The folder holding the built tools (built once, then reused)."""
    bindir = cache / f"llama.cpp-{VERSION}" / "build" / "bin"
    if all((bindir / t).is_file() for t in TOOLS):
        return bindir
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        log(f"downloading the llama-cpp-python {VERSION} sdist (its vendored llama.cpp)")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                        f"llama-cpp-python=={VERSION}", "-d", str(cache)], check=True)
    src = cache / f"llama.cpp-{VERSION}"
    if not (src / "CMakeLists.txt").is_file():
        tmp = cache / "extract.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
            tar.extractall(tmp, members=members, filter="data")
        shutil.rmtree(src, ignore_errors=True)
        next(tmp.glob("*/vendor/llama.cpp")).rename(src)
        shutil.rmtree(tmp)
    flags = cmake_flags(cpu_flags())
    log(f"building llama.cpp ({VERSION}) in {src}/build: a few minutes, once")
    subprocess.run(["cmake", "-S", str(src), "-B", str(src / "build"), *flags], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(src / "build"), "-j", "--target", *TOOLS], check=True,
                   capture_output=True)
    return bindir


def complete(bindir: Path, gguf: Path, prompt: str, tokens: int, threads: int = 1) -> str:
    """Greedy continuation of `prompt` (its text only: llama-completion echoes the prompt first)."""
    r = subprocess.run([str(bindir / "llama-completion"), "-m", str(gguf), "-p", prompt, "-n", str(tokens),
                        "--temp", "0", "--top-k", "1", "-no-cnv", "-t", str(threads), "--no-warmup",
                        "--no-display-prompt", "-s", "0"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"llama-completion failed ({r.returncode}): {r.stderr[-500:]}")
    return completion_text(r.stdout)


def completion_text(stdout: str) -> str:
    """The generated text from llama-completion's stdout: it prints " [end of text]\\n" when the model
    ended the text, then "\\n\\n" in any case (tools/completion/completion.cpp)."""
    text = stdout.removesuffix("\n\n")
    return text.removesuffix(" [end of text]\n")
