"""Address strings: ``scheme://location``, where the location's form is the
transport's business (``host:port`` for tcp/tls, ``[::1]:port`` for IPv6).

Results and exception types match ``distributed.comm.addressing``; error
messages always quote the offending input.
"""

from __future__ import annotations

import itertools
from typing import Any

from distributed_comm import config, registry
from distributed_comm.utils import get_ip_interface

_IPV6_HINT = "maybe: ipv6 needs brackets like [::1]"


def parse_address(addr: str, strict: bool = False) -> tuple[str, str]:
    """Split *addr* into ``(scheme, location)``; no scheme means the default one.

    >>> parse_address("tcp://127.0.0.1")
    ('tcp', '127.0.0.1')
    """
    if not isinstance(addr, str):
        raise TypeError(f"expected str, got {type(addr).__name__!r}")
    scheme, sep, loc = addr.rpartition("://")
    if not sep:
        if strict:
            raise ValueError(
                f"Invalid url scheme. Must include protocol like tcp://localhost:8000. Got {addr}"
            )
        scheme = config.get("distributed.comm.default-scheme")
    return scheme, loc


def unparse_address(scheme: str, loc: str) -> str:
    """Inverse of :func:`parse_address`."""
    return f"{scheme}://{loc}"


def normalize_address(addr: str) -> str:
    """*addr* with its scheme made explicit: ``"[::1]"`` -> ``"tcp://[::1]"``."""
    return unparse_address(*parse_address(addr))


def _port_number(port: Any, address: Any) -> int:
    try:
        return int(port)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"invalid port {port!r} in address {address!r}") from None


def parse_host_port(
    address: str | tuple[str, int], default_port: str | int | None = None
) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[v6]:port"`` for IPv6) into ``(host, port)``.

    A missing port takes *default_port*; without one that is a ``ValueError``.
    A tuple is returned as it is.
    """
    if isinstance(address, tuple):
        return address
    if not isinstance(address, str):
        raise TypeError(f"expected an address string like 'host:port', got {address!r}")

    def missing_port() -> str | int:
        if default_port is None:
            raise ValueError(f"missing port number in address {address!r}")
        return default_port

    def malformed() -> ValueError:
        return ValueError(f"invalid address {address!r}; {_IPV6_HINT}")

    location = address
    if "://" in location:
        parts = location.split("://")
        if len(parts) != 2:
            raise ValueError(f"invalid address {address!r}: more than one '://'")
        location = parts[1]
    if location.startswith("["):
        host, closed, tail = location[1:].partition("]")
        if not closed:
            raise malformed()
        if not tail:
            port = missing_port()
        elif tail.startswith(":"):
            port = tail[1:]
        else:
            raise malformed()
    else:
        host, sep, port = location.rpartition(":")
        if not sep:
            host, port = port, missing_port()
        elif ":" in host:
            raise malformed()
    return host, _port_number(port, address)


def unparse_host_port(host: str, port: int | None = None) -> str:
    """Inverse of :func:`parse_host_port`; bare IPv6 hosts get brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def get_address_host_port(addr: str, strict: bool = False) -> tuple[str, int]:
    """``(host, port)`` of *addr*; ``ValueError`` for transports without ports."""
    scheme, loc = parse_address(addr, strict=strict)
    try:
        return registry.get_backend(scheme).get_address_host_port(loc)
    except NotImplementedError:
        raise ValueError(f"don't know how to extract host and port for address {addr!r}") from None


def get_address_host(addr: str) -> str:
    """The host (usually an IP) that *addr* lives on; works for every transport."""
    scheme, loc = parse_address(addr)
    return registry.get_backend(scheme).get_address_host(loc)


def get_local_address_for(addr: str) -> str:
    """A local address, of the same scheme, from which *addr* is reachable."""
    scheme, loc = parse_address(addr)
    return unparse_address(scheme, registry.get_backend(scheme).get_local_address_for(loc))


def resolve_address(addr: str) -> str:
    """*addr* with host names resolved: ``tcp://localhost:8786`` -> ``tcp://127.0.0.1:8786``."""
    scheme, loc = parse_address(addr)
    return unparse_address(scheme, registry.get_backend(scheme).resolve_address(loc))


def uri_from_host_port(host_arg: str | None, port_arg: str | None, default_port: int) -> str:
    """A URI from command-line style ``--host`` and ``--port`` values."""
    scheme, loc = parse_address(host_arg or "")
    host, port = parse_host_port(loc, port_arg if port_arg is not None else default_port)
    if port != 0 and port_arg and port != int(port_arg):
        raise ValueError(f"port number given twice in options: host {host_arg} and port {port_arg}")
    return unparse_address(scheme, unparse_host_port(host, port))


def address_from_user_args(
    host=None,
    port=None,
    interface=None,
    protocol=None,
    peer=None,
    security=None,
    default_port=0,
) -> str:
    """The address to listen on, from the usual host/port/interface/protocol options."""
    if security and security.require_encryption and not protocol:
        protocol = "tls"
    if protocol and protocol.endswith("://"):
        protocol = protocol[: -len("://")]
    if interface:
        if host:
            raise ValueError("Can not specify both interface and host", interface, host)
        host = get_ip_interface(interface)
    if protocol and host and "://" not in host:
        host = f"{protocol}://{host}"
    addr = uri_from_host_port(host, port, default_port) if host or port else ""
    if protocol:
        addr = f"{protocol}://{addr.split('://')[-1]}"
    return addr


def addresses_from_user_args(
    host=None,
    port=None,
    interface=None,
    protocol=None,
    peer=None,
    security=None,
    default_port=0,
) -> list:
    """Like :func:`address_from_user_args`, mapping over any of host, port,
    interface or protocol given as a list."""
    per_address = (host, port, interface, protocol)
    if not any(isinstance(arg, (tuple, list)) for arg in per_address):
        return [
            address_from_user_args(host, port, interface, protocol, peer, security, default_port)
        ]
    columns = [
        arg if isinstance(arg, (tuple, list)) else itertools.repeat(arg) for arg in per_address
    ]
    return [
        address_from_user_args(h, p, i, pr, peer, security, default_port)
        for h, p, i, pr in zip(*columns, strict=False)
    ]
