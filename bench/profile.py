"""A sampling profile of a running worker, with py-spy, summarised for a report.

:class:`Sampler` runs ``py-spy record`` against a process for as long as a benchmark
phase lasts and writes the raw stacks (one line a distinct stack: ``frame;frame;...
count``, the leaf last). :func:`summarise` turns them into where the Python time went:

* ``by_area``: each sample's leaf frame grouped by what it belongs to: a module of this
  project (``streams.dataplane.pipeline``), or a library's top-level package (``aiokafka``,
  ``faust``, ``asyncio``);
* ``by_stage``: each sample attributed to the innermost frame of a project function that
  is on its stack (the project code that caused it, libraries included);
* ``top_functions``: leaf functions with the largest share.

py-spy samples only threads that are running Python code (idle threads are left out), so
shares are of the worker's busy Python time; work in librdkafka's own threads is not in
the profile (the benchmark reports the process's CPU seconds beside it).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
PROJECT_PACKAGES = ("streams", "models", "bench", "infra")


def py_spy() -> str | None:
    """The py-spy executable beside this Python, else on ``PATH``; ``None`` without one."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Sampler:
    """``py-spy record`` of one process until :meth:`stop`."""

    def __init__(self, pid: int, output: Path, rate: int = 100) -> None:
        self.output = output
        self.rate = rate
        executable = py_spy()
        if executable is None:
            raise RuntimeError("py-spy is not installed: pip install py-spy")
        output.parent.mkdir(parents=True, exist_ok=True)
        self.log = output.with_suffix(".log")
        self.proc = subprocess.Popen(
            [executable, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--output", str(output), "--nonblocking", "--full-filenames"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def stop(self, timeout_s: float = 30.0) -> Path | None:
        """Stop sampling and write the stacks; the file, or ``None`` when py-spy failed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.output if self.output.exists() and self.output.stat().st_size else None


def parse_frame(frame: str) -> tuple[str, str]:
    """``(function, file)`` of one py-spy frame ``function (file:line)``."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    return match["function"], match["file"]


def module_of(path: str) -> str:
    """A project module (``streams.dataplane.pipeline``) or a library's top package
    (``aiokafka``)."""
    parts = Path(path).with_suffix("").parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1:]
        return rest[0] if rest else path
    for i in reversed(range(len(parts) - 1)):
        if parts[i] in PROJECT_PACKAGES:
            return ".".join(parts[i:])
    if "python3" in "".join(parts) or "lib" in parts:
        # The standard library: its top module (asyncio, json, selectors).
        for i, part in enumerate(parts):
            if part.startswith("python3") and i + 1 < len(parts):
                return parts[i + 1]
    return parts[-1] if parts else path


def read_stacks(path: Path) -> Counter[tuple[str, ...]]:
    """The raw file's stacks and their sample counts."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def summarise(stacks: Counter[tuple[str, ...]], top: int = 15) -> dict[str, Any]:
    """Shares of the samples by area, by project stage and by leaf function."""
    total = sum(stacks.values())
    by_area: Counter[str] = Counter()
    by_stage: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = [parse_frame(f) for f in stack if f]
        frames = [f for f in frames if f[1]]  # the thread/process header has no file
        if not frames:
            continue
        function, file = frames[-1]
        area = module_of(file)
        by_area[area] += count
        functions[f"{area}:{function}"] += count
        stage = next((f"{module_of(f)}:{fn}" for fn, f in reversed(frames)
                      if module_of(f).split(".")[0] in PROJECT_PACKAGES), "outside the project")
        by_stage[stage] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"name": name, "share": round(n / total, 4), "samples": n}
                for name, n in counter.most_common(top)]

    return {"samples": total, "by_area": shares(by_area), "by_stage": shares(by_stage),
            "top_functions": shares(functions)}


def profile_report(path: Path | None, seconds: float, rate: int) -> dict[str, Any]:
    """The summary of a Sampler's output, with how busy the sampled threads were."""
    if path is None:
        return {"error": "py-spy wrote no samples (see the .log beside the output)"}
    summary = summarise(read_stacks(path))
    summary["busy_python_fraction"] = (round(summary["samples"] / (seconds * rate), 3)
                                       if seconds > 0 else None)
    summary["stacks_file"] = path.name
    return summary
