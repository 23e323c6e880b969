"""Turn one object into ``(header, frames)`` and back, through serializer families.

A *family* is a named pair of functions; the header records which one was used
(``header["serializer"]``) so the peer can pick the inverse.  Built-in families:

- ``"dask"``: a per-type registry (bytes, bytearray, memoryview, array.array,
  numpy arrays, and whatever :func:`register_serialization` adds);
- ``"pickle"``: pickle protocol 5, large buffers as separate frames;
- ``"msgpack"``: one msgpack frame;
- ``"error"``: decode-only; carries the reason an object could not be sent.

Lists, tuples, sets and dicts holding registry-serializable items are sent as
*collections*: one sub-header per item, frames concatenated, so a list of
arrays is never pickled as a whole.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Literal, TypeVar

import msgpack

from ..buffers import bytes_of
from ..frames import Buffer
from . import pickle
from .utils import byte_view, merge_frames, merged_in_place, split_frame

T = TypeVar("T")
Header = dict[str, Any]
Frames = list[Any]

DEFAULT_SERIALIZERS = ("dask", "pickle")
UNPACK_OPTIONS = {"raw": False, "strict_map_key": False, "use_list": False}


# --- Markers carried inside messages --------------------------------------------------


class Serialize:
    """Mark *data* to be serialized out of band (and deserialized on arrival)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<Serialize: {self.data}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Serialize) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)


to_serialize = Serialize


class Serialized:
    """An object already in ``(header, frames)`` form: forwarded without decoding."""

    def __init__(self, header: Header, frames: Sequence[Any]) -> None:
        self.header = header
        self.frames = frames

    def __repr__(self) -> str:
        return f"<Serialized: {self.header.get('type', self.header.get('serializer'))}>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Serialized)
            and other.header == self.header
            and list(other.frames) == list(self.frames)
        )

    __hash__ = None  # type: ignore[assignment]


class ToPickle(Generic[T]):
    """Mark *data* to be pickled; every receiver (scheduler included) unpickles it."""

    def __init__(self, data: T) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<ToPickle: {self.data!s}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)


class Pickled:
    """An object already pickled into ``(header, frames)``."""

    def __init__(self, header: Header, frames: Sequence[Any]) -> None:
        self.header = header
        self.frames = frames

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, type(self))
            and other.header == self.header
            and list(other.frames) == list(self.frames)
        )

    __hash__ = None  # type: ignore[assignment]


# --- The "dask" family: a per-type registry ------------------------------------------

Serializer = Callable[..., tuple[Header, Frames]]
Deserializer = Callable[[Header, Frames], Any]

_registry: dict[type, tuple[Serializer, Deserializer, bool]] = {}
# Registrations that need a heavy import happen the first time such a type shows up.
_lazy_registrations: dict[str, str] = {"numpy": "distributed_comm.protocol.numpy"}


def _accepts_context(func: Callable[..., Any] | None) -> bool:
    if func is None:
        return False
    try:
        return "context" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def register_serialization(cls: type, serialize: Serializer, deserialize: Deserializer) -> None:
    """Teach the ``"dask"`` family a type (subclasses included).

    ``serialize(obj[, context]) -> (header, frames)``; ``deserialize(header, frames) -> obj``.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_serialization needs a type, got {cls!r}")
    _registry[cls] = (serialize, deserialize, _accepts_context(serialize))


def _lookup(typ: type) -> tuple[Serializer, Deserializer, bool] | None:
    """The registration for *typ* or its nearest registered base class."""
    for base in typ.__mro__:
        entry = _registry.get(base)
        if entry is not None:
            return entry
    module = _lazy_registrations.pop(typ.__module__.partition(".")[0], None)
    if module is None:
        return None
    importlib.import_module(module)
    return _lookup(typ)


#: Type name -> ``(sends, receives)``: when the type's dask serializer hands
#: out the object's own memory as its frames (``sends(obj)``), and when its
#: deserializer builds the object over the (merged) frames as they are
#: (``receives(sub_header, frames)``). See :func:`serializing_work`, :func:`builds_in_place`.
_in_place: dict[str, tuple[Callable[[Any], bool], Callable[[Header, Frames], bool]]] = {}


def _never(*_: Any) -> bool:
    return False


def register_in_place(
    cls: type,
    sends: Callable[[Any], bool] = _never,
    receives: Callable[[Header, Frames], bool] = _never,
) -> None:
    """Declare when the dask serializer and deserializer of exactly *cls*
    (not its subclasses, which may serialize otherwise) touch none of the
    payload's bytes: such payloads do not count as (de)serialization work."""
    _in_place[_typename(cls)] = (sends, receives)


