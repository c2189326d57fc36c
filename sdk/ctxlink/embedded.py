"""A throwaway ``redis-server`` on a free loopback port: the one launcher of the demo, the
benchmarks and the test suite (tests/servers.py builds on it).

    with EmbeddedRedis(module="build/ctxlink.so") as server:
        client = server.client()

The server binds 127.0.0.1 only, keeps its files in its own temporary directory (or the one
given), and is stopped (and its own directory removed) on exit. ``restart()`` keeps the
directory, so RDB and AOF restarts can be exercised. Each start logs to a file of its own
(``redis-<n>.log``, stdout and stderr in ``redis-<n>.out``), so a crash report names the process
that crashed: :meth:`EmbeddedRedis.crash_report` (crash marks in the log, death by a signal)
with the log's tail. :class:`EmbeddedCluster` starts several of them as one Redis Cluster.

Not imported by ``import ctxlink``: ``from ctxlink.embedded import EmbeddedRedis``.
"""

from __future__ import annotations

import itertools
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

__all__ = [
    "CRASH_MARKS",
    "EmbeddedCluster",
    "EmbeddedRedis",
    "free_port",
    "find_module",
    "missing_module_text",
    "server_version",
]

#: Lines a crashing redis-server writes to its log (crash report, failed assertion, panic).
CRASH_MARKS = (
    "crashed by signal",
    "REDIS BUG REPORT",
    "ASSERTION FAILED",
    "Guru Meditation",
    "STACK TRACE",
    "------ FAST MEMORY TEST",
)
_starts = itertools.count(1)  # names each start's log and output files


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


def _die_with_parent() -> None:  # runs in the child before exec (Linux)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM: no orphan when the parent is killed
    except Exception:  # not Linux: the server may outlive a killed parent
        pass


class EmbeddedRedis:
    """One ``redis-server`` process owned by the caller.

    ``args`` come after the defaults (port, bind, dir, logfile, no RDB snapshots, no AOF,
    ``DEBUG`` allowed locally on 7.0+), so they override them. ``die_with_parent``: the server
    gets SIGTERM when this process dies (Linux), as the test suite wants.
    """

    def __init__(
        self,
        module: str | os.PathLike[str] | None = None,
        module_args: Sequence[str] = (),
        args: Sequence[str] = (),
        directory: str | os.PathLike[str] | None = None,
        binary: str = "redis-server",
        startup_timeout: float = 10.0,
        new_session: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        self.module = Path(module) if module is not None else None
        self.module_args = list(module_args)
        self.args = list(args)
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.new_session = new_session  # keep a terminal's Ctrl-C from reaching the server
        self.die_with_parent = die_with_parent
        self._own_dir = directory is None
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="ctxlink-redis-"))
        # a temporary directory of our own goes when the object does, even without close()
        self._remove_dir = (
            weakref.finalize(self, shutil.rmtree, str(self.dir), True) if self._own_dir else None
        )
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.argv: list[str] = []
        self.log_path = self.dir / "redis.log"
        self.out_path = self.dir / "redis.out"
        #: the last stop had to kill the server (it did not shut down in time)
        self.killed = False

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> "EmbeddedRedis":
        """Starts the server and waits until it answers PING (RuntimeError with its log when it
        does not)."""
        self.check_startable()
        last_error = ""
        for _ in range(8):  # a port can be taken between free_port() and bind
            self.launch()
            if self.wait_ready():
                return self
            exited = self.proc is not None and self.proc.poll() is not None
            last_error = self.log_text()
            self._kill()
            if not exited:
                raise RuntimeError(
                    f"redis-server did not answer PING within {self.startup_timeout} s:\n"
                    f"{self.log_tail()}"
                )
            if "Address already in use" not in last_error and (
                    "Could not create server TCP" not in last_error):
                break
        raise RuntimeError(f"redis-server did not start: {last_error.strip()[-2000:]}")

    def check_startable(self) -> None:
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"{self.binary} not found on PATH (apt-get install redis-server)")
        if self.module is not None and not self.module.exists():
            raise RuntimeError(missing_module_text(self.module))

    def launch(self) -> None:
        """Starts the process on a fresh port, without waiting (see :meth:`wait_ready`)."""
        n = next(_starts)
        self.port = free_port()
        self.log_path = self.dir / f"redis-{n}.log"
        self.out_path = self.dir / f"redis-{n}.out"
        self.dir.mkdir(parents=True, exist_ok=True)
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
        self.argv = cmd
        self.killed = False
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir, start_new_session=self.new_session,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the server answers PING; False when it exited or ``timeout`` (default
        ``startup_timeout``) passed. A server still loading its data set is not ready."""
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
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

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self, save: bool = False, now: bool = False, timeout: float = 10.0) -> int | None:
        """Stops the server (``SHUTDOWN [NO]SAVE``, ``NOW`` too when asked and understood; then
        SIGKILL after ``timeout`` seconds, which sets ``killed``); returns its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._shutdown(save, now)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
        self.proc = None
        return proc.returncode

    def _shutdown(self, save: bool, now: bool) -> None:
        command = b"SHUTDOWN SAVE" if save else b"SHUTDOWN NOSAVE"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(command + (b" NOW\r\n" if now else b"\r\n"))
                reply = s.recv(256)
                if now and reply.startswith(b"-"):  # Redis 6.2 has no NOW
                    s.sendall(command + b"\r\n")
                    s.recv(256)
        except OSError:
            pass

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
        """The server log of the current (or last) start."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_text(self) -> str:
        """The log and what the process wrote to stdout/stderr, of the current (or last) start."""
        out = self.out_path.read_text(errors="replace") if self.out_path.exists() else ""
        return "\n".join(part for part in (self.log(), out) if part)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def crashed(self) -> bool:
        """True when the log shows a crash report."""
        text = self.log()
        return any(mark in text for mark in CRASH_MARKS)

    def crash_report(self, process: subprocess.Popen[bytes] | None = None) -> str | None:
        """What shows that the server crashed (a crash mark in its log, death by a signal), with
        the log's tail; None when nothing does."""
        text = self.log_text()
        for mark in CRASH_MARKS:
            if mark in text:
                return f"the log of redis-server on port {self.port} contains {mark!r}:\n" + (
                    self.log_tail(60))
        proc = process if process is not None else self.proc
        code = proc.poll() if proc is not None else None
        if code is not None and code < 0:
            return f"redis-server on port {self.port} was killed by signal {-code}:\n" + (
                self.log_tail(60))
        return None


