"""A local service process that the factory starts, checks and stops itself.

Each service keeps everything it writes under ``<state_dir>/<name>/`` (git-ignored),
binds 127.0.0.1 only, runs in its own process session so that stopping it stops every
child, and is considered up only when a real health check answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path


class PrerequisiteError(RuntimeError):
    """A prerequisite is missing; the message is one line that says what to do."""


class ServiceError(RuntimeError):
    """A service failed to start or to answer its health check."""


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """An unused TCP port on 127.0.0.1, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class LocalService(ABC):
    """Base of every locally started service.

    Subclasses say how to install (``prepare``), how to launch (``command``) and how to
    check health (``healthy``). Starting twice is harmless: a service that is already up
    with our pid file is left alone.
    """

    state_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    start_timeout_s: float = 120.0

    name: str = "service"

    @property
    def home(self) -> Path:
        return self.state_dir.resolve() / self.name

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    @property
    def log_file(self) -> Path:
        return self.home / "service.log"

    @abstractmethod
    def prepare(self) -> None:
        """Install or check what the service needs; raise PrerequisiteError if missing."""

    @abstractmethod
    def command(self) -> tuple[list[str], dict[str, str]]:
        """The argv and extra environment that launch the service in the foreground."""

    @abstractmethod
    def healthy(self) -> bool:
        """A real health check (a protocol round trip, not only an open port)."""

    def url(self) -> str:
        """How clients reach this service."""
        return f"127.0.0.1:{next(iter(self.ports.values()))}"

    def display_url(self) -> str:
        """:meth:`url` as it may be shown or logged (no credential in it)."""
        return self.url()

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        """Start the service and wait until it is healthy."""
        if self.running():
            if self.healthy():
                return
            self._wait_healthy()
            return
        for label, port in self.ports.items():
            if port_is_open(port):
                raise PrerequisiteError(
                    f"{self.name}: port {port} ({label}) is already taken by another process; "
                    f"free it or choose another port (see README, 'Settings')."
                )
        self.home.mkdir(parents=True, exist_ok=True)
        self.prepare()
        argv, extra_env = self.command()
        env = {**os.environ, **extra_env}
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.home,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        self._wait_healthy(proc)

    def _wait_healthy(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {proc.returncode} during start; "
                    f"last lines of {self.log_file}:\n{self.tail_log()}"
                )
            try:
                if self.healthy():
                    return
            except Exception:  # noqa: BLE001 - any failure means "not yet healthy"
                pass
            time.sleep(0.25)
        self.stop()
        raise ServiceError(
            f"{self.name} did not become healthy within {self.start_timeout_s:.0f} s; "
            f"last lines of {self.log_file}:\n{self.tail_log()}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``timeout_s``."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._group_alive(pid):
            time.sleep(0.1)
        if self._group_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while self._group_alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        # Reap our own child if this process started it.
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
        return False

    def tail_log(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
