"""numpy arrays in the ``"dask"`` family: the array's memory is the frame.

Imported only when a numpy object is first serialized or deserialized
(see ``_lazy_registrations`` in :mod:`.serialize`), so numpy stays optional.

Header (``sub-header``): ``dtype`` as ``(0, dtype.str)`` or ``(1, pickled dtype)``
for structured/void dtypes, ``shape``, ``strides``, ``writeable: [bool]`` and,
for arrays with zero strides (``np.broadcast_to``), ``broadcast_to``: the full
shape, while only the un-broadcast data travels.  Arrays holding Python objects
are pickled instead (``{"pickle": True}``).
"""

from __future__ import annotations

import pickle as stdlib_pickle
from typing import Any

import numpy as np

from . import pickle
from .serialize import Frames, Header, register_in_place, register_serialization


def _dtype_header(dtype: np.dtype, protocol: int | None) -> tuple[int, Any]:
    if dtype.kind != "V":
        return 0, dtype.str
    # Structured dtypes keep field names, offsets and alignment only when pickled.
    try:
        return 1, stdlib_pickle.dumps(dtype, protocol=protocol or pickle.HIGHEST_PROTOCOL)
    except Exception:
        return 0, dtype.descr


def _undo_broadcast(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """The data behind a broadcast array, and strides (0 on broadcast axes) to rebuild it."""
    base = x[tuple(slice(0, 1) if s == 0 else slice(None) for s in x.strides)]
    if not (base.flags.c_contiguous or base.flags.f_contiguous):
        base = np.ascontiguousarray(base)
    strides = tuple(0 if s == 0 else b for s, b in zip(x.strides, base.strides, strict=True))
    return base, strides


def serialize_ndarray(x: np.ndarray, context: dict | None = None) -> tuple[Header, Frames]:
    if type(x) is not np.ndarray:
        raise NotImplementedError(type(x).__name__)  # subclasses keep their type via pickle
    protocol = (context or {}).get("pickle-protocol")
    if x.dtype.hasobject:
        buffers: list[Any] = []
        data = pickle.dumps(x, buffer_callback=buffers.append, protocol=protocol)
        return {"pickle": True}, [data, *(memoryview(b) for b in buffers)]

    header: Header = {"dtype": _dtype_header(x.dtype, protocol)}
    if 0 in x.strides:
        header["broadcast_to"] = x.shape
        base, strides = _undo_broadcast(x)
    elif x.flags.c_contiguous or x.flags.f_contiguous:
        base, strides = x, x.strides  # order kept, no copy
    else:
        base = np.ascontiguousarray(x)
        strides = base.strides
    header.update(shape=base.shape, strides=strides, writeable=[x.flags.writeable])
    # A flat byte view in memory order: zero-copy for C and Fortran layouts alike.
    frame = base.ravel(order="K").view(np.uint8).data
    return header, [frame]


def deserialize_ndarray(header: Header, frames: Frames) -> np.ndarray:
    if header.get("pickle"):
        return pickle.loads(frames[0], buffers=frames[1:])
    if len(frames) != 1:
        raise ValueError(f"a numpy array travels as one frame, got {len(frames)}")
    custom, dtype = header["dtype"]
    if custom:
        dtype = pickle.loads(dtype)
    elif not isinstance(dtype, str):
        dtype = [tuple(field) for field in dtype]  # a descr: msgpack made it tuples
    shape = header.get("broadcast_to") or header["shape"]
    x = np.ndarray(shape, dtype=np.dtype(dtype), buffer=frames[0], strides=header["strides"])
    if not header["writeable"][0]:
        x.flags.writeable = False
    elif not x.flags.writeable:
        x = x.copy()  # the frame is read-only (bytes, some decompressors)
    if header.get("matrix"):
        x = np.asmatrix(x)
    return x


def _sent_as_frame(x: np.ndarray) -> bool:
    """Whether :func:`serialize_ndarray` sends *x*'s own memory (neither pickles nor copies it)."""
    return not x.dtype.hasobject and (x.flags.c_contiguous or x.flags.f_contiguous)


def _built_over_frame(header: Header, frames: Frames) -> bool:
    """Whether :func:`deserialize_ndarray` adopts the frame (neither unpickles nor copies it)."""
    if header.get("pickle") or len(frames) != 1:
        return False
    return bool(not memoryview(frames[0]).readonly or not header["writeable"][0])


def serialize_matrix(x: np.matrix, context: dict | None = None) -> tuple[Header, Frames]:
    header, frames = serialize_ndarray(np.asarray(x), context)
    header["matrix"] = True
    return header, frames


def serialize_masked(x: np.ma.MaskedArray, context: dict | None = None) -> tuple[Header, Frames]:
    """Data and mask as two arrays; the fill value inline when msgpack can carry it."""
    header, frames = serialize_ndarray(np.asarray(x.data), context)
    masked: Header = {"data-header": header, "nframes": len(frames)}
    if x.mask is not np.ma.nomask:
        masked["mask-header"], mask_frames = serialize_ndarray(np.asarray(x.mask), context)
        frames = [*frames, *mask_frames]
    fill = x.fill_value
    if isinstance(fill, (np.integer, np.floating, np.bool_)):
        masked["fill-value"] = (False, fill.item())
    else:
        masked["fill-value"] = (True, pickle.dumps(fill))
    return masked, frames


def deserialize_masked(header: Header, frames: Frames) -> np.ma.MaskedArray:
    split = header["nframes"]
    data = deserialize_ndarray(header["data-header"], frames[:split])
    mask = np.ma.nomask
    if "mask-header" in header:
        mask = deserialize_ndarray(header["mask-header"], frames[split:])
    pickled, fill = header["fill-value"]
    return np.ma.masked_array(data, mask=mask, fill_value=pickle.loads(fill) if pickled else fill)


register_serialization(np.ndarray, serialize_ndarray, deserialize_ndarray)
register_serialization(np.matrix, serialize_matrix, deserialize_ndarray)
register_in_place(np.ndarray, sends=_sent_as_frame, receives=_built_over_frame)
register_in_place(np.matrix, sends=_sent_as_frame, receives=_built_over_frame)
register_serialization(np.ma.MaskedArray, serialize_masked, deserialize_masked)
register_serialization(
    np.ma.core.MaskedConstant, lambda x: ({}, []), lambda header, frames: np.ma.masked
)
