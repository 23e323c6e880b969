"""TCP and TLS transports on Tornado ``TCPServer`` / ``TCPClient`` / ``IOStream``."""

from __future__ import annotations

from typing import Any

from distributed_comm.addressing import parse_host_port, unparse_host_port
from distributed_comm.registry import Backend, backends
from distributed_comm.utils import ensure_ip, get_ip


class BaseTCPBackend(Backend):
    """Address handling shared by ``tcp`` and ``tls``: locations are ``host:port``."""

    _connector_class: type
    _listener_class: type

    def get_connector(self) -> Any:
        return self._connector_class()

    def get_listener(
        self, loc: str, handle_comm: Any, deserialize: bool, **connection_args: Any
    ) -> Any:
        return self._listener_class(loc, handle_comm, deserialize, **connection_args)

    def get_address_host(self, loc: str) -> str:
        return parse_host_port(loc)[0]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        return parse_host_port(loc)

    def resolve_address(self, loc: str) -> str:
        host, port = parse_host_port(loc)
        return unparse_host_port(ensure_ip(host), port)

    def get_local_address_for(self, loc: str) -> str:
        host, _ = parse_host_port(loc)
        return unparse_host_port(get_ip(ensure_ip(host)), None)


class TCPBackend(BaseTCPBackend):
    pass


class TLSBackend(BaseTCPBackend):
    pass


backends["tcp"] = TCPBackend()
backends["tls"] = TLSBackend()
