"""Helpers the benchmarks share: the machine they ran on, CPU clocks, isolated services.

Every benchmark writes one JSON report with a ``machine`` entry
(:func:`machine_info`), a ``date`` (:func:`utc_date`) and, when it starts services of the
local stack, runs them from :func:`isolated_settings`: free ports and a temporary state
folder, so that services already running on the default ports are not disturbed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from infra.local.base import free_port
from models.triton_config import MODEL_NAME
from streams.settings import REPO_ROOT, Settings

KAFKA_PORTS = ("kafka_port", "kafka_controller_port")
"""The ports of a Kafka broker alone."""

STACK_PORTS = (*KAFKA_PORTS, "redis_port", "triton_http_port", "triton_grpc_port",
               "triton_metrics_port", "prometheus_port", "alertmanager_port",
               "worker_metrics_port")
"""The ports of the whole local stack and of a worker's metrics."""


def log(message: str) -> None:
    """A progress line on stderr, with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def utc_date() -> str:
    """Now, in UTC, as the reports' ``date`` (``2024-05-01T12:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that ran benchmark ``module`` with ``argv`` (default: this process's)."""
    return f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as indented JSON to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``; ``"unknown"`` where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_info(**extra: object) -> dict[str, object]:
    """The host a benchmark ran on, and how busy it was, then ``extra`` (library versions).

    The one-minute load average is taken at the call: a report made on a shared host says
    how much else was running.
    """
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **extra,
    }


def kafka_versions() -> dict[str, str]:
    """The versions of confluent-kafka and of the librdkafka it runs on."""
    import confluent_kafka

    return {"confluent_kafka": confluent_kafka.__version__,
            "librdkafka": confluent_kafka.libversion()[0]}


def _stat_fields(pid: str | int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int | None) -> float | None:
    """User and system CPU seconds of one live process; ``None`` when it is gone."""
    if pid is None:
        return None
    try:
        fields = _stat_fields(pid)
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int | None) -> float | None:
    """User and system CPU seconds of every live process in the process group ``pgid``.

    A service the local stack starts leads its own process group, so this counts its
    children too (a broker's JVM, Triton's python stubs).
    """
    if pgid is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def thread_cpu_seconds() -> float:
    """User and system CPU seconds of the calling thread (``getrusage(RUSAGE_THREAD)``).

    The Python side of a Kafka client: librdkafka's own threads are not counted.
    """
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def isolated_settings(state_dir: Path, ports: Iterable[str] = (), base: Settings | None = None,
                      **overrides: Any) -> Settings:
    """``base`` (default: the environment's) with its state in ``state_dir`` and a free port
    for each settings field named in ``ports``, then ``overrides``.

    Services started from these settings leave those already running on the default ports
    and the factory's own state folder alone.
    """
    base = Settings.from_env() if base is None else base
    return dataclasses.replace(base, state_dir=state_dir,
                               **{name: free_port() for name in ports}, **overrides)


def model_repository(repo: Path) -> Path:
    """A new model repository at ``repo``: the factory's ``config.pbtxt`` and no version."""
    (repo / MODEL_NAME).mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "triton_repo" / MODEL_NAME / "config.pbtxt",
                    repo / MODEL_NAME / "config.pbtxt")
    return repo


def delete_topics(admin: Any, names: list[str]) -> None:
    """Delete ``names`` with a confluent-kafka ``AdminClient``, ignoring failures."""
    for future in admin.delete_topics(names).values():
        try:
            future.result()
        except Exception:  # noqa: BLE001 - a topic left behind is not a result
            pass


def handbook_frame(rows: int | None = None) -> pd.DataFrame:
    """The handbook's main dataset from the test cache (simulated and stored when missing);
    its first ``rows`` rows when given."""
    from tests.models.conftest import MAIN_PARAMETERS, cached_simulation

    frame = cached_simulation(MAIN_PARAMETERS)
    return frame if rows is None else frame.head(rows).reset_index(drop=True)


def simulated_world(customers: int, terminals: int, days: int) -> pd.DataFrame:
    """A simulated table of the handbook's parameters at another size (cached the same way)."""
    from tests.models.conftest import MAIN_PARAMETERS, cached_simulation

    return cached_simulation({**MAIN_PARAMETERS, "n_customers": customers,
                              "n_terminals": terminals, "nb_days": days})