class EmbeddedCluster:
    """A throwaway Redis Cluster on loopback: ``primaries`` nodes with the 16384 slots split
    evenly, plus ``replicas`` nodes replicating the first primary, each an :class:`EmbeddedRedis`
    (the module loaded on every node, or none).

        with EmbeddedCluster(3, module=find_module()) as cluster:
            rc = cluster.client()          # a redis.cluster.RedisCluster

    :meth:`start` returns once every node reports ``cluster_state:ok`` (and every replica's link
    is up); ``nodes`` lists the primaries first, in slot order.
    """

    def __init__(
        self,
        primaries: int = 3,
        *,
        replicas: int = 0,
        module: str | os.PathLike[str] | None = None,
        args: Sequence[str] = (),
        die_with_parent: bool = False,
        timeout: float = 30.0,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary and no negative replicas")
        self.primaries = primaries
        self.replicas = replicas
        self.module = module
        self.args = list(args)
        self.die_with_parent = die_with_parent
        self.timeout = timeout
        self.nodes: list[EmbeddedRedis] = []

    @property
    def port(self) -> int:
        """The first primary's port (a cluster client finds the others from it)."""
        return self.nodes[0].port

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def ranges(self) -> list[tuple[int, int]]:
        """The slot range of each primary, split as ``redis-cli --cluster create`` splits them
        (three primaries: 0-5460, 5461-10922, 10923-16383)."""
        share = 16384 / self.primaries
        out, first = [], 0
        for i in range(1, self.primaries + 1):
            last = 16383 if i == self.primaries else int(share * i - 0.5)
            out.append((first, last))
            first = last + 1
        return out

    def start(self) -> "EmbeddedCluster":
        try:
            buses = []
            for _ in range(self.primaries + self.replicas):
                bus = free_port()
                self.nodes.append(EmbeddedRedis(
                    module=self.module, die_with_parent=self.die_with_parent,
                    args=["--cluster-enabled", "yes", "--cluster-port", str(bus),
                          "--cluster-node-timeout", "5000", *self.args]).start())
                buses.append(bus)
            clients = [n.client() for n in self.nodes]
            try:
                self._form(clients, buses)
            finally:
                for c in clients:
                    c.close()
        except BaseException:
            self.close()
            raise
        return self

    def _form(self, clients: list[Any], buses: list[int]) -> None:
        for c, (lo, hi) in zip(clients, self.ranges(), strict=False):
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for node, bus in zip(self.nodes[1:], buses[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
        if self.replicas:
            first = clients[0].execute_command("CLUSTER", "MYID")
            for c in clients[self.primaries:]:
                self._until(lambda c=c: first in c.execute_command("CLUSTER", "NODES"),
                            "a replica to see its primary")
                c.execute_command("CLUSTER", "REPLICATE", first)
        self._until(lambda: all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                                for c in clients), "cluster_state:ok")
        for c in clients[self.primaries:]:
            self._until(lambda c=c: c.info("replication").get("master_link_status") == "up",
                        "a replica's link")

    def _until(self, predicate: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not come up: timed out waiting for {what}")
            time.sleep(0.05)

    def client(self, **kwargs: Any) -> Any:
        """A ``redis.cluster.RedisCluster`` on the first primary."""
        from redis.cluster import RedisCluster

        return RedisCluster(host="127.0.0.1", port=self.port, **kwargs)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.nodes = []

    def __enter__(self) -> "EmbeddedCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
