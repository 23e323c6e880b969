"""Pickling with out-of-band buffers, and the one gate every unpickle goes through.

Protocol 5 hands large buffers (numpy data, bytes-likes) to a callback instead
of copying them into the pickle stream, so they can travel as their own frames.
Plain :mod:`pickle` is tried first because it is fast; cloudpickle takes over
for what only it can do (lambdas, local functions, ``__main__`` objects, modules
registered for pickling by value).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cloudpickle

HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL


class PickleNotAllowedError(TypeError):
    """A message carried a pickle, but its comm was opened with ``allow_pickle=False``."""


# Whether the message being decoded may unpickle: a context variable, so a
# refusal set by ``protocol.loads`` covers every unpickle it leads to (pickle
# family, ``__Pickled__``, ``type-serialized``, numpy dtypes...) and nothing else.
_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar("allow_pickle", default=True)


@contextlib.contextmanager
def refused() -> Iterator[None]:
    """Make :func:`loads` refuse every payload for the duration of the block."""
    token = _allowed.set(False)
    try:
        yield
    finally:
        _allowed.reset(token)


def _needs_cloudpickle(x: Any, result: bytes) -> bool:
    # Plain pickle stores __main__ objects by reference, which the peer cannot resolve.
    if b"__main__" in result:
        return True
    by_value = cloudpickle.list_registry_pickle_by_value()
    return bool(by_value) and getattr(inspect.getmodule(x), "__name__", None) in by_value


def dumps(
    x: Any,
    *,
    buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
    protocol: int | None = None,
) -> bytes:
    """Pickle *x*; with a *buffer_callback* (protocol >= 5) large buffers go out of band."""
    protocol = protocol or HIGHEST_PROTOCOL
    buffers: list[pickle.PickleBuffer] = []
    options: dict[str, Any] = {"protocol": protocol}
    if buffer_callback is not None and protocol >= 5:
        options["buffer_callback"] = buffers.append
    try:
        result = pickle.dumps(x, **options)
        use_cloudpickle = _needs_cloudpickle(x, result)
    except Exception:
        use_cloudpickle = True
    if use_cloudpickle:
        buffers.clear()
        result = cloudpickle.dumps(x, **options)
    if buffer_callback is not None:
        for buffer in buffers:
            buffer_callback(buffer)
    return result


def loads(data: Any, *, buffers: Iterable[Any] = ()) -> Any:
    """Unpickle *data* with its out-of-band *buffers*.

    Every pickle payload received from a peer is loaded here and nowhere else,
    so the policy on whether peers may send pickles lives here: inside
    :func:`refused` nothing is unpickled (unpickling runs the sender's code).
    """
    if not _allowed.get():
        raise PickleNotAllowedError(
            "refusing to unpickle a payload from the peer: this comm accepts no "
            "pickles (allow_pickle=False / distributed.comm.allow-pickle)"
        )
    return pickle.loads(data, buffers=buffers)
