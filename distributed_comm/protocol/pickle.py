"""Pickling with out-of-band buffers, and the one gate every unpickle goes through.

Protocol 5 hands large buffers (numpy data, bytes-likes) to a callback instead
of copying them into the pickle stream, so they can travel as their own frames.
Plain :mod:`pickle` is tried first because it is fast; cloudpickle takes over
for what only it can do (lambdas, local functions, ``__main__`` objects, modules
registered for pickling by value).
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL


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
    so a policy on whether peers may send pickles has exactly one place to live.
    """
    return pickle.loads(data, buffers=buffers)
