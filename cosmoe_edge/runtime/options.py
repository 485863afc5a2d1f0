"""What one run is asked to do (RunOptions), checked the same way from the command line and from
Python, and the memory-budget syntax."""

import re
from dataclasses import dataclass

from cosmoe_edge.errors import RequestError
from cosmoe_edge.runtime.manifest import BACKENDS
from cosmoe_edge.runtime.policies import DEFAULT, POLICIES
from cosmoe_edge.runtime.selection import Selection, check_choices

UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_budget(text: str, expert_bytes_total: int) -> int | None:
    """'all' -> None (every expert fits); '64MB', '1.5GiB', '300000' -> bytes; '25%' -> of all experts' bytes."""
    t = text.strip().lower()
    if t == "all":
        return None
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", t):
        return int(float(m.group(1)) / 100 * expert_bytes_total)
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?", t):
        return int(float(m.group(1)) * UNITS[m.group(2) or "b"])
    raise RequestError(f"cannot read memory budget {text!r}: use all, a size like 64MB or 1.5GiB, or a percentage "
                       "like 25%", "bad_budget")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """edge-run's options; the field names are the command line's (--max-new-tokens: max_new_tokens)."""

    prompt: str
    max_new_tokens: int = 128
    backend: str = "executorch"
    memory_budget: str = "all"  # all, 64MB, 1.5GiB, or 25% of all experts' bytes
    cache_policy: str = DEFAULT
    prefetch: bool = False
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    cold: bool = False  # drop the artifact's files from the page cache first
    verify: bool = True  # sha256 of each file on its first load (sizes are always checked)
    threads: int = 1
    preload: bool = False  # load every expert before the prompt
    experts_per_token: int | None = None  # None: the model's k_main (compressed experts), else its top_k
    on_miss: str = Selection.on_miss  # wait, compressed or skip (runtime/selection.py)
    skip_below: float = Selection.skip_below
    cache_bias: float = Selection.cache_bias
    engine: str | None = None  # native or python; None: native for executorch, python for onnx
    packed_cache: bool = True  # native: use edge-prepare's packed-weights cache when there is one

    def check(self) -> "RunOptions":
        """Raise RequestError for what no artifact could serve."""
        if self.backend not in BACKENDS:
            raise RequestError(f"unknown --backend {self.backend!r}; choose {' or '.join(BACKENDS)}", "unknown_backend")
        if self.cache_policy not in POLICIES:
            raise RequestError(f"unknown --cache-policy {self.cache_policy!r}; choose {', '.join(POLICIES)}",
                               "unknown_policy")
        if not self.prompt:
            raise RequestError("--prompt is empty", "empty_prompt")
        if self.max_new_tokens < 1:
            raise RequestError("--max-new-tokens must be at least 1", "bad_option")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise RequestError("need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0", "bad_option")
        if self.engine not in (None, "native", "python"):
            raise RequestError(f"unknown --engine {self.engine!r}; choose native or python", "bad_option")
        if self.threads < 1:
            raise RequestError("--threads must be at least 1", "bad_option")
        check_choices(self.experts_per_token, self.on_miss, self.skip_below, self.cache_bias)
        parse_budget(self.memory_budget, 0)  # its syntax; its size is checked against the artifact later
        return self
