"""Settings: dask's ``distributed.comm.*`` keys with dask's defaults, in one place.

Values are read once from the defaults below, then from ``DASK_*`` environment
variables (``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s``), then from
:func:`set`.  Comms copy what they need when they are created, so no message
ever pays for a settings lookup.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["defaults", "get", "set", "on_change", "parse_timedelta", "parse_bytes", "refresh"]

defaults: dict[str, Any] = {
    "distributed.comm.timeouts.connect": "30s",
    "distributed.comm.timeouts.tcp": "30s",
    "distributed.comm.shard": "64MiB",
    "distributed.comm.offload": "10MiB",
    "distributed.comm.compression": False,
    "distributed.comm.default-scheme": "tcp",
    "distributed.comm.socket-backlog": 2048,
    "distributed.comm.require-encryption": None,
    "distributed.comm.zstd.level": 3,
    "distributed.comm.zstd.threads": 0,
    "distributed.comm.websockets.shard": "8MiB",
    "distributed.comm.tls.ciphers": None,
    "distributed.comm.tls.min-version": 1.2,
    "distributed.comm.tls.max-version": None,
    "distributed.comm.tls.ca-file": None,
    "distributed.comm.tls.scheduler.cert": None,
    "distributed.comm.tls.scheduler.key": None,
    "distributed.comm.tls.worker.cert": None,
    "distributed.comm.tls.worker.key": None,
    "distributed.comm.tls.client.cert": None,
    "distributed.comm.tls.client.key": None,
    # distributed_comm's own limits (no equivalent in dask).
    "distributed.comm.max-frames": 1_000_000,
    "distributed.comm.max-message-size": "auto",  # "auto": a quarter of RAM
    "distributed.comm.timeouts.handshake": "30s",
    "distributed.comm.allow-pickle": True,
    # Modules whose Enum members may be imported when a message is decoded.
    "distributed.scheduler.allowed-imports": ("dask", "distributed"),
}

_ENV_PREFIX = "DASK_"
_settings: dict[str, Any] = {}
_listeners: list[Callable[[], None]] = []


def on_change(callback: Callable[[], None]) -> Callable[[], None]:
    """Call *callback* whenever settings change, so modules that cache a
    setting (to keep it off the per-message path) can drop their cache."""
    _listeners.append(callback)
    return callback


def _changed() -> None:
    for callback in _listeners:
        callback()


def _canonical(key: str) -> str:
    """dask treats ``_`` and ``-`` in keys alike, and keys are case-insensitive."""
    return key.lower().replace("_", "-")


def _parse_env_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    found = {}
    for name, text in environ.items():
        if name.startswith(_ENV_PREFIX):
            key = _canonical(".".join(name[len(_ENV_PREFIX) :].split("__")))
            found[key] = _parse_env_value(text)
    return found


def refresh(environ: Mapping[str, str] | None = None) -> None:
    """Re-read defaults and the environment (tests use this after changing env)."""
    _settings.clear()
    _settings.update({_canonical(k): v for k, v in defaults.items()})
    _settings.update(_from_environment(os.environ if environ is None else environ))
    _changed()


def get(key: str, default: Any = KeyError) -> Any:
    """Return the setting *key* (a full dotted dask key)."""
    try:
        return _settings[_canonical(key)]
    except KeyError:
        if default is KeyError:
            raise KeyError(f"unknown setting {key!r}") from None
        return default


class set:  # noqa: A001 - mirrors ``dask.config.set``
    """Change settings; as a context manager, restore them on exit.

    >>> with set({"distributed.comm.compression": "lz4"}): ...
    """

    def __init__(self, arg: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self._previous = dict(_settings)
        updates = {**(arg or {}), **{k.replace("__", "."): v for k, v in kwargs.items()}}
        for key, value in updates.items():
            _settings[_canonical(key)] = value
        _changed()

    def __enter__(self) -> set:
        return self

    def __exit__(self, *exc_info: object) -> None:
        _settings.clear()
        _settings.update(self._previous)
        _changed()


_TIME_UNITS = {
    "us": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6,
    "ms": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip

_BYTE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip

_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]*(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$")


def _split_quantity(text: str, what: str) -> tuple[float, str]:
    match = _QUANTITY.match(text.lower())
    if not match or match.group(1) in ("", "."):
        raise ValueError(f"could not parse {what} {text!r}")
    return float(match.group(1)), match.group(2)


def parse_timedelta(value: str | float | int | None, default: str = "seconds") -> float | None:
    """Seconds from a number (in *default* units) or a string like ``"500ms"``."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) * _TIME_UNITS[default]
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    if not isinstance(value, str):
        raise TypeError(f"expected a time like '30s' or a number, got {value!r}")
    number, unit = _split_quantity(value, "time")
    if unit not in _TIME_UNITS and unit != "":
        raise ValueError(f"unknown time unit {unit!r} in {value!r}")
    return number * _TIME_UNITS[unit or default]


def parse_bytes(value: str | int | float) -> int:
    """Bytes from a number or a string like ``"64MiB"`` or ``"10 kB"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a size like '64MiB' or a number, got {value!r}")
    number, unit = _split_quantity(value, "size")
    if unit not in _BYTE_UNITS:
        raise ValueError(f"unknown size unit {unit!r} in {value!r}")
    return int(number * _BYTE_UNITS[unit])


refresh()
