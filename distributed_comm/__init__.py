"""distributed_comm: message-oriented comms for Python distributed systems.

A drop-in for ``distributed.comm``: ``import distributed_comm as comm``.
"""

from __future__ import annotations

from distributed_comm import inproc as _inproc  # noqa: F401  (registers inproc://)
from distributed_comm import tcp as _tcp  # noqa: F401  (registers tcp:// and tls://)
from distributed_comm import unix as _unix  # noqa: F401  (registers unix://)
from distributed_comm import ws as _ws  # noqa: F401  (registers ws:// and wss://)
from distributed_comm.addressing import (
    address_from_user_args,
    addresses_from_user_args,
    get_address_host,
    get_address_host_port,
    get_local_address_for,
    normalize_address,
    parse_address,
    parse_host_port,
    resolve_address,
    unparse_address,
    unparse_host_port,
    uri_from_host_port,
)
from distributed_comm.core import (
    Comm,
    CommClosedError,
    Connector,
    FatalCommClosedError,
    Listener,
    connect,
    listen,
)
from distributed_comm.registry import Backend, backends, get_backend
from distributed_comm.utils import get_tcp_server_address, get_tcp_server_addresses

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "Comm",
    "CommClosedError",
    "Connector",
    "FatalCommClosedError",
    "Listener",
    "address_from_user_args",
    "addresses_from_user_args",
    "backends",
    "connect",
    "get_address_host",
    "get_address_host_port",
    "get_backend",
    "get_local_address_for",
    "get_tcp_server_address",
    "get_tcp_server_addresses",
    "listen",
    "normalize_address",
    "parse_address",
    "parse_host_port",
    "resolve_address",
    "unparse_address",
    "unparse_host_port",
    "uri_from_host_port",
]
