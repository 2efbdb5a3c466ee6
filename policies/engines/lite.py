"""The LiteRT engine: the saved `action` converted to a LiteRT model.

At load (and for the standby copy on every update) the copy's `action`
function, with its current weights frozen in, is converted with builtin ops
only (`tf.lite.TFLiteConverter`), or read from the conversion cache, then
validated against the TF function on sampled inputs before it serves a call.

Per call the native plan validates the caller's nest exactly as on the TF
path, copies each leaf into the interpreter's input buffers, runs it, and
copies the outputs into arrays the caller owns (`Plan.call_buffers`).
Interpreters are prepared per batch size (the last `MAX_BATCH_SIZES`
sizes prepared), one per concurrent caller, so no interpreter ever runs
two calls at once and no call resizes a tensor.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import tempfile
import threading
import uuid
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from ai_edge_litert import interpreter as litert
from tensorflow.python.util import nest

from policies import loading
from policies import storage
from policies.engines import lite_rewrites

# Validation: deterministic float outputs must satisfy
# |lite - tf| <= FLOAT_RTOL * |tf| + FLOAT_ATOL; integer and bool outputs must be equal.
FLOAT_RTOL = 1e-5
FLOAT_ATOL = 1e-5
VALIDATION_SAMPLES = 64
# Batch sizes with prepared interpreters; the one prepared first is dropped.
MAX_BATCH_SIZES = 12
CACHE_ENV = "POLICY_RUNTIME_CACHE_DIR"

_CACHE_MAGIC = b"policy_runtime.lite.v1\n"
_BLOCKING_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")

log = logging.getLogger("policies")


def default_cache_dir() -> str:
  """$POLICY_RUNTIME_CACHE_DIR, else $XDG_CACHE_HOME/policy_runtime, else ~/.cache/policy_runtime."""
  if os.environ.get(CACHE_ENV):
    return os.environ[CACHE_ENV]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "policy_runtime")


# -- Conversion -----------------------------------------------------------------


@contextlib.contextmanager
def _quiet_tf_logging():
  """Hides the converter's Python warnings (e.g. about its conversion path)."""
  loggers = [logging.getLogger("absl"), tf.get_logger()]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


@contextlib.contextmanager
def _stderr_to_debug_log():
  """Sends what the converter's C++ side prints on fd 2 (its op summary) to the debug log."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      sink.seek(0)
      text = sink.read().decode(errors="replace").strip()
      if text:
        log.debug("LiteRT converter output:\n%s", text)


def write_saved_model(saved_model_pb: bytes, loaded: loading.LoadedPolicy,
                      directory: str) -> None:
  """`saved_model_pb` (the audited bytes, rewritten for the converter) with the
  copy's current weights, in `directory`."""
  tf.io.gfile.makedirs(storage.join(directory, tf.saved_model.VARIABLES_DIRECTORY))
  with tf.io.gfile.GFile(storage.join(directory, loading.SAVED_MODEL_FILE), "wb") as f:
    f.write(saved_model_pb)
  loaded.write_variables(storage.join(directory, loading.VARIABLES_PREFIX))


def convert(directory: str, what: str) -> bytes:
  """A LiteRT flatbuffer of the SavedModel's `action` signature, builtin ops only.

  Raises:
    ValueError: naming the ops that have no LiteRT builtin, when that is why.
  """
  try:
    with _quiet_tf_logging(), _stderr_to_debug_log():
      converter = tf.lite.TFLiteConverter.from_saved_model(directory, signature_keys=["action"])
      converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
      return converter.convert()
  except Exception as e:  # pylint: disable=broad-except
    ops = sorted(set(_BLOCKING_OP.findall(str(e))))
    if ops:
      raise ValueError(f"{what}: cannot convert 'action' to LiteRT with builtin ops only; "
                       f"no LiteRT builtin for: {', '.join(ops)}") from None
    first = storage.first_line(e).replace(directory, what)
    raise ValueError(f"{what}: cannot convert 'action' to LiteRT: {first}") from None


