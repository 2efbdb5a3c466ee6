"""Where a converted LiteRT model keeps the policy's weights, so new weights need no conversion.

The converter freezes the variables into constant buffers of the flatbuffer,
transposed, split or concatenated as LiteRT's kernels want them. `learn()`
converts the `action` graph twice with every numeric variable replaced by a
probe: element g of the variables, flattened one after another, holds
`order(g) + 1`, where `order` is the identity in the first model and a fixed
random permutation in the second (all values exact in their dtypes). A buffer
that differs between the two models is made from the weights; if each of its
elements reads back as the same weight element in both, it is a gather from
the weights, and the `WeightMap` records the indices. `fill(values)` writes
any weights into those buffers of the first probe model: the model for those
weights, with no converter run, in the time of a gather and a copy.

What cannot be followed this way (`NotFollowable`, and the engine converts
again instead): a buffer the converter computed from the weights rather than
copied (e.g. a logit scale folded into the last layer), two probe models that
differ in structure, more than 2**24 weights, or a variable that cannot hold
a probe (bool, string, 8/16-bit) whose value changed since the map was learnt.
The probe model has every op of the graph (no weight is 0 or 1 there, so
nothing folds away), and it is validated against TF with the real weights
like every LiteRT model.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

# Variables of these dtypes carry probes; others keep their values (see module docstring).
_PROBED = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int64))
_MAX_WEIGHTS = 1 << 24            # float32 holds every integer up to here exactly
_PERMUTATION_SEED = 0x5EED
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"   # describes the checkpoint, not a weight
# LiteRT TensorType -> numpy, for the dtypes a weight buffer can have here.
_TENSOR_TYPES = {0: np.float32, 2: np.int32, 4: np.int64, 10: np.float64}


class NotFollowable(ValueError):
  """New weights cannot be written into the converted model; it must be converted again."""


@dataclasses.dataclass(frozen=True)
class _Buffer:
  offset: int                      # byte offset of the buffer's data in the flatbuffer
  dtype: np.dtype
  indices: np.ndarray              # element -> index into the flattened weights


class ProbeLayout:
  """Which checkpoint values carry probes, and where each sits in the flattened weights.

  Args:
    values: checkpoint key -> value of every variable the SavedModel saves.
  """

  def __init__(self, values: Dict[str, np.ndarray]):
    self.keys: List[str] = []
    self.offsets: Dict[str, Tuple[int, int]] = {}
    self.kept: Dict[str, np.ndarray] = {}         # values that carry no probe
    total = 0
    for key in sorted(values):
      value = values[key]
      if isinstance(value, bytes):      # a scalar string, kept as bytes (numpy's S
        self.kept[key] = value          # dtype would drop its trailing NULs)
        continue
      value = np.asarray(value)
      if value.dtype in _PROBED and value.size:
        self.keys.append(key)
        self.offsets[key] = (total, value.size)
        total += value.size
      else:
        self.kept[key] = value
    self.total = total
    self.shapes = {k: np.shape(values[k]) for k in self.keys}
    self.dtypes = {k: np.asarray(values[k]).dtype for k in self.keys}

  def signature(self) -> str:
    """Names the probes (for the conversion cache): keys, shapes, dtypes, kept values."""
    kept = hashlib.sha256()
    for key in sorted(self.kept):
      value = self.kept[key]
      kept.update(key.encode())
      if isinstance(value, bytes):
        kept.update(b"bytes:" + value)
      else:
        kept.update(f":{value.dtype.str}:{value.shape}".encode())
        kept.update(repr(value.tolist()).encode() if value.dtype == object else
                    np.ascontiguousarray(value).tobytes())
    probed = ";".join(f"{k}:{self.dtypes[k].str}:{self.shapes[k]}" for k in self.keys)
    return hashlib.sha256(probed.encode()).hexdigest() + kept.hexdigest()

  def probe(self, order: np.ndarray) -> Dict[str, np.ndarray]:
    """Checkpoint values with element g of the probed weights set to order[g] + 1."""
    out = dict(self.kept)
    for key in self.keys:
      start, size = self.offsets[key]
      out[key] = (order[start:start + size] + 1).astype(self.dtypes[key]).reshape(
          self.shapes[key])
    return out

  def flatten(self, values: Dict[str, np.ndarray]) -> np.ndarray:
    """The probed weights of `values`, flattened in layout order (float64 holds them all)."""
    flat = np.empty(self.total, np.float64)
    for key in self.keys:
      start, size = self.offsets[key]
      value = np.asarray(values[key])
      if value.shape != self.shapes[key]:
        raise NotFollowable(f"{key} has shape {value.shape}, the converted model "
                            f"{self.shapes[key]}")
      flat[start:start + size] = value.reshape(-1)
    return flat

  def source_dtypes(self) -> np.ndarray:
    """Per flattened weight element, the index of its variable's dtype in _PROBED."""
    codes = np.empty(self.total, np.int8)
    for key in self.keys:
      start, size = self.offsets[key]
      codes[start:start + size] = _PROBED.index(self.dtypes[key])
    return codes


