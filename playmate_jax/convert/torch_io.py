"""Reading PyTorch checkpoints without PyTorch.

`torch.save` (since 1.6) writes a zip archive: `<name>/data.pkl` is a pickle whose tensors refer, through
pickle's persistent IDs, to raw little-endian storages stored as `<name>/data/<key>`. We unpickle with a
restricted unpickler that knows only the handful of globals a state dict uses, and rebuild each tensor as a
numpy view of its storage (offset, shape and strides in elements). Safetensors is a JSON header followed by
raw buffers. Nothing here executes code from the file.
"""

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from playmate_jax.errors import UserError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {  # torch.<dtype> objects, as pickled inside UntypedStorage-era files
    "float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16, "int64": np.int64,
    "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16, "int8": np.int8,
    "uint8": np.uint8, "bool": np.bool_,
}


class _StorageType:
  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2: a strided view of `storage` (a 1-D numpy array); ValueError when the view
  would reach outside the storage (a damaged file: as_strided would read whatever memory lies beyond)."""
  size, stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)
  last = int(offset) + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else int(offset) - 1
  if int(offset) < 0 or min(stride, default=0) < 0 or len(size) != len(stride) or last >= len(storage):
    raise ValueError(f"a tensor of shape {size} reaches past its storage of {len(storage)} elements")
  if not size:
    return np.array(storage[offset])  # a 0-d array (e.g. BatchNorm's num_batches_tracked)
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view)  # own the memory, C order


def _rebuild_parameter(data, *unused):
  return data


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(file)
    self._archive, self._prefix, self._path = archive, prefix, path
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if module == "torch" and name in _TORCH_DTYPES:
      return _StorageType(_TORCH_DTYPES[name])
    if module == "builtins" and name in ("set", "frozenset", "tuple", "list", "dict"):
      return getattr(__builtins__, name) if not isinstance(__builtins__, dict) else __builtins__[name]
    if module in ("argparse",) and name == "Namespace":  # some training scripts save their args
      import argparse
      return argparse.Namespace
    raise UserError(f"{self._path} holds a Python object of type {module}.{name}, which a weights file "
                    "should not contain; save the model's state_dict() with torch.save and convert that.")

  def persistent_load(self, pid):
    # ('storage', storage_type, key, location, numel)
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise UserError(f"{self._path} is not a PyTorch state dict this converter understands "
                      f"(unknown persistent id {pid!r}).")
    storage_type, key = pid[1], str(pid[2])
    if key not in self._storages:
      try:
        raw = self._archive.read(f"{self._prefix}/data/{key}")
      except KeyError:
        raise UserError(f"{self._path} is truncated: tensor storage {key} is missing from the archive; "
                        "download or save the file again.") from None
      self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
    return self._storages[key]


def load_torch_file(path: str | os.PathLike) -> Any:
  """Unpickle a torch.save zip file into the same structure, with every tensor as a numpy array."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist; check the path (or --src folder) you gave.")
  if not zipfile.is_zipfile(path):
    raise UserError(f"{path} is not a torch.save zip archive (it may be truncated, or saved by PyTorch "
                    "older than 1.6); re-download it, or re-save it with a current PyTorch.")
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
      if not pickles:
        raise UserError(f"{path} is a zip archive without data.pkl, so not a PyTorch checkpoint.")
      prefix = pickles[0][: -len("/data.pkl")] if "/" in pickles[0] else ""
      with archive.open(pickles[0]) as f:
        return _Unpickler(f, archive, prefix, path).load()
  except UserError:
    raise
  except Exception as e:  # a damaged or foreign archive: zipfile, zlib, pickle and the rebuild raise many types
    raise UserError(f"{path} could not be read ({_reason(e)}); re-download the file.") from None


def _reason(e: Exception) -> str:
  """The exception as a short clause for a one-sentence message: its type and first line, no final period."""
  text = str(e).strip().splitlines()[0][:160].rstrip(".") if str(e).strip() else ""
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "BOOL": np.bool_}


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every tensor of a .safetensors file, as numpy arrays; UserError naming the file when it is damaged."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist; check the path (or --src folder) you gave.")
  with open(path, "rb") as f:
    data = f.read()
  try:
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    if not isinstance(header, dict):
      raise ValueError("the header is not a JSON object")
  except (struct.error, ValueError, UnicodeDecodeError):
    raise UserError(f"{path} is not a safetensors file (its header cannot be read); re-download it.") from None
  body = memoryview(data)[8 + header_len:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype, shape, (start, end) = info["dtype"], [int(n) for n in info["shape"]], info["data_offsets"]
    except (TypeError, KeyError, ValueError):
      raise UserError(f"{path}: the header's entry for tensor {name} is malformed; re-download the file.") from None
    if dtype not in _SAFETENSORS_DTYPES:
      raise UserError(f"{path}: tensor {name} has dtype {dtype}, which this converter does not read.")
    if end > len(body):
      raise UserError(f"{path} is truncated (tensor {name} runs past the end of the file); re-download it.")
    try:
      out[name] = np.frombuffer(body[start:end], dtype=_SAFETENSORS_DTYPES[dtype]).reshape(shape).copy()
    except (ValueError, TypeError):
      raise UserError(f"{path}: tensor {name}'s bytes do not fit its shape {shape} and dtype {dtype} in the "
                      "header; re-download the file.") from None
  return out


class _Global:
  """A reference to `module.name`, written as pickle's GLOBAL opcode (torch need not be importable)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle insists that a reduce function be callable; never called
    raise RuntimeError(f"{self.module}.{self.name} is only a pickle reference")


class _Tensor:
  def __init__(self, array: np.ndarray):
    self.array = np.ascontiguousarray(array)


class _Storage:
  def __init__(self, key: int, array: np.ndarray):
    self.key, self.array = key, array


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler lets us emit GLOBALs by hand
  dispatch = dict(pickle._Pickler.dispatch)

  def __init__(self, file):
    super().__init__(file, protocol=2)
    self.storages: list[np.ndarray] = []

  def _save_global_ref(self, obj: _Global):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[_Global] = _save_global_ref

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      type_name = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items()}[obj.array.dtype]
      return ("storage", _Global("torch", type_name), str(obj.key), "cpu", obj.array.size)
    return None

  def reducer_override(self, obj):
    if isinstance(obj, _Tensor):
      self.storages.append(obj.array.reshape(-1))
      shape = tuple(obj.array.shape)
      strides = tuple(s // obj.array.itemsize for s in obj.array.strides)
      storage = _Storage(len(self.storages) - 1, obj.array)
      return (_Global("torch._utils", "_rebuild_tensor_v2"),
              (storage, 0, shape, strides, False, collections.OrderedDict()))
    return NotImplemented


def save_torch_file(path: str | os.PathLike, state: Any) -> None:
  """Write a (nested) dict of numpy arrays in torch.save's zip layout (for tests and tools).

  `torch.load` reads the result, and so does `load_torch_file`.
  """
  path = os.fspath(path)

  def wrap(obj):
    if isinstance(obj, dict):
      return collections.OrderedDict((k, wrap(v)) for k, v in obj.items())
    if isinstance(obj, (np.ndarray, np.generic)):
      return _Tensor(np.asarray(obj))
    return obj

  buf = io.BytesIO()
  pickler = _TorchPickler(buf)
  pickler.dump(wrap(state))
  name = "archive"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr(f"{name}/data.pkl", buf.getvalue())
    for i, array in enumerate(pickler.storages):
      archive.writestr(f"{name}/data/{i}", array.tobytes())
    archive.writestr(f"{name}/version", "3\n")
