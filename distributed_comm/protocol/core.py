"""Messages to frames and back: ``dumps`` / ``loads`` (WIRE.md section 3).

``frames[0]`` is the msgpack body.  Objects marked :class:`Serialize` or
:class:`ToPickle` (and anything msgpack cannot encode) travel out of band as a
sub-header frame followed by their own frames; the body holds only
``{"__Serialized__": i}`` / ``{"__Pickled__": i}``, the index of the sub-header.

The common message is a small dict of plain values: it costs one
``msgpack.packb`` and one ``msgpack.unpackb``.  The encoding hook only runs
when plain msgpack refuses the message.
"""

from __future__ import annotations

import enum
import importlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any, Literal

import msgpack

from .. import config
from ..buffers import kept_view
from ..codec import rough_nbytes
from ..frames import Limits, nbytes
from . import pickle
from .compression import decompress, maybe_compress, resolve
from .serialize import (
    OBJECT_WORK,
    UNPACK_OPTIONS,
    Pickled,
    Serialize,
    Serialized,
    ToPickle,
    builds_in_place,
    merge_and_deserialize,
    serialize_and_split,
    serializing_work,
)

logger = logging.getLogger(__name__)

_packb = msgpack.packb
_unpackb = msgpack.unpackb


# --- Settings, read once -------------------------------------------------------------

_settings: dict[str, Any] | None = None


@config.on_change
def refresh_settings() -> None:
    """Forget the cached settings; ``config`` calls this whenever they change."""
    global _settings
    _settings = None
    _allowed_modules.clear()


def _setting(name: str) -> Any:
    global _settings
    settings = _settings
    if settings is None:
        allowed = config.get("distributed.scheduler.allowed-imports")
        settings = _settings = {
            "shard": config.parse_bytes(config.get("distributed.comm.shard")),
            "allowed-imports": tuple(allowed),
            "max-message-size": Limits.from_config().max_message_size,
        }
    return settings[name]


# --- Plain msgpack extensions: set and Enum -----------------------------------------

_allowed_modules: dict[str, ModuleType] = {}


def _import_allowed(name: str) -> ModuleType:
    """Import *name* if its top-level package is allow-listed (Enum decoding)."""
    module = _allowed_modules.get(name)
    if module is not None:
        return module
    root = name.partition(".")[0]
    if not name.isascii() or not root or root not in _setting("allowed-imports"):
        raise RuntimeError(
            f"Importing {name!r} is not allowed; add it to the "
            "distributed.scheduler.allowed-imports setting"
        )
    module = _allowed_modules[name] = importlib.import_module(name)
    return module


def _encode_plain(obj: Any) -> Any:
    """msgpack ``default`` for sub-headers: sets and Enum members."""
    if isinstance(obj, enum.Enum):
        return {
            "__Enum__": True,
            "name": obj.name,
            "__module__": type(obj).__module__,
            "__name__": type(obj).__name__,
        }
    if isinstance(obj, set):
        return {"__Set__": True, "as-list": list(obj)}
    return obj


def _decode_plain(obj: dict) -> Any:
    """msgpack ``object_hook``: sets and Enum members, every other map as is."""
    if "__Set__" in obj:
        return set(obj["as-list"])
    if "__Enum__" in obj:
        module = _import_allowed(obj["__module__"])
        return getattr(getattr(module, obj["__name__"]), obj["name"])
    return obj


# --- dumps ---------------------------------------------------------------------------

_fallback_logged = False


def _log_pickle_fallback(obj: Any) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        logger.info(
            "msgpack cannot encode %s; pickling such objects (logged once)", type(obj).__name__
        )


