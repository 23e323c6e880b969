"""Python messages to frames and back, wire-compatible with ``distributed.protocol``.

No sockets and no event loop here: transports move the frames this produces.
numpy is imported only when a numpy object is actually (de)serialized.
"""

from ..frames import pack_frames, unpack_frames

# Ours, beyond distributed's names: LOADS_ERRORS, loads_untrusted, loads_work,
# dumps_work, dumps_plain, dumps_with_hooks, PickleNotAllowedError.
from .core import (  # noqa: F401
    LOADS_ERRORS,
    dumps,
    dumps_plain,
    dumps_with_hooks,
    dumps_work,
    loads,
    loads_untrusted,
    loads_work,
)
from .pickle import PickleNotAllowedError  # noqa: F401
from .serialize import (
    Pickled,
    Serialize,
    Serialized,
    ToPickle,
    deserialize,
    nested_deserialize,
    register_serialization,
    register_serialization_family,
    serialize,
    to_serialize,
)

__all__ = [
    "dumps",
    "loads",
    "serialize",
    "deserialize",
    "to_serialize",
    "Serialize",
    "Serialized",
    "ToPickle",
    "Pickled",
    "register_serialization",
    "register_serialization_family",
    "pack_frames",
    "unpack_frames",
    "nested_deserialize",
]
