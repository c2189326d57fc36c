"""Real ``redis-server`` processes for the test suite.

The processes are started by the SDK's one launcher, :class:`ctxlink.embedded.EmbeddedRedis`
(start, wait for PING, crash report with the log's tail); this module adds what the tests check
on top of it. Everything here talks to actual processes on 127.0.0.1: start a server in its own directory,
restart it on the same directory (RDB / AOF restarts), attach a replica, start a stock server
(no module) on an existing directory, stop it and check that it did not crash.

It also holds the small readers the tests use to see what a server wrote or propagated:
the multi-part AOF of Redis 7 (:func:`aof_commands`), a ``MONITOR`` stream
(:class:`Monitor`) and a raw RESP2 connection (:class:`RawConnection`) for replies that
redis-py would otherwise post-process (``COMMAND INFO`` ...).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis._parsers import _RESP2Parser

from ctxlink.embedded import CRASH_MARKS, EmbeddedRedis, free_port  # noqa: F401 - re-exported

REPO_ROOT = Path(__file__).resolve().parent.parent
MODULE_PATH = Path(os.environ.get("CTX_MODULE_PATH") or REPO_ROOT / "build" / "ctxlink.so")
REDIS_SERVER = os.environ.get("CTX_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
HOST = "127.0.0.1"

# Lines a crashing redis-server writes to its log (crash report, failed assertion, panic).
CRASH_MARKERS = CRASH_MARKS

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0

_live_processes: set[subprocess.Popen] = set()


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - only on abnormal exits
    for proc in list(_live_processes):
        if proc.poll() is None:
            proc.kill()


class ModuleMissing(RuntimeError):
    pass


def module_path() -> Path:
    """Path of the built module, or :class:`ModuleMissing` with instructions."""
    if not MODULE_PATH.is_file():
        raise ModuleMissing(
            f"ctxlink module not found at {MODULE_PATH}: run `make` in {REPO_ROOT} to build "
            "build/ctxlink.so before running the module tests"
        )
    return MODULE_PATH


# --------------------------------------------------------------------------- redis-py glue


class RawErrorParser(_RESP2Parser):
    """redis-py strips well-known codes (``ERR``, ``NOPERM``...) from error messages; keep the
    full reply text on the exception as ``raw_error`` so tests can check the code."""

    @classmethod
    def parse_error(cls, response):
        exc = super().parse_error(response)
        try:
            exc.raw_error = response
        except Exception:  # pragma: no cover
            pass
        return exc


def error_text(exc: BaseException) -> str:
    """The complete error reply (``"CTXINVALID field ..."``, ``"ERR ..."``) behind ``exc``."""
    raw = getattr(exc, "raw_error", None)
    if raw is not None:
        return raw
    return str(exc)


def error_code(exc: BaseException) -> str:
    return error_text(exc).split(" ", 1)[0]


def make_client(port: int, **kwargs) -> redis.Redis:
    kwargs.setdefault("socket_timeout", 60)
    kwargs.setdefault("socket_connect_timeout", 5)
    kwargs.setdefault("protocol", 2)  # RESP2: raw replies, and redis-py 8 defaults to RESP3
    pool = redis.ConnectionPool(
        host=HOST, port=port, decode_responses=False, parser_class=RawErrorParser, **kwargs
    )
    return redis.Redis(connection_pool=pool)


# --------------------------------------------------------------------------- servers


class ServerStartError(RuntimeError):
    pass


class Server:
    """One redis-server process (an :class:`EmbeddedRedis` start). ``r`` is a redis-py client
    (bytes replies)."""

    def __init__(self, embedded: EmbeddedRedis, spec: dict):
        assert embedded.proc is not None
        self.embedded = embedded
        self.dir = embedded.dir
        self.port = embedded.port
        self.proc = embedded.proc
        self.argv = embedded.argv
        self.logfile = embedded.log_path
        self.outfile = embedded.out_path
        self.spec = spec  # how it was started, used by restart()
        self._client: redis.Redis | None = None
        self.stopped = False

    def __repr__(self) -> str:
        return f"<Server {HOST}:{self.port} dir={self.dir} module={self.spec.get('module')}>"

    # ---- clients
    @property
    def r(self) -> redis.Redis:
        if self._client is None:
            self._client = make_client(self.port)
        return self._client

    def client(self, **kwargs) -> redis.Redis:
        return make_client(self.port, **kwargs)

    def raw(self) -> "RawConnection":
        return RawConnection(self.port)

    # ---- introspection
    def info(self, section: str | None = None) -> dict:
        return self.r.info(section) if section else self.r.info()

    def digest(self) -> bytes:
        return self.r.execute_command("DEBUG", "DIGEST")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    def log_text(self) -> str:
        return self.embedded.log_text()

    def log_tail(self, n: int = 40) -> str:
        return self.embedded.log_tail(n)

    def crash_report(self) -> str | None:
        """A description of a crash (signal, crash report in the log), or None."""
        return self.embedded.crash_report(self.proc)

    def assert_alive(self) -> None:
        if not self.alive():
            raise AssertionError(
                f"{self} is not answering PING (exit code {self.proc.poll()}):\n{self.log_tail(60)}"
            )

    # ---- lifecycle
    def stop(self, check: bool = True) -> int:
        """SHUTDOWN NOSAVE NOW (kill when it hangs); assert no crash when ``check``."""
        if self.stopped:
            return self.proc.returncode
        died_before = self.proc.poll() is not None
        if not died_before:
            self.embedded.stop(now=True, timeout=STOP_TIMEOUT)  # SHUTDOWN NOSAVE NOW, else kill
            if self.embedded.killed and check:
                raise AssertionError(f"{self} did not shut down within {STOP_TIMEOUT}s")
        self.stopped = True
        _live_processes.discard(self.proc)
        if self._client is not None:
            self._client.close()
            self._client.connection_pool.disconnect()
        if check:
            crash = self.crash_report()
            if crash:
                raise AssertionError(crash)
            if died_before:
                raise AssertionError(
                    f"{self} exited on its own (code {self.proc.returncode}) before teardown:\n"
                    f"{self.log_tail(60)}"
                )
            if self.proc.returncode != 0:
                raise AssertionError(
                    f"{self} exited with code {self.proc.returncode}:\n{self.log_tail(60)}"
                )
        return self.proc.returncode


def _server_args(spec: dict) -> list[str]:
    """What the tests add to EmbeddedRedis's defaults (port, bind, dir, logfile, no save)."""
    argv = [
        "--appendonly", "yes" if spec.get("appendonly") else "no",
        "--enable-debug-command", "local",
        "--enable-module-command", "local",
        "--repl-diskless-sync-delay", "0",
        "--loglevel", "notice",
    ]
    if spec.get("replicaof"):
        host, rport = spec["replicaof"]
        argv += ["--replicaof", host, str(rport)]
    for item in spec.get("config", ()):
        name, *values = item
        argv += [f"--{name}", *[str(v) for v in values]]
    return argv


