"""The LiteRT engine: the saved `action` converted to a LiteRT model.

At load (and for the standby copy on every update) the copy's `action`
function, with its current weights frozen in, is converted with builtin ops
only (`tf.lite.TFLiteConverter`), or read from the conversion cache, then
validated against the TF function on sampled inputs before it serves a call.

Per call the native plan validates the caller's nest exactly as on the TF
path, copies each leaf into the interpreter's input buffers, runs it, and
copies the outputs into arrays the caller owns (`Plan.call_buffers`).
Interpreters are prepared per batch size (the most recent
`MAX_BATCH_SIZES`), one per concurrent caller, so no interpreter ever runs
two calls at once and no call resizes a tensor.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import re
import threading
import uuid
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from ai_edge_litert import interpreter as litert
from tensorflow.python.util import nest

from policies import loading
from policies import storage

# Validation: deterministic float outputs must satisfy
# |lite - tf| <= FLOAT_RTOL * |tf| + FLOAT_ATOL; integer and bool outputs must be equal.
FLOAT_RTOL = 1e-5
FLOAT_ATOL = 1e-5
VALIDATION_SAMPLES = 64
# Batch sizes with prepared interpreters; the least recently used is dropped.
MAX_BATCH_SIZES = 8
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


def write_saved_model(saved_model_pb: bytes, loaded: loading.LoadedPolicy, directory: str,
                      what: str) -> None:
  """`saved_model_pb` (the audited bytes) with the copy's current weights, in `directory`."""
  if not isinstance(loaded, loading.ObjectGraphPolicy):
    raise ValueError(f"{what}: LiteRT conversion needs the SavedModel's object graph; this "
                     f"export loads from its flat signatures only ({loaded.mode})")
  tf.io.gfile.makedirs(storage.join(directory, tf.saved_model.VARIABLES_DIRECTORY))
  with tf.io.gfile.GFile(storage.join(directory, loading.SAVED_MODEL_FILE), "wb") as f:
    f.write(saved_model_pb)
  tf.train.Checkpoint(root=loaded.saved).write(storage.join(directory, loading.VARIABLES_PREFIX))


def convert(directory: str, what: str) -> bytes:
  """A LiteRT flatbuffer of the SavedModel's `action` signature, builtin ops only.

  Raises:
    ValueError: naming the ops that have no LiteRT builtin, when that is why.
  """
  try:
    with _quiet_tf_logging():
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


def signature_indices(flatbuffer: bytes, specs, function) -> tuple:
  """LiteRT tensor indices of the plan's argument slots and output indices.

  The converted `action` signature keeps PolicySaver's nest-path names
  ("0/observation/img", "1/0"; "action", "state/0", "info/..."), which the
  specs give for each leaf.

  Raises:
    ValueError: the names do not match.
  """
  signature = litert.Interpreter(model_content=flatbuffer)._get_full_signature_list()  # pylint: disable=protected-access
  inputs = signature.get("action", {}).get("inputs", {})
  outputs = signature.get("action", {}).get("outputs", {})
  in_names = (loading.nest_path_names(specs.time_step_spec, "0/") +
              loading.nest_path_names(specs.policy_state_spec, "1/"))
  out_names = (loading.nest_path_names(specs.action_spec, "action/") +
               loading.nest_path_names(specs.policy_state_spec, "state/") +
               loading.nest_path_names(specs.info_spec, "info/"))
  missing = [n for n in in_names if n not in inputs] + [n for n in out_names if n not in outputs]
  if missing or len(inputs) != len(in_names) or len(outputs) != len(out_names):
    raise ValueError(f"the LiteRT signature does not match the specs: inputs {sorted(inputs)}, "
                     f"outputs {sorted(outputs)}")
  slot_of = function.input_slots or range(len(in_names))
  index_of = function.output_indices or range(len(out_names))
  by_slot = [0] * len(in_names)
  for name, slot in zip(in_names, slot_of):
    by_slot[slot] = inputs[name]
  by_output = [0] * len(out_names)
  for name, index in zip(out_names, index_of):
    by_output[index] = outputs[name]
  return by_slot, by_output


