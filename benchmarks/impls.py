"""The implementations compared, each able to serve and to be a client.

``ours`` and ``distributed`` are comm modules run through the same workload
code (:mod:`benchmarks.workloads`); ``raw`` and ``zmq`` are byte-level
baselines.  An implementation that is not installed, or has no backend for a
transport, is skipped with a reason.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
from typing import Any, Protocol

from benchmarks import tlscerts, workloads
from benchmarks.plan import IN_PROCESS, SECURE
from distributed_comm.addressing import (
    parse_address,
    parse_host_port,
    unparse_address,
    unparse_host_port,
)


class Implementation(Protocol):
    name: str  # short key used in JSON
    label: str  # column header
    is_comm_module: bool  # False for the byte-level baselines

    def missing(self) -> str | None:
        """Why this implementation cannot run here at all (``None``: it can)."""

    def supports(self, transport: str) -> bool: ...

    def serve(
        self, transport: str, address: str, tls: tlscerts.TLSFiles, loop: asyncio.AbstractEventLoop
    ) -> str:
        """Start a server (returns the address to connect to)."""

    def client(
        self, transport: str, address: str, tls: tlscerts.TLSFiles, loop: asyncio.AbstractEventLoop
    ) -> workloads.Client: ...

    def stop_servers(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop what :meth:`serve` started in this process."""


def run_on(loop: asyncio.AbstractEventLoop, coroutine) -> Any:
    """Run *coroutine* on *loop*, whether that loop runs in another thread or not at all."""
    if loop.is_running():
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()
    return loop.run_until_complete(coroutine)


def _on_loopback(contact: str, requested: str) -> str:
    """*contact* with the host we listened on: distributed's ``ws://`` listener binds
    every interface and names the machine's public IP, which we must not use."""
    scheme, location = parse_address(contact)
    _, requested_location = parse_address(requested)
    if scheme in IN_PROCESS or scheme == "unix":
        return contact
    host = parse_host_port(requested_location)[0]
    return unparse_address(scheme, unparse_host_port(host, parse_host_port(location)[1]))


class CommImplementation:
    is_comm_module = True

    def __init__(self, name: str, label: str):
        self.name, self.label = name, label
        self._listeners: list = []  # keep listeners alive (inproc holds them weakly)

    def missing(self) -> str | None:
        module = workloads.COMM_MODULES[self.name][0]
        if importlib.util.find_spec(module.partition(".")[0]) is None:
            return f"{module} is not installed"
        return None

    def supports(self, transport: str) -> bool:
        return workloads.CommAPI.load(self.name).has_transport(transport)

    def serve(self, transport, address, tls, loop) -> str:
        args = {"ssl_context": tlscerts.server_context(tls)} if transport in SECURE else {}
        api = workloads.CommAPI.load(self.name)
        listener = run_on(loop, workloads.start_listener(api, address, args))
        self._listeners.append(listener)
        return _on_loopback(listener.contact_address, address)

    def client(self, transport, address, tls, loop) -> workloads.Client:
        args = {"ssl_context": tlscerts.client_context(tls)} if transport in SECURE else {}
        return workloads.CommClient(workloads.CommAPI.load(self.name), loop, address, args)

    def stop_servers(self, loop) -> None:
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            stopped = listener.stop()  # ours may return an awaitable, distributed's does not
            if inspect.isawaitable(stopped):
                run_on(loop, stopped)


class BaselineImplementation:
    is_comm_module = False

    def __init__(self, name: str, label: str, module: str, client_class: str, requires: str):
        self.name, self.label = name, label
        self._module, self._client_class, self._requires = module, client_class, requires

    def missing(self) -> str | None:
        if importlib.util.find_spec(self._requires) is None:
            return f"{self._requires} is not installed"
        return None

    def _load(self):
        return importlib.import_module(self._module)

    def supports(self, transport: str) -> bool:
        return transport in self._load().TRANSPORTS

    def serve(self, transport, address, tls, loop) -> str:
        return self._load().serve(transport, address, tls)

    def client(self, transport, address, tls, loop) -> workloads.Client:
        return getattr(self._load(), self._client_class)(address, tls)

    def stop_servers(self, loop) -> None:
        """Baseline servers are daemon threads of the peer process; nothing to stop here."""


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in (
        CommImplementation("ours", "distributed_comm"),
        CommImplementation("distributed", "distributed.comm"),
        BaselineImplementation("raw", "raw sockets", "benchmarks.rawsock", "RawClient", "socket"),
        BaselineImplementation("zmq", "pyzmq", "benchmarks.zmqsock", "ZMQClient", "zmq"),
    )
}
