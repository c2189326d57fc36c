"""A throwaway ``redis-server`` on a free loopback port, for demos, tests and benchmarks.

    with EmbeddedRedis(module="build/ctxlink.so") as server:
        client = server.client()

The server binds 127.0.0.1 only, keeps its files in its own temporary directory,
and is stopped (and its directory removed) on exit. ``restart()`` keeps the
directory, so RDB and AOF restarts can be exercised.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

__all__ = ["EmbeddedRedis", "free_port", "find_module", "missing_module_text", "server_version"]

_CRASH_MARKS = ("crashed by signal", "REDIS BUG REPORT", "ASSERTION FAILED")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_VERSIONS: dict[str, tuple[int, ...]] = {}


def server_version(binary: str = "redis-server") -> tuple[int, ...]:
    """The version of a redis-server binary, e.g. (7, 0, 15), from ``--version``."""
    if binary not in _VERSIONS:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=True
        ).stdout
        word = next((w for w in out.split() if w.startswith("v=")), "v=0")
        _VERSIONS[binary] = tuple(int(x) for x in word[2:].split(".") if x.isdigit())
    return _VERSIONS[binary]


def missing_module_text(path: str | os.PathLike[str]) -> str:
    """Why a module cannot be loaded, and the ways to point at one."""
    env = os.environ.get("CTXLINK_MODULE")
    origin = " (from the CTXLINK_MODULE environment variable)" if env and Path(env) == Path(
        path) else ""
    return (
        f"module {path}{origin} is missing: build it (`make` in a ctxlink source checkout "
        "gives build/ctxlink.so), then set the CTXLINK_MODULE environment variable to its "
        "path, or pass module=... (EmbeddedRedis(module=...), ctxlink demo --module PATH)"
    )


def find_module() -> Path:
    """The built module: $CTXLINK_MODULE, else build/ctxlink.so of the source checkout this
    package runs from (the path is returned even when missing; :class:`EmbeddedRedis` then
    says how to point at a module: :func:`missing_module_text`)."""
    env = os.environ.get("CTXLINK_MODULE")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "build" / "ctxlink.so"
        if candidate.exists():
            return candidate
    return Path("build/ctxlink.so").resolve()


class EmbeddedRedis:
    """One ``redis-server`` process owned by the caller."""

    def __init__(
        self,
        module: str | os.PathLike[str] | None = None,
        module_args: Sequence[str] = (),
        args: Sequence[str] = (),
        directory: str | os.PathLike[str] | None = None,
        binary: str = "redis-server",
        startup_timeout: float = 10.0,
        new_session: bool = False,
    ) -> None:
        self.module = Path(module) if module is not None else None
        self.module_args = list(module_args)
        self.args = list(args)
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.new_session = new_session  # keep a terminal's Ctrl-C from reaching the server
        self._own_dir = directory is None
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="ctxlink-redis-"))
        # a temporary directory of our own goes when the object does, even without close()
        self._remove_dir = (
            weakref.finalize(self, shutil.rmtree, str(self.dir), True) if self._own_dir else None
        )
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "redis.log"

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> "EmbeddedRedis":
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"{self.binary} not found on PATH (apt-get install redis-server)")
        if self.module is not None and not self.module.exists():
            raise RuntimeError(missing_module_text(self.module))
        last_error = ""
        for _ in range(5):  # a port can be taken between free_port() and bind
            self.port = free_port()
            cmd = [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.dir),
                "--logfile", str(self.log_path),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
            ]
            if server_version(self.binary) >= (7,):  # DEBUG is off by default since 7.0
                cmd += ["--enable-debug-command", "local"]
            if self.module is not None:
                cmd += ["--loadmodule", str(self.module.resolve()), *self.module_args]
            cmd += self.args
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                start_new_session=self.new_session,
            )
            if self._wait_ready():
                return self
            last_error = self._failure_text()
            self._kill()
            if "Address already in use" not in last_error:
                break
        raise RuntimeError(f"redis-server did not start: {last_error.strip()[-2000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def _failure_text(self) -> str:
        text = ""
        if self.proc is not None and self.proc.stderr is not None and self.proc.poll() is not None:
            text += self.proc.stderr.read().decode(errors="replace")
        if self.log_path.exists():
            text += self.log_path.read_text(errors="replace")
        return text

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def stop(self, save: bool = False) -> int | None:
        """Stops the server (SHUTDOWN [NO]SAVE, then SIGKILL); returns its exit code."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(b"SHUTDOWN SAVE\r\n" if save else b"SHUTDOWN NOSAVE\r\n")
                    s.recv(64)
            except OSError:
                pass
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                code = self.proc.wait(timeout=10)
        elif self.proc is not None:
            code = self.proc.returncode
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        return code

    def restart(self, args: Sequence[str] | None = None, module: Any = "same") -> "EmbeddedRedis":
        """Stops without saving and starts again on the same directory."""
        self.stop()
        if args is not None:
            self.args = list(args)
        if module != "same":
            self.module = Path(module) if module is not None else None
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._remove_dir is not None:
            self._remove_dir()

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inspection -----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def crashed(self) -> bool:
        """True when the log shows a crash report."""
        text = self.log()
        return any(mark in text for mark in _CRASH_MARKS)