class LiteModel:
  """A converted `action` and its interpreters, by batch size.

  `lease(batch)` hands one caller an interpreter prepared for `batch`, as
  `(inputs, invoke, outputs, batch, interpreter)` with numpy arrays over its
  input and output buffers in the function's order; `release(lease)` returns
  it. An interpreter serves one call at a time.
  """

  def __init__(self, flatbuffer: bytes, input_indices: list, output_indices: list):
    self.flatbuffer = flatbuffer
    self._input_indices = input_indices
    self._output_indices = output_indices
    self._free: dict = {}                       # batch -> [lease, ...]
    self._recent = collections.OrderedDict()    # batch sizes, least recent first
    self._lock = threading.Lock()               # creating and evicting only
    self.release(self.lease(self._own_batch()))  # fails here rather than on a call

  def _own_batch(self) -> int:
    """The batch size the model was exported with, or 1 if it takes any."""
    details = litert.Interpreter(model_content=self.flatbuffer).get_input_details()
    signature = list(details[0]["shape_signature"]) if details else []
    return int(signature[0]) if signature and signature[0] > 0 else 1

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

  def _new_lease(self, batch: int):
    interpreter = litert.Interpreter(model_content=self.flatbuffer, num_threads=1)
    details = {d["index"]: d for d in interpreter.get_input_details()}
    inputs = [details[i] for i in self._input_indices]
    outputs = [{"index": i} for i in self._output_indices]
    for detail in inputs:
      signature = list(detail["shape_signature"])
      if signature and signature[0] < 0:
        interpreter.resize_tensor_input(detail["index"], [batch] + signature[1:], strict=True)
    interpreter.allocate_tensors()
    # The public invoke() refuses to run while numpy views of the buffers
    # exist. The views are safe: no tensor is resized after allocation, and
    # buffers are taken after a first run (which may still move them) and
    # checked not to move on the next one.
    invoke = interpreter._interpreter.Invoke  # pylint: disable=protected-access
    for detail in inputs:
      interpreter.set_tensor(detail["index"], np.zeros(
          [batch] + list(detail["shape"])[1:] if list(detail["shape_signature"])[:1] == [-1]
          else detail["shape"], detail["dtype"]))
    invoke()
    input_views = [interpreter.tensor(d["index"])() for d in inputs]
    output_views = [interpreter.tensor(d["index"])() for d in outputs]
    before = [v.__array_interface__["data"][0] for v in input_views + output_views]
    invoke()
    after = [interpreter.tensor(d["index"])().__array_interface__["data"][0]
             for d in inputs + outputs]
    if before != after:
      raise ValueError("the LiteRT model has tensors whose buffers move between calls "
                       "(dynamic shapes), which this engine does not support")
    lease = (input_views, invoke, output_views, batch, interpreter)
    with self._lock:
      if batch not in self._free:
        self._free[batch] = []
        self._recent[batch] = None
        while len(self._recent) > MAX_BATCH_SIZES:
          evicted, _ = self._recent.popitem(last=False)
          self._free.pop(evicted, None)
      else:
        self._recent.move_to_end(batch)
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
  bounds = dict(nest.flatten_with_joined_string_paths(action_spec))
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
    spec_path = path[len("action/"):] if path.startswith("action/") else \
        ("" if path == "action" else None)
    spec = bounds.get(spec_path) if spec_path is not None else None
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
    self._saved_model_pb = source.pb_bytes
    self._what = source.path
    self.cache = ConversionCache(cache_dir or default_cache_dir())
    self.call = plan.native_call_buffers   # call(time_step, policy_state, lease, release)
    self.last_conversion = None            # "converted" or "cache hit", for tests and logs

  def prepare(self, loaded: loading.LoadedPolicy) -> tuple:
    model = self.model_for(loaded)
    self.validate(model, loaded)
    return (model.lease, model.release)

  def model_for(self, loaded: loading.LoadedPolicy) -> LiteModel:
    """The copy's LiteRT model (current weights): from the cache, else converted."""
    directory = f"ram://policy_runtime_lite/{uuid.uuid4().hex}"
    try:
      write_saved_model(self._saved_model_pb, loaded, directory, self._what)
      key = cache_key(self._fingerprint, directory)
      flatbuffer = self.cache.get(key)
      if flatbuffer is not None:
        try:
          model = LiteModel(flatbuffer, *signature_indices(flatbuffer, self._specs, loaded.action))
          self.last_conversion = "cache hit"
          return model
        except Exception as e:  # pylint: disable=broad-except
          log.warning("ignoring a LiteRT cache entry that does not load (%s): %s", key, e)
      flatbuffer = convert(directory, self._what)
    finally:
      storage.remove_tree(directory)
    try:
      model = LiteModel(flatbuffer, *signature_indices(flatbuffer, self._specs, loaded.action))
    except (ValueError, RuntimeError) as e:
      raise ValueError(f"{self._what}: the LiteRT model does not load: "
                       f"{str(e).strip().splitlines()[0]}") from None
    self.cache.put(key, flatbuffer)
    self.last_conversion = "converted"
    return model

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