def cache_key(fingerprint: str, directory: str) -> str:
  """Names a conversion: the audited saved_model.pb and the variables' files."""
  digest = hashlib.sha256(_CACHE_MAGIC + fingerprint.encode() + tf.__version__.encode())
  prefix = storage.join(directory, loading.VARIABLES_PREFIX)
  for path in sorted(tf.io.gfile.glob(prefix + ".*")):
    digest.update(path[len(prefix):].encode())
    digest.update(storage.read_bytes(path))
  return digest.hexdigest()


class ConversionCache:
  """Flatbuffers by key in a local directory; bad entries are ignored and rebuilt.

  An entry is the magic line, the key, the SHA-256 of the flatbuffer, then
  the flatbuffer; anything else under that name (truncated, corrupt, another
  key's) is a miss.
  """

  def __init__(self, directory: str):
    self.directory = os.path.join(directory, "lite")

  def _path(self, key: str) -> str:
    return os.path.join(self.directory, key + ".tflite")

  def get(self, key: str) -> Optional[bytes]:
    try:
      with open(self._path(key), "rb") as f:
        data = f.read()
    except OSError:
      return None
    header = _CACHE_MAGIC + key.encode() + b"\n"
    if not data.startswith(header) or len(data) < len(header) + 32:
      return None
    digest, flatbuffer = data[len(header):len(header) + 32], data[len(header) + 32:]
    return flatbuffer if hashlib.sha256(flatbuffer).digest() == digest else None

  def put(self, key: str, flatbuffer: bytes) -> None:
    """Writes atomically (rename); a cache that cannot be written is skipped."""
    path = self._path(key)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
      os.makedirs(self.directory, exist_ok=True)
      with open(tmp, "wb") as f:
        f.write(_CACHE_MAGIC + key.encode() + b"\n" + hashlib.sha256(flatbuffer).digest() +
                flatbuffer)
      os.replace(tmp, path)
    except OSError as e:
      log.warning("LiteRT conversion cache not written (%s): %s", path, e)
      with contextlib.suppress(OSError):
        os.remove(tmp)


# -- Interpreters -----------------------------------------------------------------


class LiteModel:
  """A converted `action` and its interpreters, by batch size.

  `lease(batch)` hands one caller an interpreter prepared for `batch`, as
  `(inputs, invoke, outputs, batch, interpreter)` with numpy arrays over its
  input and output buffers in the function's order; `release(lease)` returns
  it. An interpreter serves one call at a time.

  Args:
    flatbuffer: the converted model.
    input_names: its `action` signature's input names, by argument slot.
    output_names: its output names, by output index.
    first_batch: the batch size of the first interpreter (made here, so a
      model that does not run fails at load rather than on a call).

  Raises:
    ValueError: the signature does not have those names, or a tensor moves.
  """

  def __init__(self, flatbuffer: bytes, input_names: list, output_names: list,
               first_batch: int):
    self.flatbuffer = flatbuffer
    interpreter = litert.Interpreter(model_content=flatbuffer, num_threads=1)
    signature = interpreter._get_full_signature_list().get("action", {})  # pylint: disable=protected-access
    inputs, outputs = signature.get("inputs", {}), signature.get("outputs", {})
    if sorted(inputs) != sorted(input_names) or sorted(outputs) != sorted(output_names):
      raise ValueError(f"the LiteRT signature does not match the specs: inputs "
                       f"{sorted(inputs)}, outputs {sorted(outputs)}")
    self._input_indices = [inputs[n] for n in input_names]
    self._output_indices = [outputs[n] for n in output_names]
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

  def _new_lease(self, batch: int, interpreter=None):
    if interpreter is None:
      interpreter = litert.Interpreter(model_content=self.flatbuffer, num_threads=1)
    details = {d["index"]: d for d in interpreter.get_input_details()}
    for index in self._input_indices:
      signature = list(details[index]["shape_signature"])
      if signature and signature[0] < 0:
        interpreter.resize_tensor_input(index, [batch] + signature[1:], strict=True)
    interpreter.allocate_tensors()
    # The public invoke() refuses to run while numpy views of the buffers
    # exist. The views are safe: no tensor is resized after allocation, and
    # buffers are taken after a first run (which may still move them) and
    # checked not to move on the next one.
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
    lease = (views[:count], invoke, views[count:], batch, interpreter)
    with self._lock:
      if batch not in self._free:
        self._free[batch] = []
        while len(self._free) > MAX_BATCH_SIZES:
          del self._free[next(iter(self._free))]
    return lease