def _embedded(dir: Path, spec: dict) -> EmbeddedRedis:
    return EmbeddedRedis(
        module=spec.get("module") or None,
        module_args=[str(a) for a in spec.get("module_args", ())],
        args=_server_args(spec),
        directory=dir,
        binary=REDIS_SERVER,
        startup_timeout=START_TIMEOUT,
        die_with_parent=True,  # no orphans if pytest is killed
    )


def wait_ready(server: Server, timeout: float = START_TIMEOUT) -> bool:
    """Wait until PING answers (True) or the process exits (False)."""
    if server.embedded.wait_ready(timeout):
        return True
    if server.proc.poll() is not None:
        return False
    raise ServerStartError(f"{server} did not answer PING within {timeout}s:\n{server.log_tail()}")


def start_server(dir: Path, **spec) -> Server:
    """Start redis-server in ``dir`` (created if needed) and wait for PING.

    spec keys: module (path or None), module_args (list), appendonly (bool),
    config (list of tuples ``(name, value...)`` passed as ``--name value...``),
    replicaof ((host, port)).
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    embedded = _embedded(dir, spec)
    try:
        embedded.start()  # retries when the port was taken
    except RuntimeError as exc:
        raise ServerStartError(f"{exc}\nargv: {' '.join(embedded.argv)}") from None
    server = Server(embedded, spec)
    _live_processes.add(server.proc)
    return server


def start_expecting_failure(dir: Path, timeout: float = START_TIMEOUT, **spec) -> Server:
    """Start a server that must refuse to start; returns the exited Server (inspect log_text)."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    embedded = _embedded(dir, spec)
    embedded.launch()
    server = Server(embedded, spec)
    _live_processes.add(server.proc)
    if embedded.wait_ready(timeout):
        server.stop(check=False)
        raise AssertionError(f"server started although it should have refused: {server.argv}")
    if server.proc.poll() is None:  # neither ready nor exited
        server.proc.kill()
    server.proc.wait()
    server.stopped = True
    _live_processes.discard(server.proc)
    return server


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_link_up(replica: Server, timeout: float = 20.0) -> None:
    wait_for(lambda: replica.info("replication").get("master_link_status") == "up",
             timeout, what=f"master_link_status:up on {replica}")