#: What (de)serializing one out-of-band object costs however small it is, in
#: bytes copied in the same time (a few microseconds of Python: ~16 KiB).
OBJECT_WORK = 2**14


def serializing_work(obj: Any) -> int | None:
    """:data:`OBJECT_WORK` if *obj* is a :class:`Serialize` whose payload the
    dask family sends as its own memory (reading and copying none of it,
    uncompressed), else None: the payload must be looked at."""
    if type(obj) is not Serialize:
        return None
    data = obj.data
    _lookup(type(data))  # makes a lazy registration (numpy's), as serializing would
    checks = _in_place.get(_typename(type(data)))
    return OBJECT_WORK if checks is not None and checks[0](data) else None


def builds_in_place(header: Header, frames: Frames) -> bool:
    """Whether deserializing *header* / *frames* reads none of the frames'
    bytes: a type registered with :func:`register_in_place` whose check
    passes, nothing compressed, shards side by side.

    It trusts the header's ``"type"``, the sender's word (as a type not
    registered yet counts as work, a peer's word imports nothing): a peer that
    lies makes the receiver deserialize on its event loop, as a peer can with
    any message just under the offload size.
    """
    name = header.get("type")
    if header.get("serializer") != "dask" or "is-collection" in header or type(name) is not str:
        return False
    checks = _in_place.get(name)
    if checks is None:
        return False
    if any(codec is not None for codec in header.get("compression") or ()):
        return False
    if "split-num-sub-frames" in header:
        shards = zip(header["split-num-sub-frames"], header["split-offsets"], strict=True)
        frames = [merged_in_place(frames[offset : offset + count]) for count, offset in shards]
        if any(frame is None for frame in frames):
            return False
    return checks[1](header.get("sub-header") or {}, frames)


def _typename(typ: type) -> str:
    if typ.__module__ in (None, "builtins"):
        return typ.__name__
    return f"{typ.__module__}.{typ.__qualname__}"


def dask_dumps(x: Any, context: dict | None = None) -> tuple[Header, Frames]:
    entry = _lookup(type(x))
    if entry is None:
        raise NotImplementedError(_typename(type(x)))
    dumps, _, wants_context = entry
    sub_header, frames = dumps(x, context=context) if wants_context else dumps(x)
    header = {
        "sub-header": sub_header,
        "type": _typename(type(x)),
        "type-serialized": pickle.dumps(type(x)),
        "serializer": "dask",
    }
    return header, frames


def dask_loads(header: Header, frames: Frames) -> Any:
    typ = pickle.loads(header["type-serialized"])
    entry = _lookup(typ) if isinstance(typ, type) else None
    if entry is None:
        raise TypeError(f"no dask deserializer registered for {header.get('type', typ)!r}")
    return entry[1](header["sub-header"], frames)


# --- The other families ---------------------------------------------------------------


def pickle_dumps(x: Any, context: dict | None = None) -> tuple[Header, Frames]:
    buffers: list[memoryview] = []
    protocol = context.get("pickle-protocol") if context else None
    data = pickle.dumps(x, buffer_callback=lambda b: buffers.append(b.raw()), protocol=protocol)
    header = {"serializer": "pickle", "writeable": tuple(not b.readonly for b in buffers)}
    return header, [data, *buffers]


