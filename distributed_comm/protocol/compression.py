"""Frame compression: the codecs peers may negotiate and the rule for using them.

A frame is compressed only when a codec was negotiated, the frame is between
10 kB and 2 GiB, and a sample of it shrinks to 70 % or less (then the whole
frame must shrink as well).  Sampling keeps incompressible payloads (already
compressed data, random floats) from costing a full compression pass.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

from .. import config
from ..frames import Buffer, nbytes
from .utils import byte_view

MIN_SIZE = 10_000
MAX_SIZE = 2**31
SAMPLE_SIZE = 10_000
SAMPLES = 5
MIN_RATIO = 0.7

#: ``compress(data) -> bytes`` and ``decompress(data, limit) -> buffer``; a
#: decompressor refuses (``ValueError``) to produce more than *limit* bytes, and
#: refuses before allocating where the format says the size up front.
Codec = tuple[Callable[[Any], Buffer], Callable[[Any, int], Buffer]]


def _too_large(name: str, size: int | str, limit: int) -> ValueError:
    return ValueError(
        f"{name} frame expands to {size} bytes, over the {limit}-byte limit "
        "(distributed.comm.max-message-size)"
    )


def _zlib_decompress(data: Any, limit: int) -> bytes:
    stream = zlib.decompressobj()
    out = stream.decompress(data, limit)
    if stream.unconsumed_tail:
        raise _too_large("zlib", "more than that", limit)
    if not stream.eof:
        raise ValueError("truncated zlib frame")
    return out


codecs: dict[str, Codec] = {"zlib": (zlib.compress, _zlib_decompress)}

try:
    import lz4.block
except ImportError:  # pragma: no cover - lz4 is a dependency
    pass
else:

    def _lz4_decompress(data: Any, limit: int) -> bytearray:
        """The block format starts with the decompressed size: check it first."""
        view = byte_view(data)
        if view.nbytes < 4:
            raise ValueError(f"lz4 frame of {view.nbytes} bytes has no size prefix")
        size = int.from_bytes(view[:4], "little")
        if size > limit:
            raise _too_large("lz4", size, limit)
        # bytearray output keeps arrays built on the decompressed frame writeable.
        return lz4.block.decompress(view, return_bytearray=True)

    codecs["lz4"] = (lz4.block.compress, _lz4_decompress)

try:
    import zstandard
except ImportError:
    pass
else:

    def _zstd_compress(data: Any) -> bytes:
        level = config.get("distributed.comm.zstd.level")
        threads = config.get("distributed.comm.zstd.threads")
        return zstandard.ZstdCompressor(level=level, threads=threads).compress(data)

    def _zstd_decompress(data: Any, limit: int) -> bytes:
        size = zstandard.frame_content_size(data)
        if size > limit:
            raise _too_large("zstd", size, limit)
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)

    codecs["zstd"] = (_zstd_compress, _zstd_decompress)

try:
    import snappy
except ImportError:
    pass
else:

    def _snappy_decompress(data: Any, limit: int) -> bytes:
        out = snappy.decompress(data)  # no size bound in its API: checked after
        if len(out) > limit:
            raise _too_large("snappy", len(out), limit)
        return out

    codecs["snappy"] = (snappy.compress, _snappy_decompress)


def resolve(name: str | None | bool) -> str | None:
    """The codec meant by a setting: ``None``/``False`` mean none, ``"auto"`` the best."""
    if name is None or name is False:
        return None
    if name == "auto":
        return "lz4" if "lz4" in codecs else None
    if name not in codecs:
        raise ValueError(
            f"unknown compression {name!r}; available: {sorted(codecs)} or None/False/'auto'"
        )
    return name


def _sample(view: memoryview) -> memoryview:
    """Evenly spaced slices of *view*, joined: cheap to compress, representative."""
    step = (view.nbytes - SAMPLE_SIZE) // (SAMPLES - 1)
    return memoryview(b"".join(view[i * step : i * step + SAMPLE_SIZE] for i in range(SAMPLES)))


def maybe_compress(frame: Buffer, codec: str | None) -> tuple[str | None, Buffer]:
    """``(codec, compressed)`` when compressing pays off, else ``(None, frame)``."""
    if codec is None or not MIN_SIZE <= nbytes(frame) <= MAX_SIZE:
        return None, frame
    compress = codecs[codec][0]
    view = byte_view(frame)
    sample = _sample(view) if view.nbytes > SAMPLES * SAMPLE_SIZE else view
    if len(compress(sample)) > MIN_RATIO * sample.nbytes:
        return None, frame
    compressed = compress(view)
    if len(compressed) > MIN_RATIO * view.nbytes:
        return None, frame
    return codec, compressed


def decompress(names: Sequence[str | None], frames: Sequence[Buffer], limit: int) -> list[Buffer]:
    """Undo :func:`maybe_compress` frame by frame, as listed in a header.

    Together the frames may expand to at most *limit* bytes, so a small
    "compression bomb" from a peer cannot make this process allocate more
    than it would accept uncompressed.
    """
    if len(names) != len(frames):
        raise ValueError(f"header lists {len(names)} compressions for {len(frames)} frames")
    out = []
    for name, frame in zip(names, frames, strict=True):
        if name is None:
            out.append(frame)
            continue
        if name not in codecs:
            raise ValueError(f"frame compressed with {name!r}, which is not available here")
        frame = codecs[name][1](frame, limit)
        limit -= nbytes(frame)
        out.append(frame)
    return out