def wait_replicated(primary: Server, replica: Server, timeout: float = 20.0) -> None:
    """Block until the replica has processed the primary's whole replication stream."""
    primary.r.execute_command("WAIT", 1, int(timeout * 1000))

    def synced():
        p = primary.info("replication")["master_repl_offset"]
        r = replica.info("replication")
        return r.get("master_link_status") == "up" and r.get("slave_repl_offset") == p
    wait_for(synced, timeout, what=f"replica {replica} to reach the primary's offset")


class ServerPool:
    """Starts servers for one test (or one test module) and stops them all at the end, failing
    when one of them crashed or exited on its own."""

    def __init__(self, tmp_factory):
        self._tmp = tmp_factory  # callable(name) -> Path
        self.servers: list[Server] = []

    def _dir(self, dir):
        return Path(dir) if dir is not None else self._tmp("redis")

    def start(self, *, module: bool = False, module_args=(), appendonly: bool = False,
              config=(), dir=None, replicaof=None) -> Server:
        spec = dict(
            module=str(module_path()) if module else None,
            module_args=list(module_args),
            appendonly=appendonly,
            config=[tuple(c) for c in config],
            replicaof=replicaof,
        )
        server = start_server(self._dir(dir), **spec)
        self.servers.append(server)
        return server

    def start_module(self, **kw) -> Server:
        return self.start(module=True, **kw)

    def start_failing(self, *, module: bool = False, module_args=(), config=(), dir=None) -> Server:
        spec = dict(
            module=str(module_path()) if module else None,
            module_args=list(module_args),
            config=[tuple(c) for c in config],
        )
        return start_expecting_failure(self._dir(dir), **spec)

    def restart(self, server: Server, **changes) -> Server:
        """Stop ``server`` (SHUTDOWN NOSAVE: call SAVE first for RDB) and start a new process on
        the same directory with the same arguments, except ``changes`` (module=, module_args=,
        appendonly=, config=, replicaof=)."""
        server.stop(check=True)
        spec = dict(server.spec)
        if "module" in changes:
            m = changes.pop("module")
            spec["module"] = (str(module_path()) if m is True else m) or None
        spec.update(changes)
        new = start_server(server.dir, **spec)
        self.servers.append(new)
        return new

    def stock(self, dir, *, appendonly: bool = False, config=()) -> Server:
        """A stock redis-server (no module) on an existing directory."""
        return self.start(module=False, appendonly=appendonly, config=config, dir=dir)

    def replica(self, primary: Server, *, module: bool = True, module_args=(), config=()) -> Server:
        config = [("repl-timeout", 3600), *config]
        server = self.start(module=module, module_args=module_args, config=config,
                            replicaof=(HOST, primary.port))
        wait_link_up(server)
        wait_replicated(primary, server)
        return server

    def stop_all(self) -> list[str]:
        problems = []
        # stop replicas first so primaries are not waiting on them
        for server in reversed(self.servers):
            try:
                server.stop(check=True)
            except AssertionError as e:
                problems.append(str(e))
        self.servers.clear()
        return problems


# --------------------------------------------------------------------------- RESP helpers


def parse_resp_commands(data: bytes) -> list[list[bytes]]:
    """Parse a stream of RESP arrays of bulk strings (AOF / replication stream)."""
    out = []
    i, n = 0, len(data)
    while i < n:
        if data[i:i + 1] == b"#":  # AOF timestamp annotation
            i = data.index(b"\r\n", i) + 2
            continue
        if data[i:i + 1] != b"*":
            raise ValueError(f"unexpected byte {data[i:i + 1]!r} at offset {i} in AOF")
        j = data.index(b"\r\n", i)
        count = int(data[i + 1:j])
        i = j + 2
        args = []
        for _ in range(count):
            if data[i:i + 1] != b"$":
                raise ValueError(f"expected bulk string at offset {i}")
            j = data.index(b"\r\n", i)
            length = int(data[i + 1:j])
            i = j + 2
            args.append(data[i:i + length])
            i += length + 2
        out.append(args)
    return out


