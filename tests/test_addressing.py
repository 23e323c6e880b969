"""Differential tests: our address functions against distributed.comm's, input by input."""

from __future__ import annotations

import itertools

import pytest

import distributed_comm as ours

theirs = pytest.importorskip("distributed.comm")
from distributed.comm import addressing as their_addressing  # noqa: E402

HOSTS = [
    "127.0.0.1",
    "0.0.0.0",
    "localhost",
    "[::1]",
    "[::]",
    "[fe80::1%lo]",
    "::1",
    "fe80::1",
    "example.com",
    "my-host.local",
    "",
    "[::1",
    "::1]",
    "1.2.3.4.5",
]
PORTS = ["", ":0", ":8786", ":65535", ":99999", ":-1", ":abc", ":", ":8786:1"]
SCHEMES = ["", "tcp://", "tls://", "inproc://", "ws://", "ucx://", "foo://", "tcp://tls://", "://"]

ADDRESSES = sorted(
    {s + h + p for s, h, p in itertools.product(SCHEMES, HOSTS, PORTS)}
    | {"tcp", "tcp:/", "tcp:///", "tcp://:8786", "[]:1", "[::1]x", "[::1]:", " ", "tcp:// :1"}
)
NON_STRINGS = [None, 8786, 1.5, b"tcp://127.0.0.1:1", ("127.0.0.1", 80), ["127.0.0.1", 80]]


# The one intended divergence: distributed fails on a list address by accident
# (``list.startswith``: AttributeError); we say what is wrong with a TypeError.
INTENDED = {("parse_host_port", "['127.0.0.1', 80]"): (TypeError, AttributeError)}


