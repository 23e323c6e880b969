"""Frames on a byte stream, with no I/O (WIRE.md section 1).

A message is a list of frames.  On the stream it is preceded by a *prelude*:
the frame count and each frame's length, all unsigned 64-bit little-endian.
Everything here is a pure function over buffers so it can be tested without
sockets; the transports decide when to read and write.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

Buffer = bytes | bytearray | memoryview

U64 = struct.Struct("<Q")


def nbytes(frame: Buffer) -> int:
    """Byte length of any buffer (``len`` of a memoryview counts items, not bytes)."""
    if isinstance(frame, memoryview):
        return frame.nbytes
    if isinstance(frame, (bytes, bytearray)):
        return len(frame)
    return memoryview(frame).nbytes


def pack_frames_prelude(frames: Sequence[Buffer]) -> bytes:
    """The frame count followed by each frame's byte length."""
    return struct.pack(f"<{len(frames) + 1}Q", len(frames), *map(nbytes, frames))


def pack_frames(frames: Sequence[Buffer]) -> bytes:
    """Prelude and frames joined into one buffer (copies: for small messages)."""
    return b"".join([pack_frames_prelude(frames), *frames])


def unpack_frames(
    b: Buffer, *, remainder: bool = False, partial: bool = False
) -> list[memoryview] | tuple[list[memoryview], list[int]]:
    """Zero-copy views of the frames packed in *b* by :func:`pack_frames`.

    ``remainder=True`` appends the bytes after the last frame (the rest of a
    stream of packed messages); ``partial=True`` accepts a buffer that stops
    at a frame boundary before the end and also returns the missing lengths.
    """
    view = memoryview(b).cast("B")
    total = view.nbytes
    if total < U64.size:
        raise ValueError(f"packed frames need at least 8 bytes, got {total}")
    (count,) = U64.unpack_from(view)
    start = U64.size * (count + 1)
    if start > total:
        raise ValueError(f"prelude declares {count} frames but only {total} bytes were given")
    lengths = struct.unpack_from(f"<{count}Q", view, U64.size)
    frames: list[memoryview] = []
    for index, length in enumerate(lengths):
        if partial and start == total:
            return frames, list(lengths[index:])
        end = start + length
        if end > total:
            raise ValueError(
                f"frame {index} declares {length} bytes but only {total - start} remain"
            )
        frames.append(view[start:end])
        start = end
    if remainder:
        frames.append(view[start:])
    return (frames, []) if partial else frames
