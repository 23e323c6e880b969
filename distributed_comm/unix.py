"""``unix://`` comms: the TCP comm, framing and handshake over a unix socket.

Same-host peers skip the IP stack (no checksums, no loopback routing, no
Nagle or keepalive to tune), which is where the speed comes from. Addresses
are ``unix:///absolute/path``; ``unix://`` alone listens on a fresh socket in a
private temporary directory.

The listening socket is owner-only (0600, in a 0700 directory when we make
it) and removed on ``stop()``. A socket file left by a dead process is
replaced; one that a live listener still answers on is refused.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import socket
import stat
import sys
import tempfile
from typing import Any, ClassVar

from tornado import netutil
from tornado.iostream import IOStream

from distributed_comm import config
from distributed_comm.registry import Backend, backends
from distributed_comm.tcp import TCPConnector, TCPListener, _name_address
from distributed_comm.utils import get_ip

__all__ = ["UnixBackend", "UnixConnector", "UnixListener", "check_path"]

#: ``sun_path`` holds 108 bytes on Linux and 104 on the BSDs/macOS, NUL included.
MAX_PATH_BYTES = 107 if sys.platform.startswith("linux") else 103

_SOCKET_NAME = "comm.sock"


def check_path(path: str) -> str:
    """*path* made absolute (so peers in other directories reach it), or ``ValueError``."""
    if not path:
        raise ValueError("a unix socket address needs a path, like unix:///tmp/worker.sock")
    path = os.path.abspath(path)
    size = len(os.fsencode(path))
    if size > MAX_PATH_BYTES:
        raise ValueError(
            f"unix socket path {path!r} is {size} bytes; the limit is {MAX_PATH_BYTES}"
        )
    return path


def _is_live(path: str) -> bool:
    """Whether a listener answers on the socket file *path* (a stale one refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a busy listener's full backlog must not block us
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except BlockingIOError:
            pass  # backlog full: alive, just busy
    return True


class UnixConnector(TCPConnector):
    """Opens :class:`~distributed_comm.tcp.TCP` comms on unix sockets."""

    prefix: ClassVar[str] = "unix://"

    async def _open_stream(self, address: str, connection_args: dict) -> IOStream:
        path = check_path(address)
        stream = IOStream(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        try:
            return await stream.connect(path)
        except BaseException:  # cancelled by connect()'s timeout: don't leak the socket
            stream.close()
            raise


class UnixListener(TCPListener):
    """Accepts :class:`~distributed_comm.tcp.TCP` comms on a unix socket file."""

    prefix: ClassVar[str] = "unix://"

    def _set_location(self, address: str, default_port: int) -> None:
        self.path = check_path(address) if address else None
        self._private_dir: str | None = None
        self._bound_file: tuple[int, int] | None = None

    def _claim_path(self) -> str:
        """The path to bind: a fresh private one, or the given one if no live listener has it."""
        if self.path is None:
            self._private_dir = tempfile.mkdtemp(prefix="distributed_comm-")  # mode 0700
            return check_path(os.path.join(self._private_dir, _SOCKET_NAME))
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return self.path
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a unix socket", self.path)
        if _is_live(self.path):
            raise OSError(errno.EADDRINUSE, "a live listener already uses this socket", self.path)
        return self.path  # stale: bind_unix_socket replaces it

    async def start(self) -> None:
        path = self._claim_path()
        backlog = int(config.get("distributed.comm.socket-backlog"))
        try:
            sock = netutil.bind_unix_socket(path, mode=0o600, backlog=backlog)
        except OSError as exc:
            _name_address(exc, path)
            raise
        info = os.stat(path)
        self._bound_file = (info.st_dev, info.st_ino)
        server = self._make_server()
        server.add_socket(sock)
        self.tcp_server = server
        self.bound_address = (path,)

    def stop(self) -> None:
        """Also remove the socket file (unless someone replaced it) and a private directory."""
        super().stop()
        if self.bound_address is not None:
            self._remove_socket_file(self.bound_address[0])
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def _remove_socket_file(self, path: str) -> None:
        bound, self._bound_file = self._bound_file, None
        try:
            info = os.stat(path)
            if (info.st_dev, info.st_ino) == bound:
                os.unlink(path)
        except FileNotFoundError:
            pass

    def get_host_port(self) -> tuple[str, int]:
        raise ValueError(f"{self.listen_address} is a unix socket: it has no host and port")

    @property
    def listen_address(self) -> str:
        if self.bound_address is None:
            raise ValueError(f"invalid operation on non-started {type(self).__name__}")
        return self.prefix + self.bound_address[0]

    @property
    def contact_address(self) -> str:
        return self.listen_address


@functools.cache
def _local_host() -> str:
    """This machine's IP, as tcp and inproc addresses name it (fixed per process)."""
    try:
        return get_ip()
    except OSError:
        return "127.0.0.1"


class UnixBackend(Backend):
    """``unix://`` locations are socket file paths on this machine."""

    def get_connector(self) -> UnixConnector:
        return UnixConnector()

    def get_listener(
        self, loc: str, handle_comm: Any, deserialize: bool, **connection_args: Any
    ) -> UnixListener:
        return UnixListener(loc, handle_comm, deserialize, **connection_args)

    def get_address_host(self, loc: str) -> str:
        return _local_host()

    def resolve_address(self, loc: str) -> str:
        return loc

    def get_local_address_for(self, loc: str) -> str:
        return ""  # unix:// listens in a fresh private directory


backends["unix"] = UnixBackend()