class _Encoder:
    """One ``dumps`` call that needs out-of-band frames."""

    def __init__(
        self,
        serializers: Sequence[str] | None = None,
        on_error: Literal["message", "raise"] = "message",
        context: dict | None = None,
        frame_split_size: int | None = None,
    ) -> None:
        self.serializers = serializers
        self.on_error = on_error
        self.context = context
        self.codec = resolve(context.get("compression")) if context else None
        self.pickle_protocol = context.get("pickle-protocol") if context else None
        self.split_size = frame_split_size or _setting("shard")
        self.frames: list[Any] = [b""]

    def _compress(self, header: dict, frames: list[Any]) -> None:
        codecs = list(header.get("compression") or [None] * len(frames))
        for i, codec in enumerate(codecs):
            if codec is None:
                codecs[i], frames[i] = maybe_compress(frames[i], self.codec)
        header["compression"] = tuple(codecs)

    def _append(self, header: dict, frames: list[Any]) -> int:
        index = len(self.frames)
        header = {**header, "num-sub-frames": len(frames)}
        self.frames.append(_packb(header, use_bin_type=True, default=_encode_plain))
        self.frames.extend(frames)
        return index

    def serialized(self, obj: Serialize | Serialized) -> dict:
        if isinstance(obj, Serialized):
            return {"__Serialized__": self._append(obj.header, list(obj.frames))}
        header, frames = serialize_and_split(
            obj, self.serializers, self.on_error, self.context, self.split_size
        )
        self._compress(header, frames)
        return {"__Serialized__": self._append(header, frames)}

    def pickled(self, obj: ToPickle | Pickled) -> dict:
        if isinstance(obj, Pickled):
            return {"__Pickled__": self._append(obj.header, list(obj.frames))}
        frames: list[Any] = []
        data = pickle.dumps(
            obj.data,
            buffer_callback=lambda buffer: frames.append(buffer.raw()),
            protocol=self.pickle_protocol,
        )
        header = {"pickled-obj": data}
        self._compress(header, frames)
        return {"__Pickled__": self._append(header, frames)}

    def default(self, obj: Any) -> Any:
        if isinstance(obj, (Serialize, Serialized)):
            return self.serialized(obj)
        if isinstance(obj, (ToPickle, Pickled)):
            return self.pickled(obj)
        encoded = _encode_plain(obj)
        if encoded is not obj:
            return encoded
        _log_pickle_fallback(obj)
        return self.pickled(ToPickle(obj))

    def encode(self, msg: Any) -> list[Any]:
        self.frames[0] = _packb(msg, use_bin_type=True, default=self.default)
        return self.frames


def dumps_plain(msg: Any) -> bytes | None:
    """*msg* as its one msgpack frame if msgpack alone encodes it (most control
    messages), else ``None``: then it needs :func:`dumps` and its hooks.

    Cheap to run on the event loop whatever the message: all of it happens in
    msgpack's C code, which holds the GIL on any thread, so offloading it would
    not keep the loop any more responsive.
    """
    try:
        return _packb(msg, use_bin_type=True)
    except (TypeError, OverflowError):
        return None  # needs the hook: Serialize, ToPickle, set, Enum, ints beyond 64 bits...


def dumps_with_hooks(msg: Any, **dumps_args: Any) -> list[Any]:
    """:func:`dumps` (same keywords) for a message :func:`dumps_plain` refused;
    msgpack alone is not tried again."""
    return _Encoder(**dumps_args).encode(msg)


def dumps(
    msg: Any,
    serializers: Sequence[str] | None = None,
    on_error: Literal["message", "raise"] = "message",
    context: dict | None = None,
    frame_split_size: int | None = None,
) -> list[Any]:
    """Frames for *msg*: the msgpack body, then each out-of-band object's frames.

    *context* is what the comm negotiated (``"compression"``, ``"pickle-protocol"``,
    plus ``"sender"``/``"recipient"`` info); frames are compressed only when it
    names a codec.  Large frames are cut at *frame_split_size* (default: the
    ``distributed.comm.shard`` setting).
    """
    body = dumps_plain(msg)
    if body is not None:
        return [body]
    return dumps_with_hooks(
        msg,
        serializers=serializers,
        on_error=on_error,
        context=context,
        frame_split_size=frame_split_size,
    )


