"""The codec a stream comm uses to turn messages into frames and back.

A codec is any object with the two functions of ``distributed.protocol``:

- ``dumps(msg, *, serializers, on_error, context, frame_split_size) -> list of buffers``
- ``loads(frames, *, deserialize, deserializers) -> msg``

so both :mod:`distributed_comm.protocol` (the default) and the stock
``distributed.protocol`` module plug in as they are. A codec may also offer
``dumps_plain(msg) -> bytes | None``, the one frame of a message that needs no
serialization context, with ``dumps_with_hooks`` (``dumps`` arguments) for the
messages it refuses: a comm then skips building that context for small control
messages, and encodes no message twice. ``loads_work(frames, limit) -> int`` (the
bytes ``loads`` reads or copies) and ``dumps_work(msg, **dumps_args) -> int``
(an estimate of what ``dumps`` reads or copies) let a comm keep on its loop
messages whose large payloads are sent and received as they are. Refusing pickles from
untrusted peers is a codec choice too: see :func:`default_codec`. Both functions are
synchronous: the comm decides whether to run them on its offload thread.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["Codec", "default_codec", "rough_nbytes"]


@runtime_checkable
class Codec(Protocol):
    """Message <-> frames, as ``distributed.protocol.dumps`` / ``loads``."""

    def dumps(
        self,
        msg: Any,
        *,
        serializers: Sequence[str] | None = None,
        on_error: str = "message",
        context: dict | None = None,
        frame_split_size: int | None = None,
    ) -> list: ...

    def loads(
        self, frames: list, *, deserialize: bool = True, deserializers: Sequence[str] | None = None
    ) -> Any: ...


def default_codec(allow_pickle: bool = True) -> Codec:
    """:mod:`distributed_comm.protocol`, imported when the first comm is made;
    with ``allow_pickle=False`` its variant whose ``loads`` refuses pickles
    (``protocol.loads_untrusted``), for peers that must not run code here."""
    from distributed_comm import protocol

    if allow_pickle:
        return protocol
    return _Untrusted(
        protocol.dumps,
        protocol.loads_untrusted,
        protocol.dumps_plain,
        protocol.dumps_with_hooks,
        protocol.loads_work,
        protocol.dumps_work,
    )


class _Untrusted(NamedTuple):
    dumps: Callable[..., list]
    loads: Callable[..., Any]
    dumps_plain: Callable[[Any], bytes | None]
    dumps_with_hooks: Callable[..., list]
    loads_work: Callable[..., int]
    dumps_work: Callable[..., int]


# How many items of a container :func:`rough_nbytes` looks at, and how deep.
_SAMPLE = 8
_DEPTH = 4


def rough_nbytes(
    obj: Any, depth: int = _DEPTH, known: Callable[[Any], int | None] | None = None
) -> int:
    """A cheap estimate of how many bytes serializing *obj* will touch.

    It looks at no more than ``_SAMPLE`` items per container and ``_DEPTH``
    levels, extrapolating from the sample, so it costs a few dozen Python
    operations whatever the message: enough to tell a ``{"op": ...}`` dict from
    a message carrying megabytes, which is all the offload decision needs.
    Wrappers such as ``Serialize``/``ToPickle`` are looked through via ``.data``,
    unless ``known(wrapper)`` gives what serializing it costs; items beyond the
    sample then count as the sample's items do by work or by size, whichever
    is more (what was not looked at is not assumed cheap).
    """
    if isinstance(obj, (str, bytes, bytearray)):
        return len(obj)
    if obj is None or isinstance(obj, (int, float, bool)):
        return 8
    # A plain dict (most messages) has no ``nbytes``: skip the failing lookup.
    size = None if type(obj) is dict else getattr(obj, "nbytes", None)
    if isinstance(size, int):
        return size
    if depth == 0:
        return sys.getsizeof(obj)
    if isinstance(obj, dict):
        items = list(islice(obj.items(), _SAMPLE))
        sampled = sum(_item_nbytes(key, value, depth, known) for key, value in items)
        if known is not None and len(obj) > len(items):
            sized = sum(_item_nbytes(key, value, depth, None) for key, value in items)
            return _extrapolated(sampled, sized, len(items), len(obj))
        return sampled * len(obj) // max(len(items), 1)
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = obj if len(obj) <= _SAMPLE else list(islice(obj, _SAMPLE))
        sampled = sum(rough_nbytes(item, depth - 1, known) for item in items)
        if known is not None and len(obj) > len(items):
            sized = sum(rough_nbytes(item, depth - 1) for item in items)
            return _extrapolated(sampled, sized, len(items), len(obj))
        return sampled * len(obj) // max(len(items), 1)
    work = known(obj) if known is not None else None
    if work is not None:
        return work
    inner = getattr(obj, "data", None)
    if inner is not None:
        return rough_nbytes(inner, depth - 1, known)
    return sys.getsizeof(obj)


def _extrapolated(work: int, size: int, sampled: int, count: int) -> int:
    """*work* of the first *sampled* of *count* items, plus the rest at the
    sample's work or size per item, whichever is more."""
    return work + max(work, size) * (count - sampled) // sampled


def _item_nbytes(
    key: Any, value: Any, depth: int, known: Callable[[Any], int | None] | None
) -> int:
    """:func:`rough_nbytes` of one dict item; strings and numbers inline, for
    a small message of them is the hot path."""
    size = len(key) if type(key) is str else rough_nbytes(key, depth - 1, known)
    kind = type(value)
    if kind is str or kind is bytes:
        return size + len(value)
    if kind is int or kind is float:
        return size + 8
    return size + rough_nbytes(value, depth - 1, known)