# -- Validation -------------------------------------------------------------------


def _sample(spec, outer: tuple, rng: np.random.Generator, field: str) -> np.ndarray:
  shape = outer + tuple(spec.shape)
  dtype = np.dtype(spec.dtype)
  if field == "step_type":
    return rng.integers(0, 3, size=shape).astype(dtype)
  if dtype == np.bool_:
    return rng.integers(0, 2, size=shape).astype(bool)
  low = getattr(spec, "minimum", None)
  high = getattr(spec, "maximum", None)
  if np.issubdtype(dtype, np.integer):
    low = 0 if low is None else low
    high = 2 if high is None else high
    return rng.integers(np.broadcast_to(low, shape), np.broadcast_to(high, shape) + 1,
                        size=shape).astype(dtype)
  if np.issubdtype(dtype, np.floating):
    if low is not None and high is not None:
      low = np.maximum(np.broadcast_to(low, shape), -10.0)
      high = np.minimum(np.broadcast_to(high, shape), 10.0)
      return rng.uniform(low, high, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)
  raise ValueError(f"no LiteRT validation input for dtype {dtype}")


def sample_inputs(time_step_spec, policy_state_spec, time_step_outer: tuple,
                  state_outer: tuple, rng: np.random.Generator):
  """A (time_step, policy_state) of random values within the specs."""
  time_step = time_step_spec._replace(**{
      field: tf.nest.map_structure(
          lambda s, f=field: _sample(s, time_step_outer, rng, f), getattr(time_step_spec, field))
      for field in time_step_spec._fields})
  state = tf.nest.map_structure(lambda s: _sample(s, state_outer, rng, "state"),
                                policy_state_spec)
  return time_step, state


def compare(reference, again, lite, action_spec) -> Optional[str]:
  """Why `lite` disagrees with the TF outputs (`reference`, `again`), or None.

  Leaves on which the two TF runs agree are deterministic and must match;
  the others are samples, checked for dtype, shape and the action bounds.
  """
  paths = nest.flatten_with_joined_string_paths(reference)
  flat_again = tf.nest.flatten(again)
  flat_lite = tf.nest.flatten(lite)
  bounds = {("action/" + p if p else "action"): spec
            for p, spec in nest.flatten_with_joined_string_paths(action_spec)}
  for (path, ref), ref2, got in zip(paths, flat_again, flat_lite):
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.dtype != got.dtype or ref.shape != got.shape:
      return f"{path}: LiteRT gives {got.dtype}{list(got.shape)}, TF {ref.dtype}{list(ref.shape)}"
    if np.array_equal(ref, np.asarray(ref2), equal_nan=True):
      if np.issubdtype(ref.dtype, np.floating):
        if not np.allclose(got, ref, rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True):
          worst = float(np.max(np.abs(got.astype(np.float64) - ref)))
          return f"{path}: LiteRT differs from TF by up to {worst:.3g}"
      elif not np.array_equal(got, ref):
        return f"{path}: LiteRT gives {got.ravel()[:4]}..., TF {ref.ravel()[:4]}..."
      continue
    spec = bounds.get(path)
    if spec is not None and hasattr(spec, "minimum"):
      if np.any(got < spec.minimum) or np.any(got > spec.maximum):
        return f"{path}: LiteRT sampled a value outside [{spec.minimum}, {spec.maximum}]"
  return None