def dumps_work(msg: Any, **dumps_args: Any) -> int:
    """A cheap estimate of how many bytes :func:`dumps` (same arguments)
    reads or copies for *msg*.

    :func:`~distributed_comm.codec.rough_nbytes`, except that a payload the
    dask family sends as its own memory (a contiguous array, bytes) counts
    :data:`~.serialize.OBJECT_WORK` however large it is; not so when another
    family comes first in ``serializers``, or the peer agreed to compression
    (``context["compression"]``: any large frame may be compressed). A comm
    moves ``dumps`` to its offload thread by this.
    """
    serializers = dumps_args.get("serializers")
    context = dumps_args.get("context") or {}
    if context.get("compression") or (serializers is not None and not _dask_first(serializers)):
        return rough_nbytes(msg)
    return rough_nbytes(msg, known=serializing_work)


def _dask_first(serializers: Sequence[str]) -> bool:
    return len(serializers) > 0 and serializers[0] == "dask"


# --- loads ---------------------------------------------------------------------------


def _sub_frames(frames: Sequence[Any], index: int) -> tuple[dict, list[Any]]:
    header = _unpackb(frames[index], object_hook=_decode_plain, **UNPACK_OPTIONS)
    if not isinstance(header, dict):
        raise ValueError(f"sub-header at frame {index} is a {type(header).__name__}, not a map")
    count = header.get("num-sub-frames", 0)
    if type(count) is not int or count < 0:
        raise ValueError(f"sub-header at frame {index} declares {count!r} frames")
    if index + count >= len(frames):
        raise ValueError(
            f"sub-header at frame {index} needs {count} frames but only "
            f"{len(frames) - index - 1} follow"
        )
    return header, list(frames[index + 1 : index + 1 + count])


def _out_of_band_objects(
    frames: Sequence[Any], header_limit: int | None = None
) -> Iterator[tuple[int, dict, list[Any]]]:
    """``(index, sub-header, frames)`` of each out-of-band object, in order.

    A writer (ours or distributed's) puts each object's sub-header right
    after the frames of the one before, from frame 1 on: ``ValueError`` where
    the frames do not chain up so, or a sub-header is over *header_limit* bytes.
    """
    index = 1
    while index < len(frames):
        if header_limit is not None and nbytes(frames[index]) > header_limit:
            raise ValueError(f"sub-header at frame {index} is over {header_limit} bytes")
        header, sub_frames = _sub_frames(frames, index)
        yield index, header, sub_frames
        index += 1 + len(sub_frames)


#: What :func:`loads` raises on input it cannot or will not decode.
LOADS_ERRORS = (ValueError, TypeError, RuntimeError)


def loads(
    frames: Sequence[Any], deserialize: bool = True, deserializers: Iterable[str] | None = None
) -> Any:
    """The message encoded in *frames* by :func:`dumps` (ours or distributed's).

    Lists come back as tuples.  With ``deserialize=False`` out-of-band objects
    stay :class:`Serialized` so they can be forwarded untouched; pickled ones
    (``ToPickle``) are always unpickled (see :func:`loads_untrusted`).

    Only :data:`LOADS_ERRORS` escape: ``ValueError`` for malformed frames,
    ``TypeError`` for content refused or not understood here (a pickle when
    none is allowed, an unknown serializer, a peer's "could not serialize"
    report), ``RuntimeError`` for an Enum from a module not in
    ``distributed.scheduler.allowed-imports``.  Anything else raised while
    decoding (say, by a peer's pickle) becomes a ``ValueError`` chained to it;
    ``MemoryError`` passes through.
    """
    try:
        if len(frames) == 1:
            return _unpackb(frames[0], object_hook=_decode_plain, **UNPACK_OPTIONS)
        return _loads_out_of_band(frames, deserialize, deserializers)
    except msgpack.UnpackException as exc:  # some carry no message at all
        raise ValueError(f"malformed msgpack: {type(exc).__name__} {exc}".rstrip()) from exc
    except (*LOADS_ERRORS, MemoryError):
        raise
    except Exception as exc:
        raise ValueError(
            f"could not decode a message of {len(frames)} frames: {type(exc).__name__}: {exc}"
        ) from exc


