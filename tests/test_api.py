"""The drop-in contract: every public name exists with distributed's signature."""

from __future__ import annotations

import inspect

import pytest

import distributed_comm

distributed_comm_reference = pytest.importorskip("distributed.comm")
from distributed.comm import addressing as their_addressing  # noqa: E402
from distributed.comm import core as their_core  # noqa: E402
from distributed.comm import registry as their_registry  # noqa: E402

PUBLIC = [
    "connect", "listen", "Comm", "CommClosedError", "FatalCommClosedError", "Listener",
    "Connector", "Backend", "backends", "get_backend", "parse_address", "unparse_address",
    "normalize_address", "resolve_address", "get_address_host", "get_address_host_port",
    "get_local_address_for", "parse_host_port", "unparse_host_port", "uri_from_host_port",
    "address_from_user_args", "addresses_from_user_args", "get_tcp_server_address",
    "get_tcp_server_addresses",
]  # fmt: skip


def reference(name):
    for module in (distributed_comm_reference, their_core, their_registry, their_addressing):
        if hasattr(module, name):
            return getattr(module, name)
    raise AssertionError(f"distributed has no {name}")


def shape(func):
    """Parameter names, kinds and defaults: what callers depend on (not annotations)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_matches_distributed(name):
    mine, ref = getattr(distributed_comm, name), reference(name)
    assert name in distributed_comm.__all__
    if inspect.isclass(ref):
        assert inspect.isclass(mine)
        assert shape(mine.__init__) == shape(ref.__init__)
        assert getattr(mine, "__abstractmethods__", set()) == getattr(
            ref, "__abstractmethods__", set()
        )
        for attr, value in vars(ref).items():
            if callable(value) and not attr.startswith("_") or attr in ("__aenter__", "__await__"):
                assert shape(getattr(mine, attr)) == shape(getattr(ref, attr)), attr
    elif callable(ref):
        assert shape(mine) == shape(ref)
        assert inspect.iscoroutinefunction(mine) == inspect.iscoroutinefunction(ref)
    else:
        assert type(mine) is type(ref)


def test_error_hierarchy_matches():
    assert issubclass(distributed_comm.CommClosedError, OSError)
    assert issubclass(distributed_comm.FatalCommClosedError, distributed_comm.CommClosedError)


def test_importing_does_not_import_distributed_or_numpy():
    import subprocess
    import sys

    code = (
        "import sys, distributed_comm, distributed_comm.protocol;"
        "print(sorted(m for m in ('distributed', 'dask', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
