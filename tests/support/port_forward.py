"""Port forwarding, as a home router does it, for tests: a port on 127.0.0.1 whose every
connection is forwarded to another port there (plain threads and sockets)."""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class PortForward:
    """Listens on 127.0.0.1:`port` (a free one by default) and forwards each connection to
    127.0.0.1:`target`; `connections` counts those it forwarded. Everything closes on exit."""

    def __init__(self, target: int, port: int = 0) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.1)  # so that the accepting thread sees `closing`
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def __enter__(self) -> PortForward:
        self._threads[0].start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        for open_socket in [self.listener, *self._sockets]:
            open_socket.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except TimeoutError:
                continue
            except OSError:
                return
            server.settimeout(None)
            self.connections += 1
            self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                thread = threading.Thread(target=_pump, args=(source, sink), daemon=True)
                self._threads.append(thread)
                thread.start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:  # either end closed
        pass
