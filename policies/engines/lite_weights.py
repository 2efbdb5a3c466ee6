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

The converter also folds constant factors into the weights next to them
(Atari frames' 1/255 into the first convolution's kernel, a Boltzmann
temperature into the last layer). Where a buffer is not a plain gather, a
third probe (the identity plus the number of weights) tells each element's
factor, and the permuted probe confirms it (`_scaled_gather`).

What cannot be followed this way (`NotFollowable`, and the engine converts
again instead): a buffer the converter computed from the weights otherwise
(e.g. a softplus of a weight, or a sum of several), two probe models that
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
import tensorflow as tf

# Variables of these dtypes carry probes; others keep their values (see module docstring).
_PROBED = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int64))
_MAX_WEIGHTS = 1 << 24            # float32 holds every integer up to here exactly
_PERMUTATION_SEED = 0x5EED
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_NUMPY_TRANSPOSE_MAX = 1 << 16   # elements; larger transposes go through TF   # describes the checkpoint, not a weight
# LiteRT TensorType -> numpy, for the dtypes a weight buffer can have here.
_TENSOR_TYPES = {0: np.float32, 2: np.int32, 4: np.int64, 10: np.float64}


class NotFollowable(ValueError):
  """New weights cannot be written into the converted model; it must be converted again."""


@dataclasses.dataclass(frozen=True)
class _Buffer:
  """How to make one weight buffer: mostly a variable as is, a slice of it or its transpose."""
  offset: int                      # byte offset of the buffer's data in the flatbuffer
  dtype: np.dtype
  key: Optional[str]               # the one variable it comes from (None: several)
  axes: Optional[tuple]            # that variable transposed so (None: `indices`)
  indices: np.ndarray              # element -> index (into the variable, else the weights)
  scales: Optional[np.ndarray] = None   # element -> the constant the converter multiplied in

  @classmethod
  def make(cls, offset: int, dtype: np.dtype, indices: np.ndarray, layout: "ProbeLayout",
           scales: Optional[np.ndarray] = None) -> "_Buffer":
    """Finds the cheapest way to gather `indices` (into the flattened weights)."""
    if scales is not None and np.all(scales == scales[0]):
      scales = scales[:1]          # one factor for the whole buffer
    key = layout.key_of(int(indices[0])) if indices.size else None
    if key is not None:
      start, size = layout.offsets[key]
      local = indices - start
      if np.all((local >= 0) & (local < size)):
        shape = layout.shapes[key]
        for axes in _transpositions(len(shape)):
          if local.size == size and np.array_equal(
              local, np.arange(size).reshape(shape).transpose(axes).reshape(-1)):
            return cls(offset, dtype, key, axes, local, scales)
        return cls(offset, dtype, key, None, local.astype(np.int32), scales)
    return cls(offset, dtype, None, None, indices, scales)

  def data(self, values: Dict[str, np.ndarray], flat) -> memoryview:
    """The buffer's bytes for `values`; `flat()` gives every weight flattened (rarely needed)."""
    if self.key is not None:
      value = values[self.key]
      if self.axes is None:
        data = np.asarray(value).reshape(-1)[self.indices]
      elif self.axes == tuple(range(len(self.axes))):
        data = np.asarray(value).reshape(-1)
      elif self.indices.size < _NUMPY_TRANSPOSE_MAX:
        data = np.transpose(np.asarray(value), self.axes).reshape(-1)
      else:   # TF's transpose is blocked and threaded: 8x numpy's on a 3136x512 kernel
        data = np.asarray(tf.transpose(value, self.axes)).reshape(-1)
    else:
      data = flat()[self.indices]
    if self.scales is not None:
      data = data * (self.scales[0] if self.scales.size == 1 else self.scales)
    return memoryview(np.ascontiguousarray(data, dtype=self.dtype)).cast("B")


