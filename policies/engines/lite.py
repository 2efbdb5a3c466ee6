"""The LiteRT engine: the saved `action` converted to a LiteRT model.

At load the `action` function is converted with builtin ops only
(`tf.lite.TFLiteConverter`), or read from the conversion cache, and
`lite_weights` learns where the weights sit in the converted model. Every
weight set after that (the load's own, a checkpoint's, weights pushed into
`variables()`) is written into that model's buffers, with no conversion;
graphs whose weights cannot be followed that way are converted again with the
copy's weights frozen in. A model is validated against the TF function on
sampled inputs at load and on every checkpoint update before it serves a call
(pushed weights are written into the model that was validated).

`precision="int8"` converts with dynamic-range quantization (int8 weights per
channel, activations quantized per call; XNNPACK's int8 kernels) and checks
the model against TF with a criterion for that precision
(`lite_validation.check_agreement`): integer and bool outputs agree with TF on
at least 99.9 % of sampled rows, float outputs stay within 3 % of their range,
sampled outputs pass the same distribution check as fp32. Its weights are
quantized, so every new weight set (checkpoint or push) is converted again.

Per call the native plan validates the caller's nest exactly as on the TF
path, copies each leaf into the interpreter's input buffers, runs it, and
copies the outputs into arrays the caller owns (`Plan.call_buffers`).
Interpreters (`lite_model`) are prepared per batch size (the last `MAX_BATCH_SIZES`
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

from ..runtime import batching
from ..runtime import lite_checks
from ..runtime import lite_model
from ..saved_model import graph_audit
from ..saved_model import loading
from ..saved_model import marshaling_plan
from ..saved_model import storage
from . import lite_converter
from . import lite_rewrites
from . import lite_validation
from . import lite_weights

# What validation allows deterministic float outputs (lite_validation has the rest).
FLOAT_RTOL = lite_validation.FLOAT_RTOL
FLOAT_ATOL = lite_validation.FLOAT_ATOL
CACHE_ENV = "POLICY_RUNTIME_CACHE_DIR"
# The largest tensor a converted model may declare (lite_checks).
MAX_TENSOR_BYTES = 2**30

_CACHE_MAGIC = b"policy_runtime.lite.v3\n"
_BLOCKING_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")

log = logging.getLogger("policy_runtime")


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


def write_saved_model_values(saved_model_pb: bytes, values: dict, directory: str) -> None:
  """`saved_model_pb` with the variables' checkpoint `values` (by key), in `directory`."""
  tf.io.gfile.makedirs(storage.join(directory, tf.saved_model.VARIABLES_DIRECTORY))
  with tf.io.gfile.GFile(storage.join(directory, loading.SAVED_MODEL_FILE), "wb") as f:
    f.write(saved_model_pb)
  loading.write_checkpoint(storage.join(directory, loading.VARIABLES_PREFIX), values)


def convert(directory: str, what: str, precision: str = "fp32") -> bytes:
  """A LiteRT flatbuffer of the SavedModel's `action` signature, builtin ops only.

  Runs in the converter child (`lite_converter`): a converter crash or hang
  is a ValueError here, never the caller's death.

  Raises:
    ValueError: naming the ops that have no LiteRT builtin, when that is why;
      the converter crashed or passed its time limit.
  """
  files = {}
  for root, _, names in tf.io.gfile.walk(directory):
    for name in names:
      path = storage.join(root, name)
      files[path[len(directory):].strip("/")] = storage.read_bytes(path)
  return lite_converter.convert_files(files, what, precision=precision)


def cache_key(fingerprint: str, directory: str, precision: str = "fp32") -> str:
  """Names a conversion: the audited saved_model.pb, the variables' files, the precision."""
  digest = hashlib.sha256(_CACHE_MAGIC + fingerprint.encode() + tf.__version__.encode())
  if precision != "fp32":
    digest.update(b"precision=" + precision.encode())
  prefix = storage.join(directory, loading.VARIABLES_PREFIX)
  for path in sorted(tf.io.gfile.glob(prefix + ".*")):
    digest.update(path[len(prefix):].encode())
    digest.update(storage.read_bytes(path))
  return digest.hexdigest()


