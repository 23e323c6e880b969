"""Fresh receive buffers, and ``bytes`` payloads out of them without a copy.

A received frame needs writeable memory of its own (numpy arrays are built
on it). But a frame that carries a ``bytes`` payload must end up as a
``bytes`` object, which is immutable and owns its memory, so a plain buffer
has to be copied into one: for a large payload that copy (and the page
faults of its fresh memory) costs as much again as receiving it.

So on CPython, with numpy installed, a large buffer is the storage of a new
``bytes`` object made the way C code makes one it is about to fill
(``PyBytes_FromStringAndSize(NULL, size)``), exposed writeable through numpy
while the socket fills it. :func:`bytes_of` then hands that object out as the
payload. Elsewhere buffers are plain numpy or ``bytearray`` memory and a
``bytes`` payload is copied, as before.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys
from typing import Any

__all__ = ["bytes_of", "empty_buffer", "kept_view"]

#: Buffers up to this size are plain ``bytearray`` (cheap to make; copying a
#: small payload costs nothing worth saving).
SMALL_BUFFER = 2**15
#: Buffers from this size on ask for huge pages (numpy's threshold too).
HUGE_PAGE_BUFFER = 2**22
_MADV_HUGEPAGE = 14


class _BytesStorage:
    """The memory of a fresh ``bytes`` object, offered to numpy as writeable.

    numpy keeps this object alive as the array's ``base``, and it keeps the
    ``bytes`` object alive. Nothing else refers to that object until
    :func:`bytes_of` hands it out, after the frame was written.
    """

    __slots__ = ("payload", "address", "__array_interface__")

    def __init__(self, payload: bytes, address: int) -> None:
        self.payload = payload
        self.address = address
        self.__array_interface__ = {
            "version": 3,
            "shape": (len(payload),),
            "typestr": "|u1",
            "data": (address, False),  # False: writeable
        }


@functools.cache
def _bytes_maker() -> Any:
    """``size -> writeable view of a fresh bytes object's storage``, or None
    where that cannot be done (not CPython, or no numpy). Made on first use:
    numpy is optional and slow to import."""
    if sys.implementation.name != "cpython":
        return None
    try:
        import numpy
    except ImportError:
        return None
    # Private function objects: setting restype on ``ctypes.pythonapi``'s
    # shared ones could break other code in the process.
    new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t)(
        ("PyBytes_FromStringAndSize", ctypes.pythonapi)
    )
    address_of = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object)(
        ("PyBytes_AsString", ctypes.pythonapi)
    )

    advise_huge_pages = _huge_page_adviser()

    def make(size: int) -> memoryview:
        payload = new(None, size)
        address = address_of(payload)
        if size >= HUGE_PAGE_BUFFER and advise_huge_pages is not None:
            advise_huge_pages(address, size)
        return memoryview(numpy.asarray(_BytesStorage(payload, address)))

    return make


def _huge_page_adviser() -> Any:
    """``(address, size) -> None`` asking Linux to back that memory with huge
    pages, as numpy does for its own large arrays; None elsewhere.

    Where transparent huge pages are on request only (``madvise``, a common
    default), this is what makes filling a fresh buffer cheap: a 128 MiB
    buffer took 75 ms to fill with 4 KiB pages, 17 ms with huge ones.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)(
            ("madvise", ctypes.CDLL(None))
        )
    except (AttributeError, OSError):  # pragma: no cover - a libc without madvise
        return None
    page = mmap.PAGESIZE

    def advise(address: int, size: int) -> None:
        start = -(-address // page) * page  # madvise takes whole pages
        end = (address + size) // page * page
        madvise(start, end - start, _MADV_HUGEPAGE)  # a refusal only costs speed

    return advise


def empty_buffer(size: int) -> memoryview:
    """A fresh, writeable, uninitialised buffer of *size* bytes that owns its memory.

    Large ones skip the zero-fill ``bytearray`` would do (the socket
    overwrites every byte anyway) and, where possible, are the storage of a
    ``bytes`` object (see :func:`bytes_of`).
    """
    if size > sys.maxsize:  # ctypes would wrap it round to a negative size
        raise MemoryError(f"cannot allocate {size} bytes: more than this process can address")
    if size > SMALL_BUFFER:
        make = _bytes_maker()
        if make is not None:
            return make(size)
        try:
            import numpy
        except ImportError:  # pragma: no cover - numpy is optional
            pass
        else:
            return memoryview(numpy.empty(size, "u1"))
    return memoryview(bytearray(size))


def _is_bytes_storage(frame: memoryview) -> bool:
    return type(getattr(frame.obj, "base", None)) is _BytesStorage


def kept_view(frame: Any) -> Any:
    """*frame* as a caller that keeps it should hold it (the frames of a
    ``Serialized`` read with ``deserialize=False``): still writeable memory,
    but never handed out as ``bytes`` by :func:`bytes_of`, since writing
    through it would change an immutable object (and its cached hash)."""
    if type(frame) is not memoryview or not _is_bytes_storage(frame):
        return frame
    import numpy  # there when a frame is bytes storage

    return memoryview(numpy.frombuffer(frame, "u1"))


def bytes_of(frame: Any) -> bytes | None:
    """The ``bytes`` object whose memory *frame* is, exactly, if *frame* is
    (a view of) a buffer from :func:`empty_buffer` that spans all of it;
    otherwise None (the caller copies).

    Only for frames that have been written in full: the object is immutable
    from here on.
    """
    if type(frame) is not memoryview or frame.readonly or not _is_bytes_storage(frame):
        return None
    storage = frame.obj.base
    if frame.nbytes != len(storage.payload):
        return None
    if ctypes.addressof(ctypes.c_char.from_buffer(frame)) != storage.address:
        return None
    return storage.payload