def outcome(func, *args, **kwargs):
    """The result, or the exception type: what must agree between implementations."""
    try:
        return ("ok", func(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the type is the result under test
        return ("raises", type(exc))


def both(name, *args, **kwargs):
    mine = outcome(getattr(ours, name), *args, **kwargs)
    ref = outcome(getattr(their_addressing, name), *args, **kwargs)
    intended = INTENDED.get((name, repr(args[0]) if args else None))
    if intended and (mine[1], ref[1]) == intended:
        return mine, mine
    return mine, ref


def test_corpus_is_large_enough():
    assert len(ADDRESSES) + len(NON_STRINGS) >= 150


@pytest.mark.parametrize("strict", [False, True])
def test_parse_address(strict):
    differences = []
    for addr in ADDRESSES + NON_STRINGS:
        mine, ref = both("parse_address", addr, strict=strict)
        if mine != ref:
            differences.append((addr, mine, ref))
    assert differences == []


@pytest.mark.parametrize("default_port", [None, 8786, "8786", "x"])
def test_parse_host_port(default_port):
    differences = []
    for addr in ADDRESSES + NON_STRINGS:
        mine, ref = both("parse_host_port", addr, default_port=default_port)
        if mine != ref:
            differences.append((addr, mine, ref))
    assert differences == []


@pytest.mark.parametrize(
    "name", ["normalize_address", "get_address_host", "resolve_address", "get_address_host_port"]
)
def test_address_functions(name):
    differences = []
    for addr in ADDRESSES + NON_STRINGS:
        if isinstance(addr, str) and ("inproc" in addr or "ucx" in addr or "ws" in addr):
            continue  # those transports have their own tests
        if name == "resolve_address" and "example.com" in str(addr):
            continue  # needs DNS, which this machine does not have
        mine, ref = both(name, addr)
        if mine != ref:
            differences.append((addr, mine, ref))
    assert differences == []


def test_get_address_host_port_strict():
    for addr in ["127.0.0.1:80", "tcp://127.0.0.1:80", "tcp://[::1]:80", "[::1]:80", "x://y:1"]:
        mine, ref = both("get_address_host_port", addr, strict=True)
        assert mine == ref


@pytest.mark.parametrize(
    "addr",
    ["tcp://127.0.0.1:1234", "tcp://localhost:1", "127.0.0.1", "tls://[::1]:80", "tcp://8.8.8.8:1"],
)
def test_get_local_address_for(addr):
    mine, ref = both("get_local_address_for", addr)
    assert mine == ref


@pytest.mark.parametrize(
    "host,port",
    [("127.0.0.1", 80), ("::1", 80), ("[::1]", 80), ("::1", None), ("localhost", None), ("", 0)],
)
def test_unparse(host, port):
    for name, args in [("unparse_host_port", (host, port)), ("unparse_address", ("tls", host))]:
        mine, ref = both(name, *args)
        assert mine == ref


@pytest.mark.parametrize(
    "host_arg,port_arg,default_port",
    [
        (None, None, 8786),
        ("", None, 0),
        ("127.0.0.1", None, 8786),
        ("127.0.0.1:1234", None, 8786),
        ("127.0.0.1:1234", "1234", 8786),
        ("127.0.0.1:1234", "99", 8786),
        ("127.0.0.1:0", "99", 8786),
        ("tls://127.0.0.1", "99", 0),
        ("[::1]", 8000, 0),
        ("::1", None, 0),
        ("host", "x", 0),
    ],
)
def test_uri_from_host_port(host_arg, port_arg, default_port):
    mine, ref = both("uri_from_host_port", host_arg, port_arg, default_port)
    assert mine == ref


class _Security:
    def __init__(self, require_encryption):
        self.require_encryption = require_encryption


USER_ARGS = [
    {},
    {"host": "127.0.0.1"},
    {"host": "127.0.0.1", "port": 8786},
    {"host": "tcp://127.0.0.1:8786"},
    {"host": "127.0.0.1:8786", "port": 8786},
    {"host": "127.0.0.1:1", "port": 2},
    {"port": 8786},
    {"protocol": "tls"},
    {"protocol": "tls://", "host": "127.0.0.1"},
    {"protocol": "inproc"},
    {"protocol": "tcp", "port": 0},
    {"interface": "lo"},
    {"interface": "lo", "port": 80},
    {"interface": "lo", "host": "127.0.0.1"},
    {"interface": "no-such-interface"},
    {"security": _Security(True)},
    {"security": _Security(True), "host": "127.0.0.1"},
    {"security": _Security(False), "host": "127.0.0.1"},
    {"host": "[::1]", "port": 9},
    {"default_port": 8786},
    {"host": "127.0.0.1", "default_port": 8786},
]


@pytest.mark.parametrize("kwargs", USER_ARGS)
def test_address_from_user_args(kwargs):
    mine, ref = both("address_from_user_args", **kwargs)
    assert mine == ref


@pytest.mark.parametrize(
    "kwargs",
    USER_ARGS
    + [
        {"host": ["127.0.0.1", "localhost"], "port": 1},
        {"protocol": ["tcp", "tls"], "host": "127.0.0.1"},
        {"host": ("a", "b"), "port": [1, 2]},
        {"interface": ["lo"], "port": [5, 6]},
    ],
)
def test_addresses_from_user_args(kwargs):
    mine, ref = both("addresses_from_user_args", **kwargs)
    assert mine == ref


@pytest.mark.parametrize(
    "func,args,named",
    [
        (ours.parse_host_port, ("127.0.0.1",), "127.0.0.1"),
        (ours.parse_host_port, ("::1:80",), "::1:80"),
        (ours.parse_host_port, ("[::1",), "[::1"),
        (ours.parse_host_port, ("host:abc",), "host:abc"),
        (ours.parse_address, ("127.0.0.1:80", True), "127.0.0.1:80"),
        (ours.get_address_host_port, ("zzz://127.0.0.1:80",), "zzz"),
    ],
)
def test_errors_name_the_input(func, args, named):
    with pytest.raises(ValueError) as info:
        func(*args)
    assert named in str(info.value)
