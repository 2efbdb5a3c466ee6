"""A LiteRT model of a policy's `action` and its interpreters, without TensorFlow.

Used by the LiteRT engine (`policies.engines.lite`) and by compiled policies
(`policies.compiled`). `lease(batch)` hands one caller an interpreter
prepared for `batch` as `(inputs, invoke, outputs, batch, interpreter)`:
writable arrays for the inputs in the function's argument order, a callable
that runs the model, and the output arrays in output order, as the native
plan's `call_buffers` wants them; `release(lease)` returns it. An
interpreter serves one call at a time and is never resized after its first
call; the last `MAX_BATCH_SIZES` batch sizes keep their interpreters.

Two ways to feed an interpreter:
* `zero_copy=True` (the LiteRT engine): the arrays are views of the
  interpreter's own buffers, and `invoke` is the wrapper's raw invoke,
  because the public `invoke()` refuses to run while such views exist.
* `zero_copy=False` (compiled policies): ai-edge-litert's public API only.
  The inputs are the lease's own arrays, `invoke` sets them (`set_tensor`),
  runs `invoke()` and reads the outputs (`get_tensor`).
"""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np
from ai_edge_litert import interpreter as litert

SIGNATURE = "action"
MAX_BATCH_SIZES = 12


def signature_indices(interpreter, input_names: list, output_names: list) -> tuple:
  """Tensor indices of the `action` signature's inputs and outputs, by the given names.

  Raises:
    ValueError: the signature does not have exactly those names.
  """
  if SIGNATURE not in interpreter.get_signature_list():
    raise ValueError(f"the LiteRT model has no {SIGNATURE!r} signature")
  runner = interpreter.get_signature_runner(SIGNATURE)
  inputs = {n: d["index"] for n, d in runner.get_input_details().items()}
  outputs = {n: d["index"] for n, d in runner.get_output_details().items()}
  del runner   # it references the interpreter's wrapper, which blocks invoke()
  if sorted(inputs) != sorted(input_names) or sorted(outputs) != sorted(output_names):
    raise ValueError(f"the LiteRT signature does not match the specs: inputs "
                     f"{sorted(inputs)}, outputs {sorted(outputs)}")
  return [inputs[n] for n in input_names], [outputs[n] for n in output_names]


class LiteModel:
  """A converted `action` and its interpreters, by batch size (see module docstring).

  Args:
    flatbuffer: the converted model.
    input_names: its `action` signature's input names, by argument slot.
    output_names: its output names, by output index.
    first_batch: the batch size of the first interpreter (made here, so a
      model that does not run fails at load rather than on a call).
    zero_copy: views of the interpreter's buffers (True) or the public API.

  Raises:
    ValueError: the signature does not have those names, or a tensor moves.
  """

  def __init__(self, flatbuffer: bytes, input_names: list, output_names: list,
               first_batch: int, zero_copy: bool = True):
    self.flatbuffer = flatbuffer
    self.zero_copy = zero_copy
    interpreter = litert.Interpreter(model_content=flatbuffer, num_threads=1)
    self._input_indices, self._output_indices = signature_indices(
        interpreter, input_names, output_names)
    self._free: dict = {}                       # batch -> [lease, ...], oldest size first
    self._lock = threading.Lock()               # creating and evicting only
    self.release(self._new_lease(first_batch, interpreter))

  def lease(self, batch: int):
    free = self._free.get(batch)
    if free:
      try:
        return free.pop()
      except IndexError:
        pass
    return self._new_lease(batch)

  def release(self, lease) -> None:
    free = self._free.get(lease[3])
    if free is not None:
      free.append(lease)

  def discard(self, batch: int) -> None:
    """Drops the interpreters prepared for `batch` (e.g. validation's large batches)."""
    with self._lock:
      self._free.pop(batch, None)

  def _new_lease(self, batch: int, interpreter=None):
    if interpreter is None:
      interpreter = litert.Interpreter(model_content=self.flatbuffer, num_threads=1)
    details = {d["index"]: d for d in interpreter.get_input_details()}
    for index in self._input_indices:
      signature = list(details[index]["shape_signature"])
      if signature and signature[0] < 0:
        interpreter.resize_tensor_input(index, [batch] + signature[1:], strict=True)
    interpreter.allocate_tensors()
    lease = (self._views(interpreter, batch) if self.zero_copy else
             self._public(interpreter, batch))
    with self._lock:
      if batch not in self._free:
        self._free[batch] = []
        while len(self._free) > MAX_BATCH_SIZES:
          del self._free[next(iter(self._free))]
    return lease

  def _views(self, interpreter, batch: int) -> tuple:
    # The views are safe: no tensor is resized after allocation, and buffers
    # are taken after a first run (which may still move them) and checked not
    # to move on the next one.
    invoke = interpreter._interpreter.Invoke  # pylint: disable=protected-access
    for index in self._input_indices:
      interpreter.tensor(index)().fill(0)
    invoke()
    indices = self._input_indices + self._output_indices
    views = [interpreter.tensor(i)() for i in indices]
    invoke()
    if [v.__array_interface__["data"][0] for v in views] != \
        [interpreter.tensor(i)().__array_interface__["data"][0] for i in indices]:
      raise ValueError("the LiteRT model has tensors whose buffers move between calls "
                       "(dynamic shapes), which this engine does not support")
    count = len(self._input_indices)
    return (views[:count], invoke, views[count:], batch, interpreter)

  def _public(self, interpreter, batch: int) -> tuple:
    details = {d["index"]: d for d in interpreter.get_input_details()}
    inputs = [np.zeros(details[i]["shape"], details[i]["dtype"]) for i in self._input_indices]
    pairs = list(zip(self._input_indices, inputs))
    output_indices = self._output_indices
    set_tensor, run, get_tensor = interpreter.set_tensor, interpreter.invoke, interpreter.get_tensor
    outputs: list = []

    def invoke() -> None:
      for index, array in pairs:
        set_tensor(index, array)
      run()
      outputs[:] = [get_tensor(i) for i in output_indices]

    invoke()   # a model that does not run fails here, at load
    return (inputs, invoke, outputs, batch, interpreter)


def model_of(call_args: tuple) -> Optional[LiteModel]:
  """The LiteModel whose `(lease, release)` are a copy's call_args (None: not LiteRT)."""
  owner = getattr(call_args[0], "__self__", None) if call_args else None
  return owner if isinstance(owner, LiteModel) else None


def non_builtin_ops(flatbuffer: bytes) -> list:
  """Names of the model's operators that are not LiteRT builtins (custom, Flex, unknown).

  Raises:
    ValueError: `flatbuffer` is not a LiteRT model.
  """
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel

  if len(flatbuffer) < 8 or flatbuffer[4:8] != b"TFL3":
    raise ValueError("not a LiteRT flatbuffer (no TFL3 identifier)")
  try:
    model = schema.Model.GetRootAs(flatbuffer, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    known = {v for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    found = []
    for code in codes:
      builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
      if builtin == schema.BuiltinOperator.CUSTOM or builtin not in known:
        custom = code.CustomCode()
        found.append(custom.decode(errors="replace") if custom else f"operator code {builtin}")
  except Exception as e:  # pylint: disable=broad-except  (a malformed table)
    raise ValueError(f"not a readable LiteRT flatbuffer ({type(e).__name__}: {e})") from None
  return found