def _expected_io(specs, input_names: list, output_names: list) -> tuple:
  """(inputs, outputs) for `lite_checks.check_model_io`: (name, numpy dtype, [-1, *shape])
  per leaf of the specs, in `loading.action_signature_names` order."""
  def leaves(*nests):
    found = []
    for nest in nests:
      for spec in tf.nest.flatten(nest):
        found.append((np.dtype(tf.as_dtype(spec.dtype).as_numpy_dtype),
                      [-1] + [int(d) if d is not None else -1 for d in spec.shape]))
    return found
  ins = leaves(specs.time_step_spec, specs.policy_state_spec)
  outs = leaves(specs.action_spec, specs.policy_state_spec, specs.info_spec)
  return ([(n, d, s) for n, (d, s) in zip(input_names, ins)],
          [(n, d, s) for n, (d, s) in zip(output_names, outs)])


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


class LiteEngine:
  """Runs copies of the policy on LiteRT (see module docstring).

  Args:
    plan: the policy's marshaling plan.
    tf_call: `tf_call(time_step, policy_state, loaded)` runs a copy on TF.
    specs: the policy's `PolicySpecs` (validation inputs, action bounds).
    source: the audited SavedModel (its saved_model.pb is converted with each
      copy's variables; errors name its path).
    cache_dir: conversion cache directory (None: `default_cache_dir()`).
    precision: "fp32" or "int8" (see the module docstring).
    num_threads: CPU threads per LiteRT run.
    observations: a `lite_validation.ObservationRows` of the user's
      observations to validate on instead of sampling them from the spec
      (the other time step fields and the state are still sampled).
  """

  name = "lite"

  def __init__(self, plan, tf_call: Callable, specs, source: loading.SavedModelSource,
               cache_dir: Optional[str] = None, precision: str = "fp32", num_threads: int = 1,
               observations=None):
    self.precision = lite_model.check_precision(precision)
    self.num_threads = num_threads   # checked where the models are made (LiteModel)
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
    self._expected_io = _expected_io(specs, inputs, outputs)
    self._checked = set()                  # SHA-256 of flatbuffers that passed the checks
    self.call = plan.native_call_buffers   # call(time_step, policy_state, lease, release)
    self.last_conversion = None            # "converted" or "cache hit", for tests and logs
    self.conversions = 0                   # converter runs, for tests and logs
    self.last_report = None                # the last ValidationReport
    self._draw_plan = None
    self._sampled = None                   # per output leaf, from the graph (_sampled_leaves)
    self._weights: Optional[lite_weights.WeightMap] = None
    self.weights_reason: Optional[str] = "not learnt yet"   # None: weights are written
    self._values = None                    # checkpoint values of the last prepared copy
    self._layout = None                    # (input indices, output indices, output dims)
    self._observations = observations

  def prepare(self, loaded: loading.LoadedPolicy) -> tuple:
    values = loaded.checkpoint_values()
    model = self.model_for(loaded, values)
    self.validate(model, loaded)
    self._values = values
    return model.call_args

  def follow(self, loaded: loading.LoadedPolicy, pushed: list) -> tuple:
    """The call_args for a copy whose model variables were just set to `pushed`.

    The values are written into the validated model's weight buffers; where
    the graph's weights cannot be followed that way (`weights_reason`), the
    copy is converted and validated as on an update.
    """
    values = dict(self._values)
    keys = [loading.model_variable_key(i) for i in range(len(pushed))]
    if all(k in values for k in keys):
      values.update(zip(keys, pushed))
    else:
      values = loaded.checkpoint_values()
    if self._weights is not None:
      try:
        model = self._filled_model(values)
        self._values = values
        return model.call_args
      except lite_weights.NotFollowable as e:
        log.info("converting the pushed weights: %s", e)
    return self.prepare(loaded)

  # Rows padded to a power of two: a few prepared interpreter sizes serve every batch.
  rows_batch = staticmethod(batching.padded_rows)

  def model_for(self, loaded: loading.LoadedPolicy,
                values: Optional[dict] = None) -> lite_model.LiteModel:
    """The copy's LiteRT model (current weights): written into the learnt model, else
    from the cache, else converted."""
    if values is None:
      values = loaded.checkpoint_values()
    if self.weights_reason == "not learnt yet":
      self._learn(values)
    if self._weights is not None:
      try:
        return self._filled_model(values)
      except lite_weights.NotFollowable as e:
        log.info("LiteRT: converting these weights: %s", e)
    return self._converted_model(loaded)

  def _learn(self, values: dict) -> None:
    """Learns where the weights go (two probe conversions, cached), or why they cannot."""
    if self.precision != "fp32":
      self.weights_reason = f"{self.precision} weights are quantized at conversion"
      return
    conversions = []

    def convert_probe(probe_values: dict, name: str) -> bytes:
      key = hashlib.sha256(_CACHE_MAGIC + self._fingerprint.encode() + tf.__version__.encode() +
                           name.encode()).hexdigest()
      flatbuffer = self.cache.get(key)
      if flatbuffer is None:
        directory = f"ram://policy_runtime_lite/{uuid.uuid4().hex}"
        try:
          write_saved_model_values(self._saved_model_pb, probe_values, directory)
          flatbuffer = convert(directory, self._what)
          self.conversions += 1
        finally:
          storage.remove_tree(directory)
        self.cache.put(key, flatbuffer)
        conversions.append("converted")
      else:
        conversions.append("cache hit")
      return flatbuffer

    try:
      self._weights = lite_weights.learn(values, convert_probe)
      self.weights_reason = None
    except lite_weights.NotFollowable as e:
      self.weights_reason = str(e)
      log.info("LiteRT: new weights of %s will be converted, not written into the model: %s",
               self._what, e)
    if conversions:
      self.last_conversion = "converted" if "converted" in conversions else "cache hit"

  def _filled_model(self, values: dict) -> lite_model.LiteModel:
    """The learnt model with `values` in its weight buffers (raises NotFollowable)."""
    flatbuffer = self._weights.fill(values)
    model = self._model(flatbuffer, layout=self._layout)
    self._layout = model.layout
    return model

  def _converted_model(self, loaded: loading.LoadedPolicy) -> lite_model.LiteModel:
    """The copy's graph converted with its weights frozen in (cached by weights)."""
    directory = f"ram://policy_runtime_lite/{uuid.uuid4().hex}"
    try:
      write_saved_model(self._saved_model_pb, loaded, directory)
      key = cache_key(self._fingerprint, directory, self.precision)
      flatbuffer = self.cache.get(key)
      if flatbuffer is not None:
        try:
          model = self._model(flatbuffer)
          self.last_conversion = "cache hit"
          return model
        except Exception as e:  # pylint: disable=broad-except
          log.warning("ignoring a LiteRT cache entry that does not load (%s): %s", key, e)
      flatbuffer = convert(directory, self._what, self.precision)
      self.conversions += 1
    finally:
      storage.remove_tree(directory)
    model = self._model(flatbuffer)
    self.cache.put(key, flatbuffer)
    self.last_conversion = "converted"
    return model

  def _model(self, flatbuffer: bytes, layout: Optional[tuple] = None) -> lite_model.LiteModel:
    """The model, once its signature matches the specs (`lite_checks`); ValueError if not."""
    try:
      self._check(flatbuffer, layout is not None)
      return lite_model.LiteModel(flatbuffer, self._input_names, self._output_names,
                                  self._plan.fixed_batch_size or 1, layout=layout,
                                  num_threads=self.num_threads)
    except Exception as e:  # pylint: disable=broad-except  (a malformed model: never a crash)
      lines = str(e).strip().splitlines()
      raise ValueError(f"{self._what}: the LiteRT model does not load: "
                       f"{lines[0] if lines else type(e).__name__}") from None

  def _check(self, flatbuffer: bytes, same_graph: bool) -> None:
    """Runs `lite_checks` on a model before anything runs it.

    A model filled with other weights (`same_graph`: it reuses a checked
    model's layout) differs from that one only in its weight bytes: not read again.
    """
    if same_graph:
      return
    digest = hashlib.sha256(flatbuffer).digest()
    if digest in self._checked:
      return
    inputs, outputs = self._expected_io
    lite_checks.check_model_io(flatbuffer, inputs, outputs, MAX_TENSOR_BYTES)
    self._checked.add(digest)

  def validate(self, model: lite_model.LiteModel, loaded: loading.LoadedPolicy) -> None:
    """Raises ValueError unless LiteRT behaves like TF (see lite_validation)."""
    try:
      report = self._validate(model, loaded)
    except lite_validation.ValidationError as e:
      inputs = ("sampled inputs" if self._observations is None else
                "validation_observations (other fields sampled)")
      raise ValueError(f"{self._what}: the LiteRT model disagrees with the TF function "
                       f"on {inputs}: {e}") from None
    if self._observations is not None:
      report.observations = self._observations.count
    self.last_report = report

  def _validate(self, model: lite_model.LiteModel, loaded: loading.LoadedPolicy):
    rng = np.random.default_rng(0)
    specs = self._specs
    sampled = self._sampled_leaves(loaded)
    bounds = lite_validation.action_bounds(specs.action_spec)
    if self.precision != "fp32":
      paths, checks, agreement = self._check_agreement(model, loaded, sampled, bounds, rng)
      draws = 0
      if any(sampled):
        draws, distributions = self._check_distributions(model, loaded, paths, sampled, rng)
        checks = [distributions.get(i, c) for i, c in enumerate(checks)]
      return lite_validation.ValidationReport(checks, draws, self.precision, agreement)
    if self._plan.batch_time_steps:
      cases = [lite_validation.sample_inputs(specs.time_step_spec, specs.policy_state_spec,
                                             (), (1,), rng, self._observations)
               for _ in range(lite_validation.DETERMINISTIC_CASES)]
    else:
      batch = self._plan.fixed_batch_size or lite_validation.DETERMINISTIC_CASES
      cases = [lite_validation.sample_inputs(specs.time_step_spec, specs.policy_state_spec,
                                             (batch,), (batch,), rng, self._observations)]
    paths = None
    for time_step, state in cases:
      step = self._tf_call(time_step, state, loaded)
      if paths is None:
        paths = lite_validation.leaf_paths(step)
        worst = [0.0] * len(paths)
      reference = tf.nest.flatten(step)
      lite = tf.nest.flatten(self.call(time_step, state, *model.call_args))
      for i, (path, ref, got) in enumerate(zip(paths, reference, lite)):
        worst[i] = max(worst[i], lite_validation.check_leaf(path, ref, got, sampled[i], bounds))
    floating = [np.issubdtype(np.asarray(r).dtype, np.floating) for r in reference]
    checks = [lite_validation.OutputCheck(
        path, "deterministic", w, FLOAT_ATOL if f else 0.0,
        f"max abs difference (allowed: {FLOAT_RTOL:g} * |tf| + {FLOAT_ATOL:g})" if f else
        "max abs difference (exact)") for path, w, f in zip(paths, worst, floating)]
    draws = 0
    if any(sampled):
      draws, distributions = self._check_distributions(model, loaded, paths, sampled, rng)
      checks = [distributions.get(i, c) for i, c in enumerate(checks)]
    return lite_validation.ValidationReport(checks, draws)

  def _check_agreement(self, model: lite_model.LiteModel, loaded: loading.LoadedPolicy,
                       sampled: list, bounds: dict, rng: np.random.Generator) -> tuple:
    """Reduced precision: `lite_validation.AGREEMENT_ROWS` sampled rows through both
    engines, batched; (paths, checks, agreement) per `lite_validation.check_agreement`."""
    specs = self._specs
    batch = self._plan.fixed_batch_size or lite_validation.AGREEMENT_BATCH
    reference, lite = [], []
    with self._batched_runs(model, loaded, batch) as run:
      for _ in range(-(-lite_validation.AGREEMENT_ROWS // batch)):
        step, got = run(*lite_validation.sample_inputs(
            specs.time_step_spec, specs.policy_state_spec, (batch,), (batch,), rng,
            self._observations))
        reference.append(tf.nest.flatten(step))
        lite.append(got)
    paths = lite_validation.leaf_paths(step)
    checks, agreement = [], {}
    for i, path in enumerate(paths):
      ref = np.concatenate([r[i] for r in reference])
      got = np.concatenate([g[i] for g in lite])
      check, agree = lite_validation.check_agreement(path, ref, got, sampled[i], bounds,
                                                     self.precision)
      checks.append(check)
      if agree is not None:
        agreement[path] = agree
    return paths, checks, agreement

  def _sampled_leaves(self, loaded: loading.LoadedPolicy) -> list:
    """For each PolicyStep leaf (tf.nest order): whether it depends on a random op.

    Every copy runs the same graph, so the first copy's answer serves all.
    """
    if self._sampled is None:
      function = loaded.action
      by_output = graph_audit.sampled_outputs(function.concrete)
      indices = function.output_indices or range(function.num_outputs)
      self._sampled = [by_output[i] for i in indices]
    return self._sampled

  def _batched_plan(self) -> marshaling_plan.MarshalingPlan:
    if self._draw_plan is None:
      self._draw_plan = marshaling_plan.MarshalingPlan(self._plan.function, batch_time_steps=False)
    return self._draw_plan

  def _check_distributions(self, model: lite_model.LiteModel, loaded: loading.LoadedPolicy,
                           paths: list, sampled: list, rng: np.random.Generator) -> tuple:
    """Many draws on a few fixed inputs from each engine, compared element by element.

    Each call draws a batch of copies of one input. An output whose noise TF
    draws once per call and shares across the batch (TD3's Gaussian
    exploration, DDPG's Ornstein-Uhlenbeck noise) gives one value per call
    that way, so it is drawn again over `SHARED_NOISE_CALLS` calls of batch 1
    (see `_check_shared_noise`).
    """
    specs = self._specs
    batch, calls = lite_validation.draw_plan(self._plan.fixed_batch_size)
    inputs = [lite_validation.sample_inputs(specs.time_step_spec, specs.policy_state_spec,
                                            (), (1,), rng, self._observations)
              for _ in range(lite_validation.DISTRIBUTION_INPUTS)]
    outputs = [i for i, s in enumerate(sampled) if s]
    tf_runs, lite_runs = self._draw(model, loaded, inputs, outputs, batch, calls)
    shared = [i for i in outputs if batch >= lite_validation.SHARED_NOISE_MIN_BATCH and all(
        np.all(run == run[:1]) for runs in tf_runs[i] for run in runs)]
    bounds = lite_validation.action_bounds(specs.action_spec)
    independent = [i for i in outputs if i not in shared]
    tests = sum(int(np.prod(tf_runs[i][0][0].shape[1:], dtype=np.int64)) for i in outputs)
    tests *= len(inputs)
    checks = {}
    for i in independent:
      tf_draws = [np.concatenate(runs) for runs in tf_runs[i]]
      lite_draws = [np.concatenate(runs) for runs in lite_runs[i]]
      spec = bounds.get(paths[i])
      lite_validation.check_bounds_rate(paths[i], tf_draws, lite_draws, spec, tests)
      checks[i] = lite_validation.compare_distributions(
          paths[i], tf_draws, lite_draws, spec, tests, FLOAT_RTOL, FLOAT_ATOL)
    if shared:
      checks.update(self._check_shared_noise(model, loaded, inputs[0], shared, paths, bounds,
                                             tests))
    return batch * calls, checks

  def _draw(self, model: lite_model.LiteModel, loaded: loading.LoadedPolicy, inputs: list,
            outputs: list, batch: int, calls: int) -> tuple:
    """{output: [per input: [per call: draws]]} from TF and from LiteRT."""
    tf_runs = {i: [] for i in outputs}
    lite_runs = {i: [] for i in outputs}
    with self._batched_runs(model, loaded, batch) as run:
      for time_step, state in inputs:
        time_steps, states = lite_validation.copies(time_step, state, batch)
        for i in outputs:
          tf_runs[i].append([])
          lite_runs[i].append([])
        for _ in range(calls):
          step, got = run(time_steps, states)
          ref = tf.nest.flatten(step)
          for i in outputs:
            tf_runs[i][-1].append(ref[i])
            lite_runs[i][-1].append(got[i])
    return tf_runs, lite_runs

  @contextlib.contextmanager
  def _batched_runs(self, model: lite_model.LiteModel, loaded: loading.LoadedPolicy,
                    batch: int):
    """`run(time_steps, states)` -> (TF's PolicyStep, LiteRT's flat outputs) on the batched
    plan; afterwards the model drops its runners for `batch` unless that is its own."""
    plan = self._batched_plan()
    name, captures = loaded.action.name, loaded.action.captures

    def run(time_steps, states):
      return (plan.native_call(time_steps, states, name, captures),
              tf.nest.flatten(plan.native_call_buffers(time_steps, states, *model.call_args)))

    try:
      yield run
    finally:
      if batch != (self._plan.fixed_batch_size or 1):
        model.discard(batch)

  def _check_shared_noise(self, model: lite_model.LiteModel, loaded: loading.LoadedPolicy,
                          one_input: tuple, outputs: list, paths: list, bounds: dict,
                          tests: int) -> dict:
    """Outputs with one draw per call: `SHARED_NOISE_CALLS` consecutive calls of batch 1.

    Consecutive draws of a noise process (OU) are correlated, which the
    thresholds for independent draws do not allow for: they use the effective
    number of draws of TF's lag-1 autocorrelation, and the two engines' lag-1
    autocorrelations must agree (`lite_validation.compare_processes`).
    """
    tf_runs, lite_runs = self._draw(model, loaded, [one_input], outputs, 1,
                                    lite_validation.SHARED_NOISE_CALLS)
    checks = {}
    for i in outputs:
      tf_draws = [np.concatenate(tf_runs[i][0])]
      lite_draws = [np.concatenate(lite_runs[i][0])]
      spec = bounds.get(paths[i])
      checks[i] = lite_validation.compare_processes(paths[i], tf_draws[0], lite_draws[0], spec,
                                                    tests, FLOAT_RTOL, FLOAT_ATOL)
    return checks

