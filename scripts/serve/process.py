"""Servers in their own process group: output to a log file, ready when their own check says so,
stopped by PID (SIGTERM to the group, SIGKILL if it lingers). TorchServe, the KServe-native
runtime and the try-it page's server run this way in make targets and tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class ServerError(RuntimeError):
    pass


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on loopback (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_names(pid: int, *markers: str) -> bool:
    """Is `pid` alive and does its command line contain every marker (e.g. its state folder)? A
    PID file may outlive its process and the PID be reused by another."""
    if not process_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return all(m in cmdline for m in markers)


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(Path(pid_file).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def stop_process_group(pid: int, timeout: float = 30) -> bool:
    """SIGTERM the process group led by `pid` (a server and its workers), SIGKILL if it lingers."""
    if not process_alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap if it is our child, so it does not linger as a zombie
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


class ServerProcess:
    """Subclasses say how to run the server (`command`, `env`, `cwd`) and when it is `ready`;
    `failure` may report an early, certain failure so callers do not wait for the time-out."""

    name = "server"
    error: type[ServerError] = ServerError
    poll_seconds = 0.3

    def __init__(self, run_dir: Path, log_name: str = "server.out"):
        self.run_dir = Path(run_dir).resolve()
        self.log_file = self.run_dir / log_name
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def cwd(self) -> Path:
        return self.run_dir

    def ready(self) -> bool:
        raise NotImplementedError

    def failure(self) -> str | None:
        return None

    def started(self) -> None:
        """Called right after the process is spawned."""

    def start(self, timeout: float = 120):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=self.env(), cwd=self.cwd(), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.started()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise self.error(f"{self.name} exited with {self.proc.returncode} before it was "
                                 f"ready; last log lines:\n{self.log_tail()}")
            if self.ready():
                return
            failure = self.failure()
            if failure is not None:
                raise self.error(failure)
            time.sleep(self.poll_seconds)
        raise self.error(f"{self.name} not ready after {timeout:.0f} s; last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None:
            stop_process_group(self.proc.pid, timeout)
            self.proc.wait(timeout=5)
