"""Buffer helpers: cut large frames into shards and glue them back without copying.

Frames are cut so that no single buffer handed to a compressor or a socket is
huge; the reader glues the shards back.  When the shards are consecutive views
of one buffer (the common case when a whole message was read in one go) the
glued frame is a view of that buffer, so arrays built on it cost no copy.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pickle import PickleBuffer
from typing import Any

from ..buffers import empty_buffer
from ..frames import Buffer, nbytes


def byte_view(frame: Any) -> memoryview:
    """A flat unsigned-byte view of *frame*; copies only if it is not contiguous."""
    view = frame if isinstance(frame, memoryview) else memoryview(frame)
    if view.ndim == 1 and view.format == "B":
        return view
    if not view.contiguous:
        return memoryview(view.tobytes(order="A"))
    # ``cast`` refuses Fortran-ordered views; a PickleBuffer's raw view does not.
    return PickleBuffer(view).raw()


def split_frame(frame: Buffer, size: int) -> list[Buffer]:
    """*frame* as consecutive views of at most *size* bytes each."""
    total = nbytes(frame)
    if total <= size:
        return [frame]
    view = byte_view(frame)
    return [view[start : start + size] for start in range(0, total, size)]


def _address(view: memoryview) -> int:
    """Address of the first byte of a non-empty view."""
    if not view.readonly:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    import numpy  # ctypes cannot see into read-only buffers; numpy can

    return numpy.frombuffer(view, dtype="u1").ctypes.data


def _owner(view: memoryview) -> Any:
    """The outermost buffer under *view* (through numpy's chain of ``.base``,
    which may end in an object that only describes memory, such as a
    received buffer's, see ``buffers.empty_buffer``)."""
    owner = view.obj
    while True:
        base = getattr(owner, "base", None)
        if base is None:
            return owner
        try:
            memoryview(base)
        except (TypeError, ValueError):  # not a buffer, or one numpy cannot export
            return owner
        owner = base


def _adjacent_span(views: list[memoryview]) -> memoryview | None:
    """One view covering *views* if they lie back to back in one buffer, else None."""
    owner = _owner(views[0])
    if any(_owner(view) is not owner for view in views):
        return None
    try:
        base = memoryview(owner)
        if not base.contiguous:
            return None
        base = byte_view(base)
        start = position = _address(views[0])
        for view in views:
            if _address(view) != position:
                return None
            position += view.nbytes
        offset = start - _address(base)
    except (ImportError, TypeError, ValueError):
        return None
    if offset < 0 or offset + (position - start) > base.nbytes:
        return None
    return base[offset : offset + (position - start)]


def merged_in_place(frames: Sequence[Buffer]) -> Buffer | None:
    """The shards of one frame joined without a copy (one shard, or shards
    back to back in one buffer), or None if joining them needs one."""
    if len(frames) == 1:
        return frames[0]
    views = [byte_view(frame) for frame in frames if nbytes(frame)]
    if not views:
        return b""
    if len(views) == 1:
        return views[0]
    return _adjacent_span(views)


def merge_frames(frames: Sequence[Buffer]) -> Buffer:
    """Join the shards of one frame: a view when they are adjacent, else one copy."""
    merged = merged_in_place(frames)
    if merged is not None:
        return merged
    views = [byte_view(frame) for frame in frames if nbytes(frame)]
    out = empty_buffer(sum(view.nbytes for view in views))
    position = 0
    for view in views:
        out[position : position + view.nbytes] = view
        position += view.nbytes
    return out
