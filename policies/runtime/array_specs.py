"""Spec objects and spec nests without TensorFlow (the compiled policy's side).

`ArraySpec` and `BoundedArraySpec` have the attributes of TF-Agents' classes
of those names (`shape`, `dtype`, `name`, and `minimum`/`maximum`), which
cannot be imported without TensorFlow. `to_json` / `from_json` store a nest
of specs (TF-Agents' or TensorFlow's, or these) in JSON: namedtuples keep
their type name and fields (and come back as namedtuples of that name),
dicts their key order.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Optional

import numpy as np

class ArraySpec:
  """The shape and dtype of a numpy array (TF-Agents' `ArraySpec` attributes)."""

  __slots__ = ("_shape", "_dtype", "_name")

  def __init__(self, shape, dtype, name: Optional[str] = None):
    self._shape = tuple(None if d is None else int(d) for d in shape)
    self._dtype = np.dtype(dtype)
    self._name = name

  @property
  def shape(self) -> tuple:
    return self._shape

  @property
  def dtype(self) -> np.dtype:
    return self._dtype

  @property
  def name(self) -> Optional[str]:
    return self._name

  def check_array(self, array) -> bool:
    """Whether `array` has this spec's shape and dtype."""
    array = np.asarray(array)
    return (array.dtype == self._dtype and len(array.shape) == len(self._shape) and
            all(s is None or s == d for s, d in zip(self._shape, array.shape)))

  def _key(self) -> tuple:
    return (type(self).__name__, self._shape, self._dtype, self._name)

  def __eq__(self, other) -> bool:
    return isinstance(other, ArraySpec) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  def __repr__(self) -> str:
    return f"ArraySpec(shape={self._shape}, dtype={self._dtype!r}, name={self._name!r})"


class BoundedArraySpec(ArraySpec):
  """An `ArraySpec` with inclusive `minimum` and `maximum` (arrays of `dtype`)."""

  __slots__ = ("_minimum", "_maximum")

  def __init__(self, shape, dtype, minimum, maximum, name: Optional[str] = None):
    super().__init__(shape, dtype, name)
    self._minimum = np.array(minimum, dtype=self.dtype)
    self._maximum = np.array(maximum, dtype=self.dtype)

  @property
  def minimum(self) -> np.ndarray:
    return self._minimum

  @property
  def maximum(self) -> np.ndarray:
    return self._maximum

  def _key(self) -> tuple:
    return super()._key() + (self._minimum.tobytes(), self._minimum.shape,
                             self._maximum.tobytes(), self._maximum.shape)

  def __eq__(self, other) -> bool:
    return isinstance(other, BoundedArraySpec) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  def __repr__(self) -> str:
    return (f"BoundedArraySpec(shape={self.shape}, dtype={self.dtype!r}, name={self.name!r}, "
            f"minimum={self._minimum}, maximum={self._maximum})")


def is_namedtuple(value) -> bool:
  return isinstance(value, tuple) and hasattr(type(value), "_fields")


def is_leaf(value) -> bool:
  """Whether `value` is a spec leaf (this module's, TF-Agents' or TensorFlow's)."""
  return not isinstance(value, (tuple, list, dict)) and value is not None and \
      hasattr(value, "shape") and hasattr(value, "dtype")


_namedtuple_types: dict = {}


def namedtuple_type(name: str, fields: tuple):
  """One namedtuple class per (name, fields), so decoded nests share their types."""
  key = (name, tuple(fields))
  cls = _namedtuple_types.get(key)
  if cls is None:
    cls = _namedtuple_types[key] = collections.namedtuple(name, fields)
  return cls


def flatten(nest) -> list:
  """Leaves in `tf.nest` order: namedtuple fields in order, dict values by sorted key."""
  if is_leaf(nest):
    return [nest]
  if isinstance(nest, dict):
    return [leaf for key in sorted(nest) for leaf in flatten(nest[key])]
  if isinstance(nest, (list, tuple)):
    return [leaf for value in nest for leaf in flatten(value)]
  if nest is None:
    return []
  return [nest]


def pack_sequence_as(structure, flat: list):
  """`flat` (in `flatten` order) packed into the shape of `structure`."""
  leaves = iter(flat)

  def pack(node):
    if is_leaf(node):
      return next(leaves)
    if isinstance(node, dict):
      packed = {k: pack(node[k]) for k in sorted(node)}
      return {k: packed[k] for k in node}
    if is_namedtuple(node):
      return type(node)(*(pack(v) for v in node))
    if isinstance(node, (list, tuple)):
      return type(node)(pack(v) for v in node)
    if node is None:
      return None
    return next(leaves)

  result = pack(structure)
  if next(leaves, None) is not None:
    raise ValueError("pack_sequence_as: more values than the structure has leaves")
  return result


def map_structure(fn, nest):
  """`fn` applied to every leaf; containers keep their types (namedtuples, dict order)."""
  if is_leaf(nest):
    return fn(nest)
  if is_namedtuple(nest):
    return type(nest)(*(map_structure(fn, v) for v in nest))
  if isinstance(nest, dict):
    return {k: map_structure(fn, v) for k, v in nest.items()}
  if isinstance(nest, list):
    return [map_structure(fn, v) for v in nest]
  if isinstance(nest, tuple):
    return tuple(map_structure(fn, v) for v in nest)
  if nest is None:
    return None
  return fn(nest)


def dtype_of(leaf) -> np.dtype:
  """A leaf's numpy dtype (a TensorFlow DType's numpy one)."""
  dtype = leaf.dtype
  return np.dtype(getattr(dtype, "as_numpy_dtype", dtype))


def shape_of(leaf) -> list:
  """A leaf's dimensions as a list (None: unknown); a TensorShape's too."""
  shape = leaf.shape
  as_list = getattr(shape, "as_list", None)
  if as_list is not None:
    if getattr(shape, "rank", 0) is None:
      raise ValueError(f"spec {leaf!r} has an unknown rank")
    shape = as_list()
  return [None if d is None else int(d) for d in shape]


def _number(value):
  """A JSON number for one bound element (floats as repr, so float32 bounds round-trip)."""
  value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return repr(value)   # "inf", "-inf", "nan": JSON has no such numbers
  return value


def _bound(array) -> Any:
  array = np.asarray(array)
  flat = [_number(v) for v in array.reshape(-1)]
  return {"shape": list(array.shape), "values": flat}


def _unbound(obj, dtype) -> np.ndarray:
  values = [float(v) if isinstance(v, str) else v for v in obj["values"]]
  return np.array(values, dtype=dtype).reshape(obj["shape"])


def to_json(nest, path: str = "spec") -> Any:
  """A JSON-able description of a spec nest.

  Raises:
    ValueError: a dict key that is not a string, or a leaf of unknown rank.
  """
  if is_leaf(nest):
    leaf = {"shape": shape_of(nest), "dtype": dtype_of(nest).str,
            "name": getattr(nest, "name", None)}
    if hasattr(nest, "minimum") and hasattr(nest, "maximum"):
      leaf["minimum"] = _bound(nest.minimum)
      leaf["maximum"] = _bound(nest.maximum)
    as_datatype_enum = getattr(getattr(nest, "dtype", None), "as_datatype_enum", None)
    if as_datatype_enum is not None:
      leaf["tf_dtype"] = int(as_datatype_enum)
    return {"leaf": leaf}
  if is_namedtuple(nest):
    return {"namedtuple": type(nest).__name__, "fields": list(nest._fields),
            "values": [to_json(v, f"{path}.{f}") for f, v in zip(nest._fields, nest)]}
  if isinstance(nest, dict):
    for key in nest:
      if not isinstance(key, str):
        raise ValueError(f"{path}: dict key {key!r} is not a string; compiled policies "
                         f"store string keys only")
    return {"dict": [[k, to_json(v, f"{path}[{k!r}]")] for k, v in nest.items()]}
  if isinstance(nest, list):
    return {"list": [to_json(v, f"{path}[{i}]") for i, v in enumerate(nest)]}
  if isinstance(nest, tuple):
    return {"tuple": [to_json(v, f"{path}[{i}]") for i, v in enumerate(nest)]}
  if nest is None:
    return None
  raise ValueError(f"{path}: not a spec: {nest!r}")


class Leaf(ArraySpec):
  """A decoded leaf that also keeps TensorFlow's dtype enum (for the native plan)."""

  __slots__ = ("tf_dtype",)

  def __init__(self, shape, dtype, name=None, tf_dtype: int = 0):
    super().__init__(shape, dtype, name)
    self.tf_dtype = tf_dtype


class BoundedLeaf(BoundedArraySpec):
  __slots__ = ("tf_dtype",)

  def __init__(self, shape, dtype, minimum, maximum, name=None, tf_dtype: int = 0):
    super().__init__(shape, dtype, minimum, maximum, name)
    self.tf_dtype = tf_dtype


def from_json(obj, path: str = "spec") -> Any:
  """The nest `to_json` described, with `ArraySpec` / `BoundedArraySpec` leaves.

  Raises:
    ValueError: `obj` is not such a description (naming where).
  """
  try:
    if obj is None:
      return None
    if not isinstance(obj, dict) or len(obj) not in (1, 3):
      raise ValueError("expected a spec node")
    if "leaf" in obj:
      leaf = obj["leaf"]
      dtype = np.dtype(leaf["dtype"])
      tf_dtype = int(leaf.get("tf_dtype", 0))
      if "minimum" in leaf:
        return BoundedLeaf(leaf["shape"], dtype, _unbound(leaf["minimum"], dtype),
                           _unbound(leaf["maximum"], dtype), leaf["name"], tf_dtype)
      return Leaf(leaf["shape"], dtype, leaf["name"], tf_dtype)
    if "namedtuple" in obj:
      fields = tuple(obj["fields"])
      values = [from_json(v, f"{path}.{f}") for f, v in zip(fields, obj["values"])]
      if len(values) != len(fields):
        raise ValueError("namedtuple fields and values differ in number")
      return namedtuple_type(obj["namedtuple"], fields)(*values)
    if "dict" in obj:
      return {k: from_json(v, f"{path}[{k!r}]") for k, v in obj["dict"]}
    if "list" in obj:
      return [from_json(v, f"{path}[{i}]") for i, v in enumerate(obj["list"])]
    if "tuple" in obj:
      return tuple(from_json(v, f"{path}[{i}]") for i, v in enumerate(obj["tuple"]))
    raise ValueError(f"unknown spec node {sorted(obj)}")
  except ValueError as e:
    if str(e).startswith(path):
      raise
    raise ValueError(f"{path}: {e}") from None
  except (KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{path}: malformed spec node ({type(e).__name__}: {e})") from None


def zeros(spec_nest, outer_shape=()):
  """Numpy zeros for every leaf, with `outer_shape` prepended."""
  return map_structure(lambda s: np.zeros(tuple(outer_shape) + tuple(s.shape), s.dtype),
                       spec_nest)
