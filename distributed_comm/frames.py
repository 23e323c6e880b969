"""Frames on a byte stream, with no I/O (WIRE.md section 1).

A message is a list of frames.  On the stream it is preceded by a *prelude*:
the frame count and each frame's length, all unsigned 64-bit little-endian.
Everything here is a pure function over buffers so it can be tested without
sockets; the transports decide when to read and write.
"""

from __future__ import annotations

import functools
import struct
import sys
from collections import deque
from collections.abc import Sequence

import psutil

from distributed_comm import config
from distributed_comm.buffers import empty_buffer

Buffer = bytes | bytearray | memoryview

U64 = struct.Struct("<Q")
#: ``H``, the frame count and the one frame length of a one-frame message.
_SINGLE_FRAME_HEADER = struct.Struct("<3Q")


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


# ---------------------------------------------------------------------------
# Messages on a stream: ``[u64 H] [prelude] [frames...]`` (WIRE.md section 1)
# ---------------------------------------------------------------------------

#: The largest single send/recv: the ssl and socket layers take a C ``int``.
C_INT_MAX = 2**31 - 1

#: A reader takes heads up to this size out of its read-ahead buffer; larger
#: ones (carrying large frames) get a buffer of their own.
SMALL_MESSAGE = 2**17
#: Frames up to this size are copied into one buffer with their neighbours
#: when sent (cheaper than one more buffer per system call, or one more TLS
#: record); larger ones are sent from the caller's memory.
SMALL_FRAME = 2**15
#: Leading frames up to this size are read together with the prelude; larger
#: ones get a buffer of their own so their memory can be freed independently.
HEAD_FRAME_MAX = 2**16


def _owner(frame: Buffer) -> object:
    return frame.obj if isinstance(frame, memoryview) else frame