def _transpositions(ndim: int):
  """The identity first, then every other order of `ndim` axes (up to 4-d variables)."""
  import itertools  # pylint: disable=import-outside-toplevel
  if ndim > 4:
    return [tuple(range(ndim))]
  return sorted(itertools.permutations(range(ndim)), key=lambda a: a != tuple(range(ndim)))


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

  def key_of(self, index: int) -> Optional[str]:
    """The variable that element `index` of the flattened weights belongs to."""
    for key in self.keys:
      start, size = self.offsets[key]
      if start <= index < start + size:
        return key
    return None

  def check_shapes(self, values: Dict[str, np.ndarray]) -> None:
    for key in self.keys:
      shape = tuple(values[key].shape)
      if shape != self.shapes[key]:
        raise NotFollowable(f"{key} has shape {shape}, the converted model {self.shapes[key]}")

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
  """The map of a model's weights, from two (or three) probe conversions.

  Args:
    values: checkpoint key -> value of every variable, as the copy holds them.
    convert: `convert(checkpoint_values, name)` converts the graph with those
      values; `name` ("probe-a:<layout>", ...) names the conversion for a cache.

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
  # Only for a model whose weights the converter scaled (see _scaled_gather).
  third = lambda: convert(layout.probe(identity + layout.total), "probe-c:" + name)  # noqa: E731
  return WeightMap.from_probes(layout, first, second, permutation, third)


class WeightMap:
  """The probe model and where the weights go in it (see module docstring)."""

  def __init__(self, layout: ProbeLayout, flatbuffer: bytes, buffers: List[_Buffer]):
    self.layout = layout
    self.flatbuffer = flatbuffer
    self._buffers = buffers

  @classmethod
  def from_probes(cls, layout: ProbeLayout, first: bytes, second: bytes,
                  permutation: np.ndarray, third: Callable[[], bytes]) -> "WeightMap":
    """Raises NotFollowable unless every buffer that depends on the weights is a gather
    from them, each element possibly times a constant (`third()` converts the probe that
    tells those constants)."""
    a, b = _constant_buffers(first), _constant_buffers(second)
    if set(a) != set(b) or any((a[i][1], a[i][2]) != (b[i][1], b[i][2]) for i in a):
      raise NotFollowable("the probe conversions differ in structure")
    inverse = np.empty(layout.total, np.int64)
    inverse[permutation] = np.arange(layout.total, dtype=np.int64)
    sources = layout.source_dtypes()
    offset_probe, c = None, None
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
      got_a = np.frombuffer(data_a, dtype).astype(np.float64)
      got_b = np.frombuffer(data_b, dtype).astype(np.float64)
      indices = _indices(got_a - 1, layout.total)
      shuffled = _indices(got_b - 1, layout.total)
      if (indices is not None and shuffled is not None and
          np.array_equal(indices, inverse[shuffled]) and
          np.all(sources[indices] == _PROBED.index(dtype))):
        buffers.append(_Buffer.make(offset, dtype, indices, layout))
        continue
      if dtype.kind == "f":
        if offset_probe is None:
          offset_probe = third()
          c = _constant_buffers(offset_probe)
          if set(c) != set(a):
            raise NotFollowable("the probe conversions differ in structure")
        got_c = np.frombuffer(offset_probe[c[index][0]:c[index][0] + size],
                              dtype).astype(np.float64)
        scaled = _scaled_gather(got_a, got_b, got_c, permutation, layout.total)
        if scaled is not None and np.all(sources[scaled[0]] == _PROBED.index(dtype)):
          buffers.append(_Buffer.make(offset, dtype, scaled[0], layout, scaled[1]))
          continue
      raise NotFollowable(f"tensor {name!r} is computed from the weights at conversion, "
                          "not copied from them")
    return cls(layout, first, sorted(buffers, key=lambda b: b.offset))

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
    self.layout.check_shapes(values)
    flat = []

    def flattened():
      if not flat:
        flat.append(self.layout.flatten(values))
      return flat[0]

    pieces, end = [], 0
    for buffer in self._buffers:   # by offset: the model is copied once, around them
      data = buffer.data(values, flattened)
      pieces += [memoryview(self.flatbuffer)[end:buffer.offset], data]
      end = buffer.offset + data.nbytes
    pieces.append(memoryview(self.flatbuffer)[end:])
    return b"".join(pieces)

  @property
  def weight_buffers(self) -> int:
    return len(self._buffers)


def _indices(values: np.ndarray, total: int) -> Optional[np.ndarray]:
  """`values` as weight indices, or None if any is not one."""
  if values.size and (np.any(values < 0) or np.any(values >= total) or
                      np.any(values != np.floor(values))):
    return None
  return values.astype(np.int64)


def _scaled_gather(a: np.ndarray, b: np.ndarray, c: np.ndarray, permutation: np.ndarray,
                   total: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  """(indices, scales) if element j of a buffer is scale_j * weight[index_j] in all probes.

  The converter folds a constant factor into the weights it follows (Atari
  frames' 1/255 into the first convolution's kernel, a Boltzmann temperature
  into the last layer). With a = s (i + 1), c = s (i + 1 + total) and
  b = s (permutation[i] + 1), up to float32 rounding: s from c - a, i from
  a / s (the neighbours tried too), confirmed by b, then s again from a / (i + 1).
  """
  with np.errstate(divide="ignore", invalid="ignore"):
    scale = (c - a) / total
    guess = np.rint(a / scale - 1)
  if not np.all(np.isfinite(guess)) or np.any(scale == 0):
    return None
  indices = np.full(a.shape, -1, np.int64)
  for step in (0, -1, 1):
    candidate = np.clip(guess + step, 0, total - 1).astype(np.int64)
    fits = (np.abs(scale * (permutation[candidate] + 1) - b) <= 1e-6 * np.abs(b)) & (
        np.abs(scale * (candidate + 1) - a) <= 1e-6 * np.abs(a))
    indices = np.where((indices < 0) & fits, candidate, indices)
  if np.any(indices < 0):
    return None
  return indices, a / (indices + 1)


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
