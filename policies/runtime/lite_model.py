"""A LiteRT model of a policy's `action` and how it runs, without TensorFlow.

Used by the LiteRT engine (`policies.engines.lite`) and by compiled policies
(`policies.runtime.compiled`). A model runs one of two ways; `call_args` are what the
native plan's `call_buffers(time_step, policy_state, *call_args)` takes:
* natively (`engine`, the usual way): LiteRT's C API in the installed
  ai-edge-litert's `libLiteRt.so` (`native/litert_engine.h`, found by
  `litert_library`), with no Python between validation and packing;
* through ai-edge-litert's Python interpreter, public API only, when the
  native engine cannot run the model here (`native_reason` says why; logged):
  `lease(batch)` hands one caller an interpreter prepared for `batch` as
  `(inputs, invoke, outputs, batch, interpreter)`, where `invoke` sets the
  inputs (`set_tensor`), runs `invoke()` and reads the outputs (`get_tensor`);
  `release(lease)` returns it.
Either way a prepared runner serves one call at a time, and the last
`MAX_BATCH_SIZES` batch sizes keep theirs.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

import numpy as np
from ai_edge_litert import interpreter as litert

from ...native import marshal
from . import litert_library

log = logging.getLogger("policy_runtime")

SIGNATURE = "action"
MAX_BATCH_SIZES = 12
# Native runs at this batch and above release the GIL. Every run does: a run
# that keeps it starves threads that release it often (TF calls, I/O), each of
# which then waits a switch interval (5 ms) to get it back.
RELEASE_GIL_FROM_BATCH = 1


# What a LiteRT model can be converted to: "fp32", or "int8" (dynamic-range
# quantization; see policies/engines/lite.py).
PRECISIONS = ("fp32", "int8")


def check_precision(precision) -> str:
  """`precision` if it is one of PRECISIONS; else raises ValueError naming it."""
  if precision not in PRECISIONS:
    raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, "
                     f"got {precision!r}")
  return precision


def check_num_threads(num_threads) -> int:
  """`num_threads` if it is a positive int; else raises TypeError or ValueError naming it."""
  if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
    raise TypeError(f"num_threads: expected a positive int, got {type(num_threads).__name__}")
  if num_threads < 1:
    raise ValueError(f"num_threads: expected a positive int, got {num_threads}")
  return int(num_threads)


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
  """A converted `action` and how it runs (see module docstring).

  Args:
    flatbuffer: the converted model.
    input_names: its `action` signature's input names, by argument slot.
    output_names: its output names, by output index.
    first_batch: the batch size prepared first (here, so a model that does
      not run fails at load rather than on a call).
    native: run on the native engine when it can (False: the interpreter).
    layout: `layout` of a model of the same graph with other weights (its
      signature's tensor indices and output shapes), which then need not be
      read again.
    num_threads: CPU threads per run (XNNPACK's thread pool; 1: the calling
      thread only).

  Raises:
    ValueError: the signature does not have those names, or num_threads is not
      a positive integer.
  """

  def __init__(self, flatbuffer: bytes, input_names: list, output_names: list,
               first_batch: int, native: bool = True, layout: Optional[tuple] = None,
               num_threads: int = 1):
    self.num_threads = check_num_threads(num_threads)
    self.flatbuffer = flatbuffer
    self.input_names, self.output_names = list(input_names), list(output_names)
    self._free: dict = {}                       # batch -> [lease, ...], oldest size first
    self._lock = threading.Lock()               # creating and evicting only
    self.engine, self.native_reason = None, "not asked for"
    interpreter = None
    if layout is not None:
      self._input_indices, self._output_indices, self._dims = layout
    else:
      interpreter = litert.Interpreter(model_content=flatbuffer, num_threads=self.num_threads)
      self._input_indices, self._output_indices = signature_indices(
          interpreter, input_names, output_names)
      self._dims = None
    if native and self._dims is None and interpreter is None:
      interpreter = litert.Interpreter(model_content=flatbuffer, num_threads=self.num_threads)
    if native:
      self.engine, self.native_reason = self._native(interpreter, input_names, output_names,
                                                     first_batch)
    if self.engine is None and interpreter is None:
      interpreter = litert.Interpreter(model_content=flatbuffer, num_threads=self.num_threads)
    if self.engine is not None:
      self._call_args = (self.engine.handle, self.release)
    else:
      if native:
        log.info("LiteRT runs on its Python interpreter, not natively: %s", self.native_reason)
      self._call_args = (self.lease, self.release)
      self.release(self._new_lease(first_batch, interpreter))

  @property
  def runtime(self) -> str:
    """"native" (LiteRT's C API), or "interpreter (why not native)"."""
    return "native" if self.engine is not None else f"interpreter ({self.native_reason})"

  @property
  def layout(self) -> tuple:
    """What a model of the same graph with other weights can reuse (see `__init__`)."""
    return (self._input_indices, self._output_indices, self._dims)

  @property
  def call_args(self) -> tuple:
    """`(lease, release)` for the plan's `call_buffers`: the native engine's handle in
    place of `lease` when there is one (its `release` is then unused)."""
    return self._call_args

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

  def close(self) -> None:
    """Drops the runners and the call arguments, which reference this model (a cycle), so
    that its LiteRT memory is freed now rather than at the next full garbage collection.
    Only once nothing calls it any more."""
    with self._lock:
      self._free = {}
    self._call_args = ()
    self.engine = None

  def discard(self, batch: int) -> None:
    """Drops the runners prepared for `batch` (e.g. validation's large batches)."""
    if self.engine is not None:
      self.engine.discard(batch)
    with self._lock:
      self._free.pop(batch, None)

  def _native(self, interpreter, input_names: list, output_names: list, first_batch: int):
    """(engine, None), or (None, why the native engine does not run this model here)."""
    library = litert_library.find()
    if library.path is None:
      return None, library.reason
    try:
      if self._dims is None:
        self._dims = self._output_dims(interpreter)
      dims = self._dims
      engine = marshal.LiteRtEngine(
          library.path, self.flatbuffer, SIGNATURE, input_names, output_names, dims,
          first_batch, MAX_BATCH_SIZES, RELEASE_GIL_FROM_BATCH, self.num_threads)
    except (ValueError, RuntimeError) as e:
      return None, str(e)
    return engine, None

  def _output_dims(self, interpreter) -> list:
    """The outputs' dims, -1 for the batch, as the interpreter computes them on a run.

    LiteRT's static output shapes can be stale; the run's are not. A batched
    model runs at batch 2, and every output must carry that batch.
    """
    details = {d["index"]: d for d in interpreter.get_input_details()}
    batched = False
    for index in self._input_indices:
      signature = list(details[index]["shape_signature"])
      if signature and signature[0] < 0:
        batched = True
        interpreter.resize_tensor_input(index, [2] + signature[1:], strict=True)
    interpreter.allocate_tensors()
    for index in self._input_indices:
      interpreter.set_tensor(index, np.zeros(interpreter.get_tensor(index).shape,
                                             details[index]["dtype"]))
    interpreter.invoke()
    dims = []
    for index in self._output_indices:
      shape = list(interpreter.get_tensor(index).shape)
      if batched:
        if not shape or shape[0] != 2:
          raise ValueError(f"output tensor {index} has shape {shape} at batch 2")
        shape[0] = -1
      dims.append(shape)
    return dims

  def _new_lease(self, batch: int, interpreter=None):
    if interpreter is None:
      interpreter = litert.Interpreter(model_content=self.flatbuffer, num_threads=self.num_threads)
    details = {d["index"]: d for d in interpreter.get_input_details()}
    for index in self._input_indices:
      signature = list(details[index]["shape_signature"])
      if signature and signature[0] < 0:
        interpreter.resize_tensor_input(index, [batch] + signature[1:], strict=True)
    interpreter.allocate_tensors()
    lease = self._interpreter_lease(interpreter, batch)
    with self._lock:
      if batch not in self._free:
        self._free[batch] = []
        while len(self._free) > MAX_BATCH_SIZES:
          del self._free[next(iter(self._free))]
    return lease

  def _interpreter_lease(self, interpreter, batch: int) -> tuple:
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
  """The LiteModel whose `call_args` a copy carries (None: not LiteRT)."""
  owner = getattr(call_args[1], "__self__", None) if len(call_args) == 2 else None
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