def _with_writeable_flag(buffer: Any, writeable: bool) -> memoryview:
    """Give a buffer the writeability it had at the sender (copying only if needed)."""
    view = byte_view(buffer)
    if writeable and view.readonly:
        return memoryview(bytearray(view))
    if not writeable and not view.readonly:
        return view.toreadonly()
    return view


def pickle_loads(header: Header, frames: Frames) -> Any:
    flags = header.get("writeable", ())
    buffers = [_with_writeable_flag(b, w) for b, w in zip(frames[1:], flags, strict=True)]
    return pickle.loads(frames[0], buffers=buffers)


def msgpack_dumps(x: Any) -> tuple[Header, Frames]:
    try:
        frame = msgpack.packb(x, use_bin_type=True)
    except Exception:
        raise NotImplementedError(_typename(type(x))) from None
    return {"serializer": "msgpack"}, [frame]


def msgpack_loads(header: Header, frames: Frames) -> Any:
    return msgpack.unpackb(b"".join(frames), **UNPACK_OPTIONS)


def error_loads(header: Header, frames: Frames) -> Any:
    raise TypeError("\n".join(bytes(frame).decode("utf-8") for frame in frames))


families: dict[str, tuple[Callable | None, Callable, bool]] = {}


def register_serialization_family(
    name: str, dumps: Callable[..., tuple[Header, Frames]] | None, loads: Deserializer
) -> None:
    """Add a family usable in ``serializers=[..., name]``; *dumps* may take ``context``."""
    families[name] = (dumps, loads, _accepts_context(dumps))


register_serialization_family("dask", dask_dumps, dask_loads)
register_serialization_family("pickle", pickle_dumps, pickle_loads)
register_serialization_family("msgpack", msgpack_dumps, msgpack_loads)
register_serialization_family("error", None, error_loads)


# --- serialize / deserialize ----------------------------------------------------------

_COLLECTIONS: dict[str, type] = {"list": list, "tuple": tuple, "set": set, "dict": dict}


def _registry_serializable(x: Any) -> bool:
    """Whether *x* (or, for a collection, its first item) has a dask registration."""
    try:
        while type(x) in (list, tuple, set, dict) and x:
            x = next(iter(x.values())) if type(x) is dict else next(iter(x))
        return _lookup(type(x)) is not None
    except RecursionError:
        return False


def _should_iterate(x: Any, serializers: Sequence[str]) -> bool:
    # msgpack turns lists into tuples, so a list goes item by item when msgpack
    # would be tried before pickle.
    if type(x) is list and "msgpack" in serializers:
        if "pickle" not in serializers:
            return True
        if serializers.index("pickle") > serializers.index("msgpack"):
            return True
    return _registry_serializable(x)


def _msgpack_safe_keys(d: dict) -> bool:
    try:
        msgpack.packb(list(d), use_bin_type=True)
    except Exception:
        return False
    return True


def _serialize_collection(
    x: Any, serializers: Sequence[str], on_error: str, context: dict | None
) -> tuple[Header, Frames]:
    parts = []
    if type(x) is dict:
        for key, value in x.items():
            header, frames = serialize(value, serializers, on_error, context)
            header["key"] = key
            parts.append((header, frames))
    else:
        parts = [serialize(item, serializers, on_error, context) for item in x]
    frames: Frames = []
    compression: list[str | None] = []
    for header, sub_frames in parts:
        frames.extend(sub_frames)
        compression.extend(header.get("compression") or [None] * len(sub_frames))
    header = {
        "sub-headers": [h for h, _ in parts],
        "is-collection": True,
        "frame-lengths": [len(f) for _, f in parts],
        "type-serialized": type(x).__name__,
    }
    if any(compression):
        header["compression"] = compression
    return header, frames


