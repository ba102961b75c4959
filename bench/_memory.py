"""Memory of a load, as Linux sees it: a command run in a fresh interpreter whose anonymous RSS
is sampled from outside, and the bytes of a pipeline's tensors still backed by the mmapped
safetensors files (file pages, not anonymous memory: an unquantized weight loaded in its file's
dtype stays in the file mapping)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_PLAIN = ("Parameter", "Tensor")


def status(field: str, pid: int | str = "self") -> int | None:
    """A kB field of /proc/PID/status in bytes (None once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (clear_refs 5); returns that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return status("VmRSS") or 0


def file_backed_bytes(modules: list[Any]) -> int:
    """Bytes of the modules' tensors (inner tensors of torchao/quanto subclasses included)
    whose storage lies in a mapping of a *.safetensors file."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith(".safetensors"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    seen: set[int] = set()

    def walk(tensor: Any) -> int:
        flatten = getattr(tensor, "__tensor_flatten__", None)
        if flatten is not None and type(tensor).__name__ not in _PLAIN:
            return sum(walk(getattr(tensor, name)) for name in flatten()[0])
        pointer = tensor.data_ptr()
        if pointer in seen or not any(a <= pointer < b for a, b in ranges):
            return 0
        seen.add(pointer)
        return tensor.numel() * tensor.element_size()

    return sum(
        walk(tensor)
        for module in modules
        for tensor in [*module.parameters(), *module.buffers()]
        if tensor.device.type == "cpu"
    )


def sampled_run(command: list[str], cwd: Path, interval: float) -> dict[str, Any]:
    """Run `command` (it prints one JSON object last, with `started`/`ended` monotonic times and
    `baseline`, its RssAnon before the work) while sampling its RssAnon every `interval` s;
    adds `anon_peak`, the largest sample between started and ended above the baseline."""
    samples: list[tuple[float, int]] = []
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=cwd, text=True)

        def sample() -> None:
            while process.poll() is None:
                anon = status("RssAnon", process.pid)
                if anon is not None:
                    samples.append((time.monotonic(), anon))
                time.sleep(interval)

        sampler = threading.Thread(target=sample)
        sampler.start()
        process.wait()
        sampler.join()
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command[-3:])}: {err.read()[-3000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    during = [a for t, a in samples if result["started"] <= t <= result["ended"]]
    result["anon_peak"] = max(during, default=result["anon_after"]) - result["baseline"]
    result["samples"] = len(during)
    return result