def learn(values: Dict[str, np.ndarray],
          convert: Callable[[Dict[str, np.ndarray], str], bytes]) -> "WeightMap":
  """The map of a model's weights, from two probe conversions.

  Args:
    values: checkpoint key -> value of every variable, as the copy holds them.
    convert: `convert(checkpoint_values, name)` converts the graph with those
      values; `name` ("probe-a:<layout>" or "probe-b:<layout>") names the
      conversion for a cache.

  Returns:
    A `WeightMap`.

  Raises:
    NotFollowable: why new weights cannot be written into the converted model.
    ValueError: the graph does not convert at all (from `convert`).
  """
  layout = ProbeLayout(values)
  if layout.total > _MAX_WEIGHTS:
    raise NotFollowable(f"{layout.total:,} weights, more than the {_MAX_WEIGHTS:,} a probe "
                        "conversion can tell apart")
  identity = np.arange(layout.total, dtype=np.int64)
  permutation = np.random.default_rng(_PERMUTATION_SEED).permutation(layout.total)
  name = layout.signature()
  first = convert(layout.probe(identity), "probe-a:" + name)
  second = convert(layout.probe(permutation), "probe-b:" + name)
  return WeightMap.from_probes(layout, first, second, permutation)


class WeightMap:
  """The probe model and where the weights go in it (see module docstring)."""

  def __init__(self, layout: ProbeLayout, flatbuffer: bytes, buffers: List[_Buffer]):
    self.layout = layout
    self.flatbuffer = flatbuffer
    self._buffers = buffers

  @classmethod
  def from_probes(cls, layout: ProbeLayout, first: bytes, second: bytes,
                  permutation: np.ndarray) -> "WeightMap":
    """Raises NotFollowable unless every buffer that depends on the weights is a gather."""
    a, b = _constant_buffers(first), _constant_buffers(second)
    if set(a) != set(b) or any((a[i][1], a[i][2]) != (b[i][1], b[i][2]) for i in a):
      raise NotFollowable("the two probe conversions differ in structure")
    inverse = np.empty(layout.total, np.int64)
    inverse[permutation] = np.arange(layout.total, dtype=np.int64)
    sources = layout.source_dtypes()
    buffers = []
    for index, (offset, size, tensor_type, name) in sorted(a.items()):
      data_a = first[offset:offset + size]
      data_b = second[b[index][0]:b[index][0] + size]
      if data_a == data_b:
        continue                      # a constant of the graph, not a weight
      dtype = _TENSOR_TYPES.get(tensor_type)
      if dtype is None:
        raise NotFollowable(f"tensor {name!r} is computed from the weights at conversion "
                            f"(LiteRT type {tensor_type})")
      dtype = np.dtype(dtype)
      got_a = np.frombuffer(data_a, dtype).astype(np.float64) - 1
      got_b = np.frombuffer(data_b, dtype).astype(np.float64) - 1
      indices = _indices(got_a, layout.total)
      shuffled = _indices(got_b, layout.total)
      if (indices is None or shuffled is None or
          not np.array_equal(indices, inverse[shuffled]) or
          np.any(sources[indices] != _PROBED.index(dtype))):
        raise NotFollowable(f"tensor {name!r} is computed from the weights at conversion, "
                            "not copied from them")
      buffers.append(_Buffer(offset, dtype, indices))
    return cls(layout, first, buffers)

  def fill(self, values: Dict[str, np.ndarray]) -> bytes:
    """The probe model with `values` (checkpoint key -> value) in its weight buffers.

    Raises:
      NotFollowable: a value without a probe changed, or a shape differs.
    """
    for key, kept in self.layout.kept.items():
      if key != _OBJECT_GRAPH_KEY and key in values and not _same(values[key], kept):
        kind = "string" if isinstance(kept, bytes) else kept.dtype
        raise NotFollowable(f"{key} changed, and the converted model cannot take it "
                            f"without a conversion ({kind} values carry no probe)")
    flat = self.layout.flatten(values)
    model = bytearray(self.flatbuffer)
    view = memoryview(model)
    for buffer in self._buffers:
      data = flat[buffer.indices].astype(buffer.dtype)
      view[buffer.offset:buffer.offset + data.nbytes] = data.view(np.uint8)
    return bytes(model)

  @property
  def weight_buffers(self) -> int:
    return len(self._buffers)


def _indices(values: np.ndarray, total: int) -> Optional[np.ndarray]:
  """`values` as weight indices, or None if any is not one."""
  if values.size and (np.any(values < 0) or np.any(values >= total) or
                      np.any(values != np.floor(values))):
    return None
  return values.astype(np.int64)


def _same(a, b) -> bool:
  if isinstance(a, bytes) or isinstance(b, bytes):
    return a == b
  a, b = np.asarray(a), np.asarray(b)
  return a.shape == b.shape and a.dtype == b.dtype and bool(np.all(a == b))


def _constant_buffers(flatbuffer: bytes) -> Dict[int, tuple]:
  """Buffer index -> (byte offset, size, LiteRT tensor type, a tensor name) of every
  non-empty buffer a tensor uses."""
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel

  model = schema.Model.GetRootAs(flatbuffer, 0)
  start = np.frombuffer(flatbuffer, np.uint8).ctypes.data
  found = {}
  for s in range(model.SubgraphsLength()):
    graph = model.Subgraphs(s)
    for t in range(graph.TensorsLength()):
      tensor = graph.Tensors(t)
      index = tensor.Buffer()
      if index == 0 or index in found or index >= model.BuffersLength():
        continue
      buffer = model.Buffers(index)
      if buffer.Offset() > 1:         # stored after the flatbuffer (models over 2 GB)
        found[index] = (buffer.Offset(), buffer.Size(), tensor.Type(),
                        tensor.Name().decode(errors="replace"))
        continue
      data = buffer.DataAsNumpy()
      if isinstance(data, int) or not data.size:
        continue
      found[index] = (data.ctypes.data - start, data.size, tensor.Type(),
                      tensor.Name().decode(errors="replace"))
  return found