class LiteEngine:
  """Runs copies of the policy on LiteRT (see module docstring).

  Args:
    plan: the policy's marshaling plan.
    tf_call: `tf_call(time_step, policy_state, loaded)` runs a copy on TF.
    specs: the policy's `PolicySpecs` (validation inputs, action bounds).
    source: the audited SavedModel (its saved_model.pb is converted with each
      copy's variables; errors name its path).
    cache_dir: conversion cache directory (None: `default_cache_dir()`).
  """

  name = "lite"

  def __init__(self, plan, tf_call: Callable, specs, source: loading.SavedModelSource,
               cache_dir: Optional[str] = None):
    self._plan = plan
    self._tf_call = tf_call
    self._specs = specs
    self._fingerprint = source.fingerprint
    # The converter decodes the object graph, so an export that loads here
    # from its flat signatures only gets its unknown TypeSpecs dropped first.
    self._saved_model_pb = lite_rewrites.without_unknown_type_specs(
        lite_rewrites.for_builtins(source.pb_bytes))
    self._what = source.path
    self.cache = ConversionCache(cache_dir or default_cache_dir())
    function = plan.function
    inputs, outputs = loading.action_signature_names(specs)
    self._input_names = [None] * len(inputs)          # by argument slot
    for name, slot in zip(inputs, function.input_slots or range(len(inputs))):
      self._input_names[slot] = name
    self._output_names = [None] * len(outputs)        # by output index
    for name, index in zip(outputs, function.output_indices or range(len(outputs))):
      self._output_names[index] = name
    self.call = plan.native_call_buffers   # call(time_step, policy_state, lease, release)
    self.last_conversion = None            # "converted" or "cache hit", for tests and logs

  def prepare(self, loaded: loading.LoadedPolicy) -> tuple:
    model = self.model_for(loaded)
    self.validate(model, loaded)
    return (model.lease, model.release)

  @staticmethod
  def rows_call(rows_plan):
    """`call(rows, pad_to, *call_args)` of a row plan (for the dynamic batcher)."""
    return rows_plan.call_rows_buffers

  @staticmethod
  def rows_batch(rows: int, max_rows: int) -> int:
    """Rows padded to a power of two (at most `max_rows`): a few prepared
    interpreter sizes serve every batch, and none is resized per call."""
    return min(1 << (rows - 1).bit_length(), max(rows, max_rows))

  def model_for(self, loaded: loading.LoadedPolicy) -> LiteModel:
    """The copy's LiteRT model (current weights): from the cache, else converted."""
    directory = f"ram://policy_runtime_lite/{uuid.uuid4().hex}"
    try:
      write_saved_model(self._saved_model_pb, loaded, directory)
      key = cache_key(self._fingerprint, directory)
      flatbuffer = self.cache.get(key)
      if flatbuffer is not None:
        try:
          model = self._model(flatbuffer)
          self.last_conversion = "cache hit"
          return model
        except Exception as e:  # pylint: disable=broad-except
          log.warning("ignoring a LiteRT cache entry that does not load (%s): %s", key, e)
      flatbuffer = convert(directory, self._what)
    finally:
      storage.remove_tree(directory)
    try:
      model = self._model(flatbuffer)
    except (ValueError, RuntimeError) as e:
      raise ValueError(f"{self._what}: the LiteRT model does not load: "
                       f"{str(e).strip().splitlines()[0]}") from None
    self.cache.put(key, flatbuffer)
    self.last_conversion = "converted"
    return model

  def _model(self, flatbuffer: bytes) -> LiteModel:
    return LiteModel(flatbuffer, self._input_names, self._output_names,
                     self._plan.fixed_batch_size or 1)

  def validate(self, model: LiteModel, loaded: loading.LoadedPolicy) -> None:
    """Raises ValueError unless LiteRT agrees with TF on sampled inputs."""
    rng = np.random.default_rng(0)
    specs = self._specs
    if self._plan.batch_time_steps:
      cases = [sample_inputs(specs.time_step_spec, specs.policy_state_spec, (), (1,), rng)
               for _ in range(VALIDATION_SAMPLES)]
    else:
      batch = self._plan.fixed_batch_size or VALIDATION_SAMPLES
      cases = [sample_inputs(specs.time_step_spec, specs.policy_state_spec, (batch,), (batch,),
                             rng)]
    for time_step, state in cases:
      reference = self._tf_call(time_step, state, loaded)
      again = self._tf_call(time_step, state, loaded)
      lite = self.call(time_step, state, model.lease, model.release)
      problem = compare(reference, again, lite, specs.action_spec)
      if problem:
        raise ValueError(f"{self._what}: the LiteRT model disagrees with the TF function "
                         f"on sampled inputs: {problem}")
