"""Host and socket helpers shared by the IP transports and the address functions."""

from __future__ import annotations

import logging
import socket
from typing import Any

import psutil

logger = logging.getLogger(__name__)

# Well-known public resolvers: only used to pick the outgoing interface of a UDP
# socket (``connect`` on UDP sends nothing), never contacted.
_PUBLIC_IPV4 = "8.8.8.8"
_PUBLIC_IPV6 = "2001:4860:4860::8888"


def _hostname_ip(family: int) -> str:
    try:
        return socket.getaddrinfo(socket.gethostname(), 80, family, socket.SOCK_DGRAM)[0][4][0]
    except socket.gaierror as exc:
        logger.warning("No usable IP address found (%s); using 127.0.0.1", exc)
        return "127.0.0.1"


def get_ip(host: str = _PUBLIC_IPV4, port: int = 80) -> str:
    """The local IP address through which *host* would be reached.

    A UDP ``connect`` only asks the kernel for a route; no packet is sent.
    Without a route, fall back to the address of this machine's host name.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((host, port))
        except OSError as exc:
            logger.debug("no route to %r (%s); using the host name's address", host, exc)
            return _hostname_ip(family)
        ip = sock.getsockname()[0]
    return _hostname_ip(family) if ip == "0.0.0.0" else ip


def ensure_ip(hostname: str) -> str:
    """Resolve *hostname* to an IP address, preferring IPv4 ("" means localhost)."""
    hostname = hostname or "localhost"
    error: Exception | None = None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.getaddrinfo(hostname, 1234, family, socket.SOCK_STREAM)[0][4][0]
        except socket.gaierror as exc:
            error = exc
    assert error is not None
    raise error


def ensure_concrete_host(host: str, default_host: str | None = None) -> str:
    """Replace a wildcard listening host (``0.0.0.0``, ``::``, ``""``) by a real one."""
    if host in ("0.0.0.0", ""):
        return default_host or get_ip()
    if host == "::":
        return default_host or get_ip(_PUBLIC_IPV6)
    return host


def get_ip_interface(ifname: str) -> str:
    """The IPv4 address of network interface *ifname*."""
    interfaces = psutil.net_if_addrs()
    if ifname not in interfaces:
        raise ValueError(
            f"{ifname!r} is not a valid network interface. "
            f"Valid network interfaces are: {list(interfaces)}"
        )
    for info in interfaces[ifname]:
        if info.family == socket.AF_INET:
            return info.address
    raise ValueError(f"interface {ifname!r} doesn't have an IPv4 address")


def get_tcp_server_addresses(tcp_server: Any) -> list[tuple]:
    """Every bound (host, port, ...) of a started Tornado ``TCPServer``, IPv4 first."""
    sockets = list(tcp_server._sockets.values())
    if not sockets:
        raise RuntimeError(f"TCP Server {tcp_server!r} not started yet?")
    for family in (socket.AF_INET, socket.AF_INET6):
        found = [sock.getsockname() for sock in sockets if sock.family == family]
        if found:
            return found
    raise RuntimeError(f"No Internet socket found on TCPServer {tcp_server!r}")


def get_tcp_server_address(tcp_server: Any) -> tuple:
    """The first bound address of a started Tornado ``TCPServer``."""
    return get_tcp_server_addresses(tcp_server)[0]
