"""A hard RAM cap for one benchmark run: a memory cgroup with that limit, which the run's process joins
before it starts, so that everything it touches, page cache included, counts against the cap (as on a
phone, where the page cache lives in the same RAM). cgroup v2 where a child group with the memory
controller can be made, else the v1 memory controller; both need root or a delegated cgroup.

A process the kernel kills for memory exits by SIGKILL: the bench records it as `oom`."""

import os
import signal
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_group(controller: str) -> str:
    """This process's group path in the hierarchy of `controller` ("" for the v2 unified one)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if (controller == "" and names == "") or controller in names.split(","):
            return path.lstrip("/")
    return ""


def _candidates() -> list[tuple[str, Path]]:
    """Where a capped group could be made: (version, parent folder), best first."""
    out = []
    v2 = CGROUP_ROOT / "cgroup.controllers"  # a pure v2 mount
    if v2.is_file() and "memory" in v2.read_text().split():
        out.append(("v2", CGROUP_ROOT / _own_group("")))
    unified = CGROUP_ROOT / "unified"  # hybrid: v2 alongside v1, often without the memory controller
    if (unified / "cgroup.controllers").is_file() and "memory" in (unified / "cgroup.controllers").read_text().split():
        out.append(("v2", unified / _own_group("")))
    if (CGROUP_ROOT / "memory" / "memory.limit_in_bytes").is_file():
        out.append(("v1", CGROUP_ROOT / "memory" / _own_group("memory")))
    return out


class RamCap:
    """One capped memory cgroup. Use as a context manager; `join` is the child's preexec_fn."""

    def __init__(self, limit_bytes: int, name: str | None = None):
        self.limit = limit_bytes
        name = name or f"cosmoe-bench-{os.getpid()}"
        errors = []
        for version, parent in _candidates():
            path = parent / name
            try:
                path.mkdir(exist_ok=True)
                if version == "v2":
                    (path / "memory.max").write_text(str(limit_bytes))
                    if (path / "memory.swap.max").exists():
                        (path / "memory.swap.max").write_text("0")
                else:
                    (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                    if (path / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
                        (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
                self.version, self.path = version, path
                return
            except OSError as e:
                errors.append(f"{version} at {parent}: {e.strerror or e}")
                _remove(path)
        why = "; ".join(errors) if errors else "no cgroup v2 memory controller and no v1 memory hierarchy mounted"
        raise PermissionError(f"cannot make a memory cgroup for --ram-cap ({why}); it needs root or a delegated "
                              "cgroup (cgroup v2 with the memory controller, or the v1 memory controller)")

    def join(self):
        """Runs in the child between fork and exec: it and everything it starts are capped."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_bytes(self) -> int | None:
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            try:
                return int((self.path / name).read_text())
            except (OSError, ValueError):
                continue
        return None

    def close(self):
        _remove(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _remove(path: Path):
    try:
        path.rmdir()  # a cgroup folder goes with rmdir once it has no processes
    except OSError:
        pass


def unavailable() -> str | None:
    """Why no capped cgroup can be made here, or None when one can."""
    try:
        RamCap(1 << 30, f"cosmoe-probe-{os.getpid()}").close()
        return None
    except PermissionError as e:
        return str(e)


def killed_for_memory(returncode: int) -> bool:
    return returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
