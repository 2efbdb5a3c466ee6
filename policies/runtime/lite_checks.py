"""Checks a LiteRT flatbuffer against what the policy's specs expect, before it runs.

A converted model comes from an untrusted SavedModel (or a cache file): its
`action` signature may bind a string input, a wrong shape, a tensor index
outside the subgraph, or a shape that asks for gigabytes. LiteRT's interpreter
crashes on some of these (a string input read before it is set) rather than
raising, so nothing runs a model until `check_model_io` passes.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

SIGNATURE = "action"
MAX_RANK = 8   # LiteRT's kernels and its CompiledModel (which crashes past it) take at most this

# LiteRT TensorType -> numpy dtype (the numeric types a policy's specs can hold).
_NUMPY = {
    0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
    7: np.int16, 9: np.int8, 10: np.float64, 12: np.uint64, 15: np.uint32, 16: np.uint16,
}
_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string",
          6: "bool", 7: "int16", 8: "complex64", 9: "int8", 10: "float64", 11: "complex128",
          12: "uint64", 13: "resource", 14: "variant", 15: "uint32", 16: "uint16", 17: "int4"}

Expected = Tuple[str, object, Sequence[int]]   # (name, numpy dtype, shape; -1: the batch)


def _type_name(code: int) -> str:
  return _NAMES.get(code, f"tensor type {code}")


def check_model_io(flatbuffer: bytes, inputs: Sequence[Expected], outputs: Sequence[Expected],
                   max_tensor_bytes: int) -> None:
  """Raises ValueError unless the model's `action` signature is exactly `inputs` -> `outputs`.

  Args:
    flatbuffer: the LiteRT model.
    inputs, outputs: (name, numpy dtype, shape) per signature tensor, -1 for
      a batch dimension (which matches -1 or any size in the model; a -1 in
      the model, a dimension it leaves dynamic, matches any expected size).
    max_tensor_bytes: the largest tensor (static shape, -1 counted as 1) any
      subgraph may declare.

  Raises:
    ValueError: naming the tensor (or the table) at fault, expected vs got.
  """
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel

  if len(flatbuffer) < 8 or flatbuffer[4:8] != b"TFL3":
    raise ValueError("not a LiteRT flatbuffer (no TFL3 identifier)")
  try:
    model = schema.Model.GetRootAs(flatbuffer, 0)
    signature = _signature(model)
    subgraph_index = signature.SubgraphIndex()
    if not 0 <= subgraph_index < model.SubgraphsLength():
      raise ValueError(f"signature {SIGNATURE!r} names subgraph {subgraph_index} of "
                       f"{model.SubgraphsLength()}")
    _check_tables(model, max_tensor_bytes)
    subgraph = model.Subgraphs(subgraph_index)
    got_inputs = _bound(signature.Inputs, signature.InputsLength(), subgraph,
                        subgraph.InputsAsNumpy(), "input")
    got_outputs = _bound(signature.Outputs, signature.OutputsLength(), subgraph,
                         subgraph.OutputsAsNumpy(), "output")
  except ValueError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (a malformed table)
    raise ValueError(f"not a readable LiteRT flatbuffer ({type(e).__name__}: {e})") from None
  _compare(got_inputs, inputs, "input")
  _compare(got_outputs, outputs, "output")


def _signature(model):
  for i in range(model.SignatureDefsLength()):
    signature = model.SignatureDefs(i)
    if (signature.SignatureKey() or b"").decode(errors="replace") == SIGNATURE:
      return signature
  raise ValueError(f"the LiteRT model has no {SIGNATURE!r} signature")


def _check_tables(model, max_tensor_bytes: int) -> None:
  """Every index in range and every tensor's static size within the limit."""
  buffers, codes = model.BuffersLength(), model.OperatorCodesLength()
  for s in range(model.SubgraphsLength()):
    subgraph = model.Subgraphs(s)
    count = subgraph.TensorsLength()
    for t in range(count):
      tensor = subgraph.Tensors(t)
      name = (tensor.Name() or b"").decode(errors="replace")
      if not 0 <= tensor.Buffer() < buffers:
        raise ValueError(f"tensor {name!r} names buffer {tensor.Buffer()} of {buffers}")
      if max(tensor.ShapeLength(), tensor.ShapeSignatureLength()) > MAX_RANK:
        raise ValueError(f"tensor {name!r} has rank "
                         f"{max(tensor.ShapeLength(), tensor.ShapeSignatureLength())}, "
                         f"more than LiteRT's {MAX_RANK}")
      shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
      if any(d < -1 for d in shape):
        raise ValueError(f"tensor {name!r} has shape {shape}")
      elements = 1
      for d in shape:
        elements *= max(int(d), 1)
      if elements * 8 > max_tensor_bytes:
        raise ValueError(f"tensor {name!r} has shape {shape}, more than "
                         f"{max_tensor_bytes} bytes")
    for indices in (subgraph.InputsAsNumpy(), subgraph.OutputsAsNumpy()):
      if not isinstance(indices, int) and any(not 0 <= i < count for i in indices):
        raise ValueError(f"subgraph {s} names tensors {list(indices)} of {count}")
    # Each tensor is written once, by one operator, and never one the caller feeds or one
    # holding constant data (LiteRT writes into it as given, and crashes on some).
    inputs = subgraph.InputsAsNumpy()
    written = set() if isinstance(inputs, int) else {int(i) for i in inputs}
    for o in range(subgraph.OperatorsLength()):
      operator = subgraph.Operators(o)
      if not 0 <= operator.OpcodeIndex() < codes:
        raise ValueError(f"operator {o} names operator code {operator.OpcodeIndex()} of {codes}")
      for indices in (operator.InputsAsNumpy(), operator.OutputsAsNumpy()):
        if not isinstance(indices, int) and any(not -1 <= i < count for i in indices):
          raise ValueError(f"operator {o} of subgraph {s} names tensors {list(indices)} "
                           f"of {count}")
      outputs = operator.OutputsAsNumpy()
      for i in ([] if isinstance(outputs, int) else [int(i) for i in outputs if i >= 0]):
        if i in written or _holds_data(model, subgraph.Tensors(i)):
          name = (subgraph.Tensors(i).Name() or b"").decode(errors="replace")
          raise ValueError(f"operator {o} of subgraph {s} writes tensor {name!r}, which is "
                           f"an input, a constant or another operator's output")
        written.add(i)


