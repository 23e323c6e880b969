"""Settings: dask's keys and defaults, environment overrides, and the size/time parsers."""

from __future__ import annotations

import pytest

from distributed_comm import config

pytest.importorskip("distributed")
import dask.config  # noqa: E402
import dask.utils  # noqa: E402
import distributed  # noqa: E402, F401  (loads distributed's defaults into dask.config)


@pytest.mark.parametrize(
    "key",
    [
        "distributed.comm.timeouts.connect",
        "distributed.comm.timeouts.tcp",
        "distributed.comm.shard",
        "distributed.comm.offload",
        "distributed.comm.compression",
        "distributed.comm.default-scheme",
        "distributed.comm.socket-backlog",
        "distributed.comm.require-encryption",
        "distributed.comm.zstd.level",
        "distributed.comm.websockets.shard",
        "distributed.comm.tls.min-version",
        "distributed.comm.tls.ca-file",
    ],
)
def test_defaults_match_dask(key):
    assert config.get(key) == dask.config.get(key)


def test_environment_overrides():
    try:
        config.refresh(
            {
                "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s",
                "DASK_DISTRIBUTED__COMM__DEFAULT_SCHEME": "tls",
                "DASK_DISTRIBUTED__COMM__SOCKET_BACKLOG": "16",
                "OTHER_VARIABLE": "ignored",
            }
        )
        assert config.get("distributed.comm.timeouts.connect") == "5s"
        assert config.get("distributed.comm.default-scheme") == "tls"
        assert config.get("distributed.comm.socket-backlog") == 16
    finally:
        config.refresh()
    assert config.get("distributed.comm.default-scheme") == "tcp"


def test_set_as_context_manager_restores():
    with config.set({"distributed.comm.compression": "lz4"}):
        assert config.get("distributed.comm.compression") == "lz4"
        with config.set(distributed__comm__compression="zlib"):
            assert config.get("distributed.comm.compression") == "zlib"
        assert config.get("distributed.comm.compression") == "lz4"
    assert config.get("distributed.comm.compression") is False


def test_unknown_key_is_a_clear_error():
    with pytest.raises(KeyError, match="no.such.key"):
        config.get("no.such.key")
    assert config.get("no.such.key", 3) == 3


@pytest.mark.parametrize(
    "text", ["30s", "500ms", "1.5 s", "2 minutes", "1h", "10us", "0s", 3, 0.25, "7", "1e3ms"]
)
def test_parse_timedelta_matches_dask(text):
    assert config.parse_timedelta(text) == pytest.approx(dask.utils.parse_timedelta(text))


@pytest.mark.parametrize(
    "text", ["64MiB", "10MiB", "8MiB", "1 kB", "2GB", "5", 1024, "1.5 GiB", "100 b", "3k"]
)
def test_parse_bytes_matches_dask(text):
    assert config.parse_bytes(text) == dask.utils.parse_bytes(text)


@pytest.mark.parametrize("bad", ["fast", "10 parsecs", "", "s"])
def test_bad_quantities_name_the_input(bad):
    for parse in (config.parse_timedelta, config.parse_bytes):
        with pytest.raises(ValueError) as info:
            parse(bad)
        assert repr(bad) in str(info.value)