def aof_manifest(dir: Path) -> list[dict]:
    """Entries of appendonlydir/*.manifest: [{'file':..., 'seq':..., 'type': 'b'|'h'|'i'}]."""
    adir = Path(dir) / "appendonlydir"
    manifests = list(adir.glob("*.manifest"))
    if not manifests:
        return []
    entries = []
    for line in manifests[0].read_text().splitlines():
        toks = line.split()
        entries.append({toks[k]: toks[k + 1] for k in range(0, len(toks) - 1, 2)})
    return entries


def aof_files(dir: Path, kind: str) -> list[Path]:
    adir = Path(dir) / "appendonlydir"
    return [adir / e["file"] for e in aof_manifest(dir) if e.get("type") == kind]


class AofTail:
    """Remembers the size of the incremental AOF files, then returns the commands appended after
    that point. Use with ``appendfsync always`` so a reply means the AOF has been written."""

    def __init__(self, server: Server):
        self.server = server
        self.mark()

    def _sizes(self) -> dict[Path, int]:
        return {p: (p.stat().st_size if p.exists() else 0) for p in aof_files(self.server.dir, "i")}

    def mark(self) -> None:
        self.sizes = self._sizes()

    def new_bytes(self) -> bytes:
        data = b""
        for path in aof_files(self.server.dir, "i"):
            start = self.sizes.get(path, 0)
            with open(path, "rb") as f:
                f.seek(start)
                data += f.read()
        return data

    def commands(self, skip_select: bool = True) -> list[list[bytes]]:
        cmds = parse_resp_commands(self.new_bytes())
        if skip_select:
            cmds = [c for c in cmds if c[0].upper() != b"SELECT"]
        return cmds


class RawConnection:
    """Minimal blocking RESP2 client: replies come back unprocessed (errors as RawError)."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, *args) -> None:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, int):
                a = str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(parts))

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by server")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return SimpleString(rest)
        if kind == b"-":
            return RawError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError(f"bad RESP line {line!r}")

    def call(self, *args):
        self.send(*args)
        return self.read()


class SimpleString(bytes):
    pass


class RawError(str):
    """An error reply read by RawConnection (the full text, code included)."""

    @property
    def code(self) -> str:
        return self.split(" ", 1)[0]


# --------------------------------------------------------------------------- MONITOR

_REPR_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b", "\\": b"\\", '"': b'"'}


def _unrepr_args(text: bytes) -> list[bytes]:
    """Parse the space-separated sdscatrepr()-quoted arguments of a MONITOR line."""
    args = []
    i, n = 0, len(text)
    while i < n:
        if text[i:i + 1] == b" ":
            i += 1
            continue
        if text[i:i + 1] != b'"':
            raise ValueError(f"bad MONITOR argument at {i}: {text!r}")
        i += 1
        cur = bytearray()
        while True:
            c = text[i:i + 1]
            if c == b'"':
                i += 1
                break
            if c == b"\\":
                nxt = chr(text[i + 1])
                if nxt == "x":
                    cur += bytes([int(text[i + 2:i + 4], 16)])
                    i += 4
                    continue
                cur += _REPR_ESCAPES[nxt]
                i += 2
                continue
            cur += c
            i += 1
        args.append(bytes(cur))
    return args


_MONITOR_LINE = re.compile(rb"^\+?(\d+\.\d+) \[(\d+) ([^\]]*)\] (.*)$", re.S)


class Monitor:
    """A MONITOR connection; ``commands_until(marker)`` returns [(source, args)]."""

    def __init__(self, server: Server, timeout: float = 20.0):
        self.conn = RawConnection(server.port, timeout=timeout)
        reply = self.conn.call("MONITOR")
        if reply != b"OK":
            raise AssertionError(f"MONITOR replied {reply!r}")

    def close(self) -> None:
        self.conn.close()

    def next(self) -> tuple[bytes, list[bytes]]:
        line = self.conn._line()
        m = _MONITOR_LINE.match(line)
        if not m:
            raise ValueError(f"unexpected MONITOR line {line!r}")
        return m.group(3), _unrepr_args(m.group(4))

    def commands_until(self, predicate, timeout: float = 20.0) -> list[tuple[bytes, list[bytes]]]:
        """Read commands until ``predicate(args)`` is true; that command is not returned.
        Command names are upper-cased."""
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            source, args = self.next()
            args = [args[0].upper(), *args[1:]] if args else args
            if predicate(args):
                return out
            out.append((source, args))
        raise AssertionError("marker never seen on MONITOR stream")
