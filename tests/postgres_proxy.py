"""A TCP proxy the tests control, to cut a client off from PostgreSQL without touching it.

``freeze()`` stops forwarding in both directions but keeps every socket open: the client's
kernel still gets its packets acknowledged (by this host's), exactly like a proxy or load
balancer that lost its way to the server. ``drop()`` closes every forwarded connection, like a
network reset. New connections are accepted throughout (and forwarded unless frozen).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.frozen = threading.Event()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = False
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def url(self, base_path: str = "/postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}{base_path}"

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def freeze(self) -> None:
        self.frozen.set()
        self._wake()

    def thaw(self) -> None:
        self.frozen.clear()
        self._wake()

    def drop(self) -> None:
        with self._lock:
            pairs = list(self._pairs.items())
            self._pairs.clear()
        for a, b in pairs:
            for sock in (a, b):
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._wake()

    def close(self) -> None:
        self._closed = True
        self.drop()
        self._wake()
        self._thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._pairs[client] = server
            self._pairs[server] = client
        if not self.frozen.is_set():
            self._selector.register(client, selectors.EVENT_READ)
            self._selector.register(server, selectors.EVENT_READ)

    def _sync_registrations(self) -> None:
        """Frozen: watch nothing but the listener. Thawed: watch every forwarded socket."""
        with self._lock:
            sockets = list(self._pairs)
        for sock in sockets:
            registered = sock in self._selector.get_map()
            if self.frozen.is_set() and registered:
                self._selector.unregister(sock)
            elif not self.frozen.is_set() and not registered and sock.fileno() >= 0:
                self._selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        while not self._closed:
            self._sync_registrations()
            for key, _ in self._selector.select(timeout=None):
                sock = key.fileobj
                if sock is self._wake_r:
                    self._wake_r.recv(4096)
                elif sock is self.listener:
                    self._accept()
                else:
                    assert isinstance(sock, socket.socket)
                    self._forward(sock)

    def _forward(self, sock: socket.socket) -> None:
        with self._lock:
            peer = self._pairs.get(sock)
        if peer is None or self.frozen.is_set():
            return
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        with self._lock:
            self._pairs.pop(sock, None)
            self._pairs.pop(peer, None)
        for s in (sock, peer):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            s.close()
