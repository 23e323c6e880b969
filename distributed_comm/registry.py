"""Backends by URI scheme; third-party ones are found through entry points.

A package adds a scheme by publishing a :class:`Backend` class in the entry
point group ``distributed.comm.backends`` (the same group distributed reads).
"""

from __future__ import annotations

import importlib.metadata
from abc import ABC, abstractmethod
from typing import Any

ENTRY_POINT_GROUP = "distributed.comm.backends"


class Backend(ABC):
    """A transport, chosen by URI scheme (``tcp``, ``tls``, ``inproc``...).

    *loc* arguments are addresses with the scheme removed.
    """

    @abstractmethod
    def get_connector(self) -> Any:
        """A :class:`~distributed_comm.core.Connector` for this scheme."""

    @abstractmethod
    def get_listener(
        self, loc: str, handle_comm: Any, deserialize: bool, **connection_args: Any
    ) -> Any:
        """A :class:`~distributed_comm.core.Listener` for *loc*, not yet started."""

    @abstractmethod
    def get_address_host(self, loc: str) -> str:
        """The host (usually an IP) that *loc* lives on."""

    @abstractmethod
    def resolve_address(self, loc: str) -> str:
        """*loc* with symbolic names replaced by concrete ones (may be unchanged)."""

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        """``(host, port)`` of *loc*; only IP transports have one."""
        raise NotImplementedError

    @abstractmethod
    def get_local_address_for(self, loc: str) -> str:
        """A local address from which *loc* can be reached."""


backends: dict[str, Backend] = {}


def get_backend(scheme: str) -> Backend:
    """The backend for *scheme*: registered ones first, then entry points."""
    backend = backends.get(scheme)
    if backend is not None:
        return backend
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=scheme):
        backend = backends[scheme] = entry_point.load()()
        return backend
    raise ValueError(f"unknown address scheme {scheme!r} (known schemes: {sorted(backends)})")
