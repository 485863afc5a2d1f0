"""llama.cpp, built here from the source tree vendored in llama-cpp-python's PyPI sdist (pinned), to run
the same weights as cosmoe-edge (edge-convert --to gguf). The build is cached under runs/llamacpp/.

On Intel CPUs with AMX, a native build crashed in ggml_backend_amx_mul_mat (seen on another machine of
this project): the AMX instructions are then turned off at compile time.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python; its vendor/llama.cpp is the engine measured
TOOLS = ("llama-completion", "llama-bench", "llama-quantize", "llama-perplexity", "llama-tokenize")
QUANTS = ("Q4_0", "Q8_0")
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


def engine_version(bindir: Path) -> str:
    """"llama.cpp 0.5.0-dev (commit 0c1e570), from llama-cpp-python 0.3.36"."""
    r = subprocess.run([str(bindir / "llama-bench"), "--version"], capture_output=True, text=True)
    m = re.search(r"version: (\S+) \(build \d+, commit (\w+)\)", r.stdout + r.stderr)
    return f"llama.cpp {m[1]} (commit {m[2]}), from llama-cpp-python {VERSION}" if m else f"llama-cpp-python {VERSION}"


def quantized_path(f32: Path, quant: str) -> Path:
    """Where `quantize` writes: `<stem>-<quant>.gguf` beside the f32 GGUF."""
    return f32.with_name(f"{f32.stem.removesuffix('-f32')}-{quant.lower()}.gguf")


def quantize(bindir: Path, f32: Path, quant: str) -> Path:
    """f32 GGUF -> quantized_path(f32, quant), written whole or not at all."""
    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    out = quantized_path(f32, quant)
    tmp = out.with_suffix(".partial")
    r = subprocess.run([str(bindir / "llama-quantize"), str(f32), str(tmp), quant], capture_output=True, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama-quantize failed ({r.returncode}): {r.stderr[-500:]}")
    os.replace(tmp, out)
    return out


def bench_command(bindir: Path, gguf: Path, threads: list[int], n_prompt: int, n_gen: int, repetitions: int,
                  repack: bool = True) -> list[str]:
    """llama-bench: prefill (pp n_prompt) and decode (tg n_gen) at each thread count, as JSON."""
    return [str(bindir / "llama-bench"), "-m", str(gguf), "-p", str(n_prompt), "-n", str(n_gen),
            "-t", ",".join(map(str, threads)), "-r", str(repetitions), "--repack", str(int(repack)), "-o", "json"]


def parse_bench(stdout: str) -> list[dict]:
    """llama-bench's JSON: one row per test ("pp32": prefill of 32 tokens, "tg64": 64 decode steps)."""
    rows = []
    for t in json.loads(stdout):
        test = f"pp{t['n_prompt']}" if t["n_gen"] == 0 else f"tg{t['n_gen']}"
        rows.append({"test": test, "threads": t["n_threads"], "tokens_per_s": t["avg_ts"],
                     "tokens_per_s_stddev": t["stddev_ts"], "repack": bool(t.get("repack", True)),
                     "commit": t.get("build_commit", ""), "model_bytes": t["model_size"],
                     "samples_tokens_per_s": t.get("samples_ts", [])})
    return rows


def completion_command(bindir: Path, gguf: Path, prompt: str, tokens: int, threads: int = 1,
                       temperature: float = 0.0, seed: int = 0, repack: bool = True, mmap: bool = True,
                       warmup: bool = True) -> list[str]:
    """llama-completion generating `tokens` tokens after `prompt`: greedy at temperature 0, else plain
    sampling (no top-k/top-p/min-p/penalties, as edge-run samples). mmap=False reads the weights into
    memory (-lm none; this version's --no-mmap)."""
    sampling = (["--temp", "0", "--top-k", "1"] if temperature == 0 else
                ["--temp", str(temperature), "--top-k", "0", "--top-p", "1", "--min-p", "0"])
    return [str(bindir / "llama-completion"), "-m", str(gguf), "-p", prompt, "-n", str(tokens), *sampling,
            "-no-cnv", "-t", str(threads), "--no-display-prompt", "-s", str(seed), "--ignore-eos",
            *([] if repack else ["--no-repack"]), *([] if mmap else ["-lm", "none"]),
            *([] if warmup else ["--no-warmup"])]


def parse_timings(stderr: str) -> dict:
    """llama-completion's closing timings (common_perf_print, or llama_perf_context_print in older
    versions): load, prefill and decode. Decode steps exclude the first token, which prefill produces."""
    found = {name: (float(ms), int(n or 0)) for name, ms, n in
             re.findall(r"(prompt eval|eval|load) time =\s+([\d.]+) ms(?: /\s+(\d+) (?:tokens|runs))?", stderr)}
    if not {"prompt eval", "eval", "load"} <= found.keys():
        raise ValueError("llama-completion printed no timings (its output ended early?)")
    (prefill_ms, prompt_tokens), (decode_ms, steps) = found["prompt eval"], found["eval"]
    return {"load_ms": found["load"][0], "prompt_tokens": prompt_tokens, "ttft_ms": prefill_ms,
            "prefill_tokens_per_s": prompt_tokens / prefill_ms * 1e3 if prefill_ms else 0.0,
            "generated_tokens": steps + 1, "decode_tokens_per_s": steps / decode_ms * 1e3 if decode_ms else 0.0}


def complete(bindir: Path, gguf: Path, prompt: str, tokens: int, threads: int = 1) -> str:
    """Greedy continuation of `prompt` (its text only: llama-completion echoes the prompt first)."""
    cmd = completion_command(bindir, gguf, prompt, tokens, threads, warmup=False)
    cmd.remove("--ignore-eos")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"llama-completion failed ({r.returncode}): {r.stderr[-500:]}")
    return completion_text(r.stdout)


def completion_text(stdout: str) -> str:
    """The generated text from llama-completion's stdout: it prints " [end of text]\\n" when the model
    ended the text, then "\\n\\n" in any case (tools/completion/completion.cpp)."""
    text = stdout.removesuffix("\n\n")
    return text.removesuffix(" [end of text]\n")
