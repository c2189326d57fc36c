"""A fault-injecting TCP proxy between a client and a real redis-server (loopback only).

It forwards commands one at a time: it reads one whole RESP command from the client, sends it to
the server, reads the server's whole reply, and forwards it. A *fault* can be armed for commands
that match a predicate: the command is executed by the server as usual, then the proxy runs an
optional hook (e.g. another writer's write, sent straight to the server), drops the reply and
resets the client's connection. To the client this is a write whose reply was lost after it
landed: exactly what makes a naive retry apply a write twice.

    with FaultProxy(server.port) as proxy:
        client = redis.Redis(port=proxy.port)
        proxy.arm(lambda args: args[0].upper() == b"CTX.CAS", times=1, hook=other_writer)
        ...
        assert proxy.faults == 1
"""

from __future__ import annotations

import socket
import threading
from typing import Callable, Optional

__all__ = ["FaultProxy"]


class _Reader:
    """Buffered reads of RESP frames from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out, self.buf = self.buf[: i + 2], self.buf[i + 2 :]
                return out
            self._fill()

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> tuple[bytes, Optional[list[bytes]]]:
        """One RESP2/RESP3 value: (its raw bytes, its items when it is an array of bulks)."""
        head = self.line()
        kind, rest = head[:1], head[1:-2]
        if kind in (b"$", b"=", b"!"):  # bulk string, verbatim, bulk error
            n = int(rest)
            if n < 0:
                return head, None
            return head + self.exact(n + 2), None
        if kind in (b"*", b"~", b">", b"%", b"|"):  # aggregates
            n = int(rest)
            if n < 0:
                return head, None
            count = 2 * n if kind in (b"%", b"|") else n
            raw, items = head, []
            for _ in range(count):
                sub, _ = self.frame()
                raw += sub
                if sub[:1] == b"$":  # keep bulk items (the command's arguments)
                    items.append(sub[sub.index(b"\r\n") + 2 : -2])
            return raw, items
        return head, None  # + - : _ , # (


class FaultProxy:
    """Listens on a free 127.0.0.1 port and forwards to ``127.0.0.1:target_port``."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._rule: Optional[Callable[[list[bytes]], bool]] = None
        self._times = 0
        self._hook: Optional[Callable[[list[bytes]], None]] = None
        self.faults = 0  # replies dropped so far
        self.commands = 0  # commands forwarded so far
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    # -- control ---------------------------------------------------------------------------
    def arm(
        self,
        match: Callable[[list[bytes]], bool],
        times: int = 1,
        hook: Optional[Callable[[list[bytes]], None]] = None,
    ) -> None:
        """Drop the reply of the next ``times`` commands ``match`` accepts (after the server ran
        them), running ``hook(args)`` before each drop, and reset the client connection."""
        with self._lock:
            self._rule, self._times, self._hook = match, times, hook

    def disarm(self) -> None:
        with self._lock:
            self._rule, self._times, self._hook = None, 0, None

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            t.start()

    def _take_fault(self, args: list[bytes]) -> Optional[Callable[[list[bytes]], None]]:
        """(True, hook) when this command's reply is to be dropped."""
        with self._lock:
            if self._rule is None or self._times <= 0 or not self._rule(args):
                return None
            self._times -= 1
            self.faults += 1
            return self._hook or (lambda a: None)

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(self.target)
        with self._lock:
            self._socks += [client, server]
        creader, sreader = _Reader(client), _Reader(server)
        try:
            while not self._closed:
                raw, args = creader.frame()
                server.sendall(raw)
                reply, _ = sreader.frame()
                with self._lock:
                    self.commands += 1
                fault = self._take_fault(args or [])
                if fault is not None:
                    fault(args or [])
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
                    return
                client.sendall(reply)
        except (EOFError, OSError, ValueError):
            return
        finally:
            for s in (client, server):
                try:
                    s.close()
                except OSError:
                    pass