def serialize(
    x: Any,
    serializers: Sequence[str] | None = None,
    on_error: Literal["message", "raise"] = "message",
    context: dict | None = None,
    iterate_collection: bool | None = None,
) -> tuple[Header, Frames]:
    """``(header, frames)`` for *x*, trying *serializers* (family names) in order.

    If none can, ``on_error="message"`` returns an ``"error"`` header whose
    deserialization raises ``TypeError``; ``on_error="raise"`` raises it now.
    """
    if serializers is None:
        serializers = DEFAULT_SERIALIZERS
    if isinstance(x, Serialized):
        return x.header, x.frames
    if isinstance(x, Serialize):
        return serialize(x.data, serializers, on_error, context, iterate_collection=True)

    # Exact types only: subclasses (namedtuple, defaultdict) would not survive.
    kind = type(x)
    if kind in (list, tuple, set, dict):
        if iterate_collection is None:
            iterate_collection = _should_iterate(x, serializers)
        if iterate_collection and (kind is not dict or _msgpack_safe_keys(x)):
            return _serialize_collection(x, serializers, on_error, context)

    error: Exception | None = None
    details = ""
    for name in serializers:
        if name not in families:
            raise ValueError(f"unknown serializer family {name!r}; known: {sorted(families)}")
        dumps, _, wants_context = families[name]
        if dumps is None:
            continue
        try:
            header, frames = dumps(x, context=context) if wants_context else dumps(x)
        except NotImplementedError:
            continue
        except Exception as exc:
            error, details = exc, traceback.format_exc()
            break
        header["serializer"] = name
        return header, frames

    shown = type(x.data) if isinstance(x, (ToPickle, Serialize)) else kind
    message = f"Could not serialize object of type {shown.__name__}"
    if on_error == "raise":
        try:
            text = str(x)[:10000]
        except Exception:
            raise TypeError(message) from error
        raise TypeError(message, text) from error
    if on_error != "message":
        raise ValueError(f"on_error={on_error!r}; expected 'message' or 'raise'")
    texts = [message, details[:100000]] if details else [message]
    return {"serializer": "error"}, [t.encode() for t in texts]


def deserialize(
    header: Header, frames: Sequence[Any], deserializers: Iterable[str] | None = None
) -> Any:
    """Rebuild the object described by *header* from *frames*.

    *deserializers* limits which families are acceptable (a scheduler may refuse
    anything but msgpack, for instance).
    """
    if "is-collection" in header:
        return _deserialize_collection(header, frames, deserializers)
    name = header.get("serializer")
    if deserializers is not None and name not in deserializers:
        raise TypeError(
            f"Data serialized with {name} but only able to deserialize "
            f"data with {list(deserializers)}"
        )
    if name not in families:
        raise TypeError(f"unknown serializer family {name!r} in header")
    return families[name][1](header, list(frames))


def _deserialize_collection(
    header: Header, frames: Sequence[Any], deserializers: Iterable[str] | None
) -> Any:
    kind = _COLLECTIONS.get(header["type-serialized"])
    if kind is None:
        raise TypeError(f"unknown collection type {header['type-serialized']!r}")
    start = 0
    items = []
    for sub_header, length in zip(header["sub-headers"], header["frame-lengths"], strict=True):
        items.append(
            (sub_header, deserialize(sub_header, frames[start : start + length], deserializers))
        )
        start += length
    if kind is dict:
        return {sub_header["key"]: value for sub_header, value in items}
    return kind(value for _, value in items)


def serialize_and_split(
    x: Any,
    serializers: Sequence[str] | None = None,
    on_error: Literal["message", "raise"] = "message",
    context: dict | None = None,
    size: int = 64 * 2**20,
) -> tuple[Header, Frames]:
    """:func:`serialize`, then cut each uncompressed frame into shards of *size* bytes."""
    header, frames = serialize(x, serializers, on_error, context)
    counts, offsets, out, compression = [], [], [], []
    codecs = header.get("compression") or [None] * len(frames)
    for frame, codec in zip(frames, codecs, strict=True):
        shards = split_frame(frame, size) if codec is None else [frame]
        counts.append(len(shards))
        offsets.append(len(out))
        out.extend(shards)
        compression.extend([codec] * len(shards))
    header["split-num-sub-frames"] = tuple(counts)
    header["split-offsets"] = tuple(offsets)
    header["compression"] = tuple(compression)
    return header, out