#: A sub-header larger than this holds a large in-band pickle: reading it is work.
_HEADER_READ_LIMIT = 2**16


def loads_work(frames: Sequence[Any], limit: int | None = None) -> int:
    """How many bytes :func:`loads` reads or copies to decode *frames*; given
    a *limit*, a number on the same side of it, found as cheaply as possible.

    Every byte counts but those of frames a deserializer adopts as they are
    (see :func:`~.serialize.builds_in_place`: a numpy array or ``bytes``
    payload received into its own buffer), and each out-of-band object adds
    :data:`~.serialize.OBJECT_WORK`. A comm moves a message to its offload
    thread by this, not by size, since the hop costs more than building an
    array over a buffer. It reads only the sub-headers (small ones: a large
    one is an in-band pickle); if it cannot read them, every byte counts
    (``loads`` will say what is wrong).
    """
    size = sum(map(nbytes, frames))
    most = size + OBJECT_WORK * max(len(frames) - 1, 0)  # all read, each frame an object
    if limit is not None and most <= limit:
        return most  # under the limit whatever the frames hold: nothing to read
    work = nbytes(frames[0]) if frames else 0
    try:
        for _, header, sub_frames in _out_of_band_objects(frames, _HEADER_READ_LIMIT):
            work += OBJECT_WORK
            if not builds_in_place(header, sub_frames):
                work += sum(map(nbytes, sub_frames))
            if limit is not None and work > limit:
                break
    except Exception:  # noqa: BLE001 - malformed: saying how is loads' job
        return max(work, size)
    return work


def loads_untrusted(
    frames: Sequence[Any], deserialize: bool = True, deserializers: Iterable[str] | None = None
) -> Any:
    """:func:`loads` for a peer that must not run code here: any pickle,
    cloudpickle or ``type-serialized`` payload raises
    :class:`~.pickle.PickleNotAllowedError` (a ``TypeError``) unopened.

    Plain msgpack, sets, allow-listed Enums and ``Serialized`` objects kept
    as they are (``deserialize=False``) still decode.
    """
    with pickle.refused():
        return loads(frames, deserialize, deserializers)


def _loads_out_of_band(
    frames: Sequence[Any], deserialize: bool, deserializers: Iterable[str] | None
) -> Any:
    """:func:`loads` for a message whose body refers to other frames."""
    if not frames:
        raise ValueError("a message has at least one frame; got none")

    objects = {index: (header, sub) for index, header, sub in _out_of_band_objects(frames)}

    def out_of_band(index: int) -> tuple[dict, list[Any]]:
        if index not in objects:
            raise ValueError(f"message refers to frame {index}, which holds no sub-header")
        return objects[index]

    def decode(obj: dict) -> Any:
        index = obj.get("__Serialized__", 0)
        if index > 0:
            header, sub_frames = out_of_band(index)
            if not deserialize:  # the caller keeps these frames
                return Serialized(header, [kept_view(frame) for frame in sub_frames])
            if "compression" in header:
                sub_frames = decompress(
                    header["compression"], sub_frames, _setting("max-message-size")
                )
            return merge_and_deserialize(header, sub_frames, deserializers)
        index = obj.get("__Pickled__", 0)
        if index > 0:
            header, sub_frames = out_of_band(index)
            if "compression" in header:
                sub_frames = decompress(
                    header["compression"], sub_frames, _setting("max-message-size")
                )
            return pickle.loads(header["pickled-obj"], buffers=sub_frames)
        return _decode_plain(obj)

    return _unpackb(frames[0], object_hook=decode, **UNPACK_OPTIONS)
