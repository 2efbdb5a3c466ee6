"""Checks on a compiled directory's parsed files, before anything allocates from them.

A compiled directory is untrusted input (see `policies.runtime.compiled_format`).
These checks turn what would otherwise be a `RecursionError`, a
`MemoryError`, `std::bad_alloc` or a pybind11 cast error into a `ValueError`
naming the file and the field: JSON nesting, the types and ranges of
policy.json's fields, and the `.npz` members' declared sizes and dtypes
(read from the zip and npy headers, before any member is decompressed).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

import numpy as np

MAX_JSON_DEPTH = 64
# The most values.npz may decompress to (initial state, train step, metadata).
MAX_VALUES_BYTES = 256 * 2**20
# The largest tensor a compiled model or spec may declare (8 bytes an element,
# as `lite_checks.check_model_io` counts).
MAX_TENSOR_BYTES = 2**30
MAX_FIXED_BATCH_SIZE = 2**24

_STRINGS = re.compile(rb'"[^"]*"')
# Every byte but those that nest JSON or delimit its strings (deleted before the scan).
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def load_json(path: str, data: bytes) -> Any:
  """Parses JSON nested at most `MAX_JSON_DEPTH` deep.

  Raises:
    ValueError: naming `path`: not UTF-8 JSON, or nested too deep.
  """
  # Escaped backslashes, then escaped quotes, then whole strings go: what is left nests.
  unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
  structure = np.frombuffer(_STRINGS.sub(b"", unescaped.translate(None, _NOT_STRUCTURE)),
                            np.uint8)
  steps = np.where((structure == ord("[")) | (structure == ord("{")), 1, -1)
  deepest = int(np.cumsum(steps).max()) if len(steps) else 0
  if deepest > MAX_JSON_DEPTH:
    raise ValueError(f"{path}: nested {deepest} deep, more than the limit of {MAX_JSON_DEPTH}")
  try:
    return json.loads(data.decode())
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def _int(value, path: str, field: str, low: int, high: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
    raise ValueError(f"{path}: {field}: expected an integer in [{low}, {high}], got "
                     f"{_shown(value)}")
  return value


def _names(value, path: str, field: str) -> list:
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise ValueError(f"{path}: {field}: expected a list of strings, got {_shown(value)}")
  if len(set(value)) != len(value):
    raise ValueError(f"{path}: {field}: expected distinct names, got {_shown(value)}")
  return value


def _shown(value) -> str:
  text = repr(value) if isinstance(value, (int, float, str, bool, type(None))) else \
      type(value).__name__
  return text if len(text) <= 80 else text[:77] + "..."


def _first(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__


def _table(value, path: str, field: str) -> dict:
  if not isinstance(value, dict):
    raise ValueError(f"{path}: {field}: expected an object, got {_shown(value)}")
  return value


def check_policy_fields(policy, path: str) -> None:
  """The scalar fields and name lists of policy.json have their types and ranges.

  (The spec nests are decoded and checked by `policies.runtime.compiled`.)

  Raises:
    ValueError: naming `path` and the field, expected vs got.
  """
  policy = _table(policy, path, "policy")
  signature = _table(policy.get("signature"), path, "signature")
  _table(policy.get("specs"), path, "specs")
  fixed = signature.get("fixed_batch_size")
  if fixed is not None:
    _int(fixed, path, "signature.fixed_batch_size", 1, MAX_FIXED_BATCH_SIZE)
  inputs = _names(signature.get("input_names"), path, "signature.input_names")
  outputs = _names(signature.get("output_names"), path, "signature.output_names")
  count = _int(signature.get("num_outputs"), path, "signature.num_outputs", 0, len(outputs))
  for field, size in (("input_slots", len(inputs)), ("output_indices", len(outputs))):
    value = signature.get(field)
    if value is None:
      continue
    if not isinstance(value, list):
      raise ValueError(f"{path}: signature.{field}: expected null or a list, got "
                       f"{_shown(value)}")
    for i, index in enumerate(value):
      _int(index, path, f"signature.{field}[{i}]", 0, size - 1)
  del count
  if not isinstance(policy.get("stochastic"), bool):
    raise ValueError(f"{path}: stochastic: expected true or false, got "
                     f"{_shown(policy.get('stochastic'))}")
  state = _table(policy.get("initial_state"), path, "initial_state")
  _int(state.get("batch"), path, "initial_state.batch", 1, MAX_FIXED_BATCH_SIZE)
  _int(state.get("leaves"), path, "initial_state.leaves", 0, len(inputs))
  _names(policy.get("metadata"), path, "metadata")
  _names(policy.get("metadata_strings", []), path, "metadata_strings")
  _check_leaves(policy["specs"], path, "specs")
  for field in ("time_step", "policy_state", "outputs"):
    _check_leaves(signature.get(field), path, f"signature.{field}")


# The dtypes a spec leaf may have: those LiteRT models take (lite_checks._NUMPY).
_DTYPES = {np.dtype(t).str for t in (np.float32, np.float16, np.float64, np.int8, np.int16,
                                     np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                                     np.uint64, np.bool_)}
MAX_RANK = 16


def _check_leaves(node, path: str, field: str) -> None:
  """Every spec leaf in a JSON spec nest has a numeric dtype and a bounded shape and bounds,
  before `array_specs.from_json` makes arrays of them."""
  if isinstance(node, list):
    for i, child in enumerate(node):
      _check_leaves(child, path, f"{field}[{i}]")
    return
  if not isinstance(node, dict):
    return
  if "leaf" not in node:
    for key, child in node.items():
      _check_leaves(child, path, f"{field}.{key}")
    return
  leaf = _table(node["leaf"], path, f"{field}.leaf")
  dtype = leaf.get("dtype")
  if dtype not in _DTYPES:
    raise ValueError(f"{path}: {field}.dtype: expected one of {sorted(_DTYPES)}, got "
                     f"{_shown(dtype)}")
  shape = leaf.get("shape")
  if not isinstance(shape, list) or len(shape) > MAX_RANK:
    raise ValueError(f"{path}: {field}.shape: expected a list of at most {MAX_RANK} "
                     f"dimensions, got {_shown(shape)}")
  elements = 1
  for i, d in enumerate(shape):
    if d is not None:
      elements *= _int(d, path, f"{field}.shape[{i}]", 0, MAX_TENSOR_BYTES)
  if elements * 8 > MAX_TENSOR_BYTES:
    raise ValueError(f"{path}: {field}.shape: {shape} is more than {MAX_TENSOR_BYTES} bytes")
  for bound in ("minimum", "maximum"):
    if bound in leaf:
      table = _table(leaf[bound], path, f"{field}.{bound}")
      values = table.get("values")
      if not isinstance(values, list) or len(values) > max(elements, 1):
        raise ValueError(f"{path}: {field}.{bound}.values: expected a list of at most "
                         f"{max(elements, 1)} numbers, got {_shown(values)}")


def load_npz(path: str, data: bytes, limit: int = MAX_VALUES_BYTES) -> dict:
  """The arrays of an `.npz` of plain (non-object) arrays, checked before decompression
  (what `np.load(..., allow_pickle=False)` reads, without its allocations from declared sizes).

  Every member's declared sizes (the zip header's and the npy header's
  shape times itemsize) must agree and stay within `limit` in total, so
  neither a deflate bomb nor a member declaring terabytes allocates anything.

  Raises:
    ValueError: naming `path` (and the member), expected vs got.
  """
  try:
    archive = zipfile.ZipFile(io.BytesIO(data))
    members = archive.infolist()
  except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as e:
    raise ValueError(f"{path}: not a numpy archive ({e})") from None
  total, values = 0, {}
  for member in members:
    where = f"{path}: member {member.filename!r}"
    if not member.filename.endswith(".npy") or member.is_dir():
      raise ValueError(f"{where}: expected a .npy array")
    if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
      raise ValueError(f"{where}: expected stored or deflated, got compression "
                       f"{member.compress_type}")
    total += member.file_size
    if total > limit:
      raise ValueError(f"{where}: declares {member.file_size} bytes, more than the "
                       f"{limit} bytes the archive may hold in all")
    try:
      with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
          shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
          shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
          raise ValueError(f"npy format version {version}")
        header = f.tell()
        if dtype.hasobject:
          raise ValueError(f"{where}: expected a plain array, got dtype {dtype} (objects)")
        count = 1
        for d in shape:
          count *= d
        if count * dtype.itemsize != member.file_size - header:
          raise ValueError(f"{where}: its header declares {dtype}{list(shape)} "
                           f"({count * dtype.itemsize} bytes), but the member holds "
                           f"{member.file_size - header}")
        # At most the size checked above: ZipExtFile stops at the declared size.
        raw = bytearray(f.read(member.file_size - header))
    except ValueError as e:
      if str(e).startswith(where):
        raise
      raise ValueError(f"{where}: not a readable .npy ({_first(e)})") from None
    # NotImplementedError: a zip feature (version, encryption) zipfile does not read.
    except (OSError, EOFError, zipfile.BadZipFile, SyntaxError, RuntimeError,
            NotImplementedError) as e:
      raise ValueError(f"{where}: not a readable .npy ({_first(e)})") from None
    if len(raw) != count * dtype.itemsize:
      raise ValueError(f"{where}: expected {count * dtype.itemsize} bytes of data, got "
                       f"{len(raw)}")
    try:
      values[member.filename[:-len(".npy")]] = np.frombuffer(raw, dtype).reshape(
          shape, order="F" if fortran else "C")
    except (ValueError, TypeError) as e:
      raise ValueError(f"{where}: not a plain array of {dtype}{list(shape)} ({_first(e)})") \
          from None
  return values