def head_count(frames: Sequence[Buffer], lengths: Sequence[int]) -> int:
    """How many leading frames travel in the head region (the K of WIRE.md).

    Small leading frames (headers, pickled bytes) always do. The first large
    frame joins them when the bytes before it are negligible, together with
    the frames that follow it as views of the same buffer (the shards of one
    array), so the reader lands those shards side by side in one buffer and
    the protocol can rejoin them without a copy. Anything after is read into
    buffers of its own so its memory can be freed independently.

    The large frame stays out if another object's memory (an array, not
    ``bytes``) comes before it: a reader that reads the head into one buffer,
    as distributed's does, would build it behind that one, unaligned.
    """
    count = len(lengths)
    k = head = 0
    only_bytes = True
    while k < count and lengths[k] <= HEAD_FRAME_MAX:
        head += lengths[k]
        only_bytes = only_bytes and isinstance(_owner(frames[k]), bytes)
        k += 1
    if k < count and only_bytes and head <= max(2048, lengths[k] // 20):
        owner = _owner(frames[k])
        k += 1
        while k < count and _owner(frames[k]) is owner:
            k += 1
    return k


def encode(frames: Sequence[Buffer]) -> tuple[list[Buffer], int]:
    """The buffers to hand to the stream for one message, and their total size.

    The header and each run of small frames (up to :data:`SMALL_FRAME`)
    become one joined ``bytes``, so a small message is a single buffer;
    larger frames pass through untouched (as byte-cast views, cut at
    :data:`C_INT_MAX`), so large payloads are never copied.
    """
    if len(frames) == 1 and type(frames[0]) is bytes and len(frames[0]) <= SMALL_FRAME:
        # A small one-frame message (a ``{"op": ...}`` dict): the hot path.
        body = frames[0]
        size = len(body)
        header = _SINGLE_FRAME_HEADER.pack(U64.size * 2 + size, 1, size)
        return [header + body], _SINGLE_FRAME_HEADER.size + size
    lengths = [nbytes(frame) for frame in frames]
    count = len(lengths)
    k = head_count(frames, lengths)
    head = U64.size * (count + 1) + sum(lengths[:k])
    header = struct.pack(f"<{count + 2}Q", head, count, *lengths)
    total = len(header) + sum(lengths)
    parts: list[Buffer] = []
    small: list[Buffer] = [header]
    for frame, length in zip(frames, lengths, strict=True):
        if length <= SMALL_FRAME:
            small.append(frame)
            continue
        if small:
            parts.append(b"".join(small))
            small = []
        view = memoryview(frame).cast("B")
        parts.extend(
            chunks(view) if length > C_INT_MAX else [frame if isinstance(frame, bytes) else view]
        )
    if small:
        parts.append(b"".join(small))
    return parts, total


def chunks(view: memoryview, size: int | None = None) -> list[memoryview]:
    """*view* cut into slices of at most *size* (default :data:`C_INT_MAX`)
    bytes: one per send/recv call."""
    size = size or C_INT_MAX
    total = view.nbytes
    if total <= size:
        return [view]
    return [view[start : start + size] for start in range(0, total, size)]


@functools.cache
def _total_memory() -> int:
    """This machine's RAM; asked once (psutil reads /proc/meminfo, too slow per comm)."""
    return psutil.virtual_memory().total


class Limits:
    """The largest message a reader accepts, checked before any allocation.

    A peer that announces more (by mistake or malice) is refused instead of
    making this process allocate memory it never gets data for.
    """

    __slots__ = ("max_frames", "max_message_size", "_largest_head")

    def __init__(self, max_frames: int, max_message_size: int) -> None:
        if max_frames < 0 or max_message_size < 0:
            raise ValueError(
                f"limits must be >= 0, got max_frames={max_frames}, "
                f"max_message_size={max_message_size}"
            )
        self.max_frames = max_frames
        self.max_message_size = max_message_size
        self._largest_head = U64.size * (max_frames + 1) + max_message_size

    @classmethod
    def from_config(cls) -> Limits:
        """``distributed.comm.max-frames`` and ``max-message-size`` ("auto" = RAM / 4)."""
        size = config.get("distributed.comm.max-message-size")
        if size == "auto":
            size = _total_memory() // 4
        return cls(int(config.get("distributed.comm.max-frames")), config.parse_bytes(size))

    def __repr__(self) -> str:
        return f"Limits(max_frames={self.max_frames}, max_message_size={self.max_message_size})"

    def check_head_size(self, head: int) -> None:
        """Refuse a head region (``H``) larger than any acceptable message."""
        largest = self._largest_head
        if head < U64.size or head > largest:
            raise ValueError(
                f"message head of {head} bytes is outside 8..{largest} "
                "(distributed.comm.max-frames / max-message-size); "
                "not a distributed_comm peer, or a corrupted stream"
            )

    def check_count(self, count: int, head_size: int) -> None:
        """Refuse a frame count over the limit or too large for its head."""
        if count > self.max_frames:
            raise ValueError(
                f"message declares {count} frames; the limit is {self.max_frames} "
                "(distributed.comm.max-frames)"
            )
        if U64.size * (count + 1) > head_size:
            raise ValueError(
                f"message head of {head_size} bytes cannot hold the prelude of {count} frames"
            )

    def parse_prelude(self, prelude: memoryview, head_size: int) -> tuple[list[int], int]:
        """Frame lengths from a prelude, and how many of them (K) the head of
        *head_size* bytes holds. Counts and sizes are checked against the
        limits before anyone allocates for them.
        """
        if len(prelude) < U64.size:
            raise ValueError(f"message head of {len(prelude)} bytes has no frame count")
        (count,) = U64.unpack_from(prelude)
        self.check_count(count, head_size)
        start = U64.size * (count + 1)
        lengths = list(_lengths_format(count).unpack_from(prelude, U64.size))
        size = sum(lengths)
        if size > self.max_message_size:
            raise ValueError(
                f"message declares {size} bytes; the limit is {self.max_message_size} "
                "(distributed.comm.max-message-size)"
            )
        k, rest = 0, head_size - start
        while k < count and lengths[k] <= rest:
            rest -= lengths[k]
            k += 1
        if rest and k < count:
            raise ValueError(
                f"message head of {head_size} bytes ends inside frame {k}; "
                "a head must hold whole frames"
            )
        if rest:
            raise ValueError(f"message head has {rest} bytes after its last frame")
        return lengths, k

    def split_head(self, head: memoryview) -> tuple[list[memoryview], list[int]]:
        """Parse a whole head region: zero-copy views of its K frames, and the
        lengths of the frames still to be read."""
        lengths, k = self.parse_prelude(head, head.nbytes)
        start = U64.size * (len(lengths) + 1)
        return slice_frames(head[start:], lengths[:k]), lengths[k:]


@functools.lru_cache(maxsize=64)
def _lengths_format(count: int) -> struct.Struct:
    """The layout of *count* frame lengths (messages reuse a few counts)."""
    return struct.Struct(f"<{count}Q")


def slice_frames(buffer: memoryview, lengths: Sequence[int]) -> list[memoryview]:
    """Consecutive views of *buffer*, one per length."""
    views, start = [], 0
    for length in lengths:
        views.append(buffer[start : start + length])
        start += length
    return views


#: How many bytes one receive asks for while reading ahead: enough for many
#: small messages per system call.
READ_AHEAD = 2**16


class Decoder:
    """Cuts a received byte stream into messages (WIRE.md section 1), without I/O.

    Ask :meth:`buffer` where the next bytes go, receive up to its length
    there (``socket.recv_into``), then report how many arrived to
    :meth:`received`. Complete messages collect in :attr:`messages` as
    ``(frames, size)``, ``size`` counting the head region and every frame.

    Small messages are read ahead, many per receive, into a shared buffer
    and handed out as views of it (that buffer is only ever appended to, so
    views stay valid). A message's large frames get fresh buffers of their
    own and :meth:`buffer` points straight into them, so a payload is never
    copied. Counts and sizes are checked against the limits before anything
    is allocated for them; a stream that breaks them raises ``ValueError``.

    Once the complete messages waiting reach *max_queued_messages* or
    *max_queued_bytes* (:attr:`full`), received bytes are kept but not parsed,
    so nothing is allocated for the next message until :meth:`pop` and
    :meth:`resume` make room: a reader holding the last messages is not made
    to hold fresh memory for the next ones too.
    """

    def __init__(
        self,
        limits: Limits,
        max_queued_messages: int = sys.maxsize,
        max_queued_bytes: int = sys.maxsize,
    ) -> None:
        self.limits = limits
        self.messages: deque[tuple[list[memoryview], int]] = deque()
        #: The sizes of :attr:`messages` added up (take messages with :meth:`pop`).
        self.queued_bytes = 0
        self._max_queued_messages = max_queued_messages
        self._max_queued_bytes = max_queued_bytes
        #: The largest head a one-frame message may have to be taken by the
        #: fast path of :meth:`_parse` (it needs no other limit check).
        self._single_frame_head_max = (
            min(SMALL_MESSAGE, U64.size * 2 + limits.max_message_size)
            if limits.max_frames >= 1
            else 0
        )
        self._ahead = memoryview(bytearray(READ_AHEAD))
        self._start = self._end = 0  # bytes not parsed yet: _ahead[_start:_end]
        self._targets: deque[memoryview] = deque()  # where the current message's rest goes
        self._frames: list[memoryview] = []
        self._size = 0

    def buffer(self) -> memoryview:
        """Where the next received bytes go (never empty)."""
        if self._targets:
            return self._targets[0]
        if self._end == len(self._ahead):  # (all of it unparsed, if the queue is full)
            self._renew(self._end - self._start + READ_AHEAD)
        return self._ahead[self._end :]

    def received(self, count: int) -> None:
        """*count* bytes were written at the start of :meth:`buffer`."""
        if self._targets:
            self._advance(count)
        else:
            self._end += count
            self._parse()

    def pop(self) -> tuple[list[memoryview], int]:
        """The first complete message: ``(frames, size)``."""
        message = self.messages.popleft()
        self.queued_bytes -= message[1]
        return message

    @property
    def full(self) -> bool:
        """Whether the waiting messages reached the queue limits (parsing waits)."""
        return (
            len(self.messages) >= self._max_queued_messages
            or self.queued_bytes >= self._max_queued_bytes
        )

    def resume(self) -> None:
        """Parse what was received while the queue was full (call after :meth:`pop`)."""
        if not self._targets:
            self._parse()

    def feed(self, data: Buffer) -> None:
        """Take bytes received elsewhere (they are copied)."""
        view = memoryview(data).cast("B")
        while view.nbytes:
            target = self.buffer()
            count = min(target.nbytes, view.nbytes)
            target[:count] = view[:count]
            view = view[count:]
            self.received(count)

    @property
    def in_frame(self) -> bool:
        """Whether :meth:`buffer` is inside a large frame's own buffer (not reading ahead)."""
        return bool(self._targets)

    def at_message_boundary(self) -> bool:
        """Whether no message is partly received (the stream may end cleanly here)."""
        return not self._targets and self._start == self._end

    def _advance(self, count: int) -> None:
        target = self._targets[0]
        if count < target.nbytes:
            self._targets[0] = target[count:]
            return
        self._targets.popleft()
        if not self._targets:
            self._complete(self._frames, self._size)
            self._frames = []  # the reader owns them now: don't keep them alive

    def _complete(self, msg_frames: list[memoryview], size: int) -> None:
        self.messages.append((msg_frames, size))
        self.queued_bytes += size

    def _renew(self, size: int) -> None:
        """Continue in a fresh read-ahead buffer of at least *size* bytes,
        carrying over the unparsed bytes (views of the old one stay valid)."""
        pending = self._ahead[self._start : self._end]
        self._ahead = memoryview(bytearray(max(size, READ_AHEAD)))
        self._ahead[: pending.nbytes] = pending
        self._start, self._end = 0, pending.nbytes

    def _wait_for(self, needed: int) -> None:
        """Make sure *needed* bytes from the parse position fit the read-ahead buffer."""
        if self._start + needed > len(self._ahead):
            self._renew(needed)

    def _parse(self) -> None:
        ahead, limits = self._ahead, self.limits
        while not self._targets and not self.full:
            start = self._start
            available = self._end - start
            if available >= _SINGLE_FRAME_HEADER.size:
                # The fast path: a small one-frame message (a ``{"op": ...}``
                # dict), all here. Anything else takes the general path below.
                head_size, count, length = _SINGLE_FRAME_HEADER.unpack_from(ahead, start)
                end = start + U64.size + head_size
                if (
                    count == 1
                    and head_size == U64.size * 2 + length
                    and head_size <= self._single_frame_head_max
                    and end <= self._end
                ):
                    self._complete([ahead[start + _SINGLE_FRAME_HEADER.size : end]], head_size)
                    self._start = end
                    continue
            if available < U64.size:
                self._wait_for(U64.size)
                return
            (head_size,) = U64.unpack_from(ahead, start)
            limits.check_head_size(head_size)
            if head_size <= SMALL_MESSAGE:
                end = start + U64.size + head_size
                if end > self._end:
                    self._wait_for(U64.size + head_size)
                    return
                msg_frames, missing = limits.split_head(ahead[start + U64.size : end])
            else:
                # A head carrying large frames: only its prelude is read
                # ahead; the frames go into an aligned buffer of their own.
                if available < 2 * U64.size:
                    self._wait_for(2 * U64.size)
                    return
                (count,) = U64.unpack_from(ahead, start + U64.size)
                limits.check_count(count, head_size)
                end = start + U64.size * (count + 2)
                if end > self._end:
                    self._wait_for(end - start)
                    return
                lengths, k = limits.parse_prelude(ahead[start + U64.size : end], head_size)
                # The head's leading frames apart from its first large one
                # and what follows (its shards), which thus start a buffer:
                # aligned, and a payload's frames exactly one buffer.
                small = next((i for i in range(k) if lengths[i] > HEAD_FRAME_MAX), k)
                msg_frames = self._allocate(lengths[:small]) + self._allocate(lengths[small:k])
                missing = lengths[k:]
            for length in missing:
                msg_frames.extend(self._allocate([length]))
            self._start = end
            self._size = head_size + sum(missing)
            if self._targets:
                self._frames = msg_frames
                self._take_read_ahead()
            else:
                self._complete(msg_frames, self._size)
            ahead = self._ahead

    def _allocate(self, lengths: list[int]) -> list[memoryview]:
        """Fresh buffers for consecutive frames (one region), which
        :meth:`buffer` will point into. Running out of memory is reported
        like a broken limit: the frames cannot be skipped, so the stream
        cannot go on."""
        try:
            region = empty_buffer(sum(lengths))
        except (MemoryError, OverflowError) as exc:  # Overflow: beyond what a bytes can hold
            raise ValueError(
                f"cannot allocate {sum(lengths)} bytes for a message's frames: {exc!r}"
            ) from exc
        if region.nbytes:
            self._targets.extend(chunks(region))
        return slice_frames(region, lengths)

    def _take_read_ahead(self) -> None:
        """Move bytes already read ahead into the current message's buffers."""
        while self._targets and self._start < self._end:
            target = self._targets[0]
            count = min(target.nbytes, self._end - self._start)
            target[:count] = self._ahead[self._start : self._start + count]
            self._start += count
            self._advance(count)