def _holds_data(model, tensor) -> bool:
  buffer = model.Buffers(tensor.Buffer())
  return buffer.DataLength() > 0 or buffer.Offset() > 1


def _bound(entry, length: int, subgraph, allowed, kind: str) -> dict:
  """{name: (type code, shape signature)} of the signature's tensors of `kind`."""
  allowed = set() if isinstance(allowed, int) else {int(i) for i in allowed}
  found = {}
  for i in range(length):
    tensor_map = entry(i)
    name = (tensor_map.Name() or b"").decode(errors="replace")
    index = tensor_map.TensorIndex()
    if index not in allowed:
      raise ValueError(f"signature {kind} {name!r} is bound to tensor {index}, not one of the "
                       f"subgraph's {kind}s {sorted(allowed)}")
    if name in found:
      raise ValueError(f"signature {kind} {name!r} appears twice")
    tensor = subgraph.Tensors(index)
    shape = (tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else
             tensor.ShapeAsNumpy() if tensor.ShapeLength() else [])
    found[name] = (tensor.Type(), [int(d) for d in shape])
  return found


def _compare(got: dict, expected: Sequence[Expected], kind: str) -> None:
  names = [name for name, _, _ in expected]
  if sorted(got) != sorted(names):
    raise ValueError(f"the LiteRT signature's {kind}s do not match the specs: expected "
                     f"{sorted(names)}, got {sorted(got)}")
  for name, dtype, shape in expected:
    code, got_shape = got[name]
    want = np.dtype(dtype)
    if _NUMPY.get(code) is None or np.dtype(_NUMPY[code]) != want:
      raise ValueError(f"LiteRT {kind} {name!r}: expected {want.name}, got {_type_name(code)}")
    shape = [int(d) for d in shape]
    if len(got_shape) != len(shape) or any(
        e != -1 and g != -1 and g != e for e, g in zip(shape, got_shape)):
      raise ValueError(f"LiteRT {kind} {name!r}: expected shape {shape}, got {got_shape}")
