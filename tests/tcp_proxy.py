"""A TCP forwarder between inturn and a server, which a test can cut or black-hole.

``blackhole()`` makes every byte in either direction vanish, on open connections and on new
ones alike, as a network that silently drops packets would: clients see no error, only
silence, and must notice it through their own timeouts; a side that closes its connection is
not seen closing by the other. ``heal()`` ends it: the connections that lost bytes in it are
closed (what they carried is broken), new ones are forwarded again. ``cut()`` closes every
forwarded connection, as a network reset or a server killing its clients would; new
connections still work. ``wait_sent(marker, count)`` lets a test wait until the client has
sent something (a lease renewal, say) instead of guessing how long that takes. ``hold()``
keeps back what the clients of the connections open at that moment send (a statement that is
late to reach the server), until ``let_go()``; ``wait_held(count)`` waits until that many
chunks are held. ``cut_after_reply(marker)`` lets the next command containing ``marker``
reach the server, then closes that connection instead of passing on the server's answer (a
command that ran, whose answer was lost); ``replies_dropped`` counts those answers.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.blackholed = threading.Event()
        self.changed = threading.Condition()
        self.sent: list[bytes] = []  # every chunk forwarded from a client to the server
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.opened: list[socket.socket] = []  # closed only by ``close``
        self.held: set[socket.socket] = set()  # clients whose chunks wait for ``let_go``
        self.held_back = 0  # chunks that waited
        self.doom: bytes | None = None  # the next client chunk with this loses its answer
        self.doomed: set[socket.socket] = set()  # servers' sides whose next answer is dropped
        self.replies_dropped = 0
        threading.Thread(target=self._accept, daemon=True, name="tcp-proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.changed:
                self.pairs.append((client, upstream))
                self.opened += [client, upstream]
            for source, sink, outgoing in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, outgoing), daemon=True, name="tcp-pump"
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, outgoing: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self.blackholed.is_set():
                    continue  # dropped, silently
                if not outgoing and self._drops_answer(source):
                    break  # the answer goes nowhere: both sides are closed below
                if outgoing:
                    with self.changed:
                        if self.doom is not None and self.doom in data:
                            self.doom = None
                            self.doomed.add(sink)  # before the server can answer
                        if source in self.held:
                            self.held_back += 1
                            self.changed.notify_all()
                            self.changed.wait_for(lambda: source not in self.held)
                sink.sendall(data)
                if outgoing:
                    with self.changed:
                        self.sent.append(data)
                        self.changed.notify_all()
        except OSError:
            pass
        if self.blackholed.is_set():
            return  # not even the close gets through a black hole; ``cut`` ends both sides
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _drops_answer(self, upstream: socket.socket) -> bool:
        """Whether this answer from the server is the one ``cut_after_reply`` loses."""
        with self.changed:
            if upstream not in self.doomed:
                return False
            self.doomed.discard(upstream)
            self.replies_dropped += 1
            self.changed.notify_all()
            return True

    def cut_after_reply(self, marker: bytes) -> None:
        with self.changed:
            self.doom = marker

    def upstream_addresses(self) -> list[str]:
        """``host:port`` of each connection to the server, as the server sees its clients."""
        with self.changed:
            pairs = list(self.pairs)
        found = []
        for _, upstream in pairs:
            with contextlib.suppress(OSError):
                host, port = upstream.getsockname()[:2]
                found.append(f"{host}:{port}")
        return found

    def hold(self) -> None:
        with self.changed:
            self.held = {client for client, _ in self.pairs}

    def let_go(self) -> None:
        with self.changed:
            self.held = set()
            self.changed.notify_all()

    def wait_held(self, count: int, timeout: float = 60.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.held_back >= count, timeout)

    def blackhole(self) -> None:
        self.blackholed.set()

    def heal(self) -> None:
        self.cut()
        self.blackholed.clear()

    def cut(self) -> None:
        with self.changed:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def wait_sent(self, marker: bytes, count: int, timeout: float = 60.0) -> bool:
        """Wait until ``count`` more client chunks containing ``marker`` reached the server."""

        def seen() -> int:
            return sum(marker in chunk.upper() for chunk in self.sent)

        with self.changed:
            target = seen() + count
            return self.changed.wait_for(lambda: seen() >= target, timeout)

    def close(self) -> None:
        self.let_go()
        self.blackholed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept
        self.listener.close()
        self.cut()
        for sock in self.opened:
            sock.close()