def merge_and_deserialize(
    header: Header, frames: Sequence[Buffer], deserializers: Iterable[str] | None = None
) -> Any:
    """Glue shards made by :func:`serialize_and_split` back, then :func:`deserialize`."""
    if "split-num-sub-frames" in header:
        shards = zip(header["split-num-sub-frames"], header["split-offsets"], strict=True)
        frames = [merge_frames(frames[offset : offset + count]) for count, offset in shards]
    return deserialize(header, frames, deserializers)


def nested_deserialize(x: Any, emulate_deserialize: bool = True) -> Any:
    """A copy of *x* with ``Serialize``/``Serialized``/``ToPickle`` replaced by their values.

    Used where a message skips the wire (in-process comms) but the receiver
    must see what it would have seen after a round trip.
    """
    kind = type(x)
    if kind is dict:
        return {k: nested_deserialize(v, emulate_deserialize) for k, v in x.items()}
    if kind is list or kind is tuple:
        return kind(nested_deserialize(v, emulate_deserialize) for v in x)
    if kind is ToPickle:
        return x.data
    if emulate_deserialize:
        if kind is Serialize:
            return x.data
        if kind is Serialized:
            return deserialize(x.header, x.frames)
    return x


# --- Built-in registrations -----------------------------------------------------------


def _join(frames: Frames) -> bytes:
    return b"".join(byte_view(f) for f in frames)


def _bytes_loads(header: Header, frames: Frames) -> bytes:
    if len(frames) == 1:
        frame = frames[0]
        if type(frame) is bytes:
            return frame
        received = bytes_of(frame)  # a received buffer that already is a bytes object
        if received is not None:
            return received
    return _join(frames)


def _bytearray_loads(header: Header, frames: Frames) -> bytearray:
    if len(frames) == 1 and type(frames[0]) is bytearray:
        return frames[0]
    return bytearray(_join(frames))


def _array_dumps(x: array) -> tuple[Header, Frames]:
    return {"typecode": x.typecode, "writeable": (None,)}, [memoryview(x)]


def _array_loads(header: Header, frames: Frames) -> array:
    out = array(header["typecode"])
    out.frombytes(frames[0] if len(frames) == 1 else _join(frames))
    return out


def _memoryview_dumps(x: memoryview) -> tuple[Header, Frames]:
    if x.format == "O":
        raise ValueError("cannot serialize a memoryview of Python objects")
    if x.nbytes == 0 and x.ndim > 1:
        raise ValueError("cannot serialize an empty memoryview with more than one dimension")
    return {"format": x.format, "shape": x.shape}, [x]


def _memoryview_loads(header: Header, frames: Frames) -> memoryview:
    view = byte_view(frames[0]) if len(frames) == 1 else memoryview(_join(frames))
    if view.nbytes == 0:
        return view.cast(header["format"])
    return view.cast(header["format"], header["shape"])


register_serialization(bytes, lambda x: ({}, [x]), _bytes_loads)
register_in_place(
    bytes,
    sends=lambda _: True,
    receives=lambda _, frames: (
        len(frames) == 1 and (type(frames[0]) is bytes or bytes_of(frames[0]) is not None)
    ),
)
register_serialization(bytearray, lambda x: ({}, [x]), _bytearray_loads)
register_in_place(bytearray, sends=lambda _: True)  # received: copied into a bytearray
register_serialization(array, _array_dumps, _array_loads)
register_serialization(memoryview, _memoryview_dumps, _memoryview_loads)
register_in_place(
    memoryview, sends=lambda x: x.contiguous, receives=lambda _, frames: len(frames) == 1
)
