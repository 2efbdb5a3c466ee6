"""numpy policies running TensorFlow policy graphs through the native marshaler.

Drop-in replacements for TF-Agents' `PyTFEagerPolicyBase` and
`SavedModelPyTFEagerPolicy` (`tf_agents.policies.py_tf_eager_policy`): same
constructors, methods and specs. `action()` validates the nested numpy input,
hands it to the graph without copying where it can, and returns numpy views.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
import weakref
from typing import Any, Optional, Tuple

from .saved_model import quiet_gym  # noqa: F401  before TF-Agents, which imports gym

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import core
from tf_agents.policies import py_policy

from ..native import marshal
from . import engines
from .engines import lite
from .engines import lite_validation
from .engines import tf_eager
from .runtime import batching
from .runtime import lite_model
from .runtime import plan_layout
from .saved_model import checkpoint_errors
from .saved_model import graph_audit
from .saved_model import loading
from .saved_model import marshaling_plan
from .saved_model import specs as specs_lib
from .saved_model import storage
from .updates import pushed_variables


def _to_numpy(nest):
  return tf.nest.map_structure(np.asarray, nest)


class PyTFEagerPolicyBase(py_policy.PyPolicy):
  """A `PyPolicy` running a TF policy's `action` graph on numpy inputs.

  Same constructor as TF-Agents' `PyTFEagerPolicyBase`. The policy's `action`
  always runs as a compiled graph function, so `use_tf_function` changes
  nothing (it is kept for API compatibility).

  With `batch_time_steps=True`, `action()` takes one unbatched time step and
  returns an unbatched action and info; the policy state stays batched (batch
  of 1), as `get_initial_state()` returns it, and can be fed straight back.
  With `batch_time_steps=False`, the caller's batch passes through.
  """

  def __init__(self,
               policy: Any,
               time_step_spec,
               action_spec,
               policy_state_spec,
               info_spec,
               use_tf_function: bool = False,
               batch_time_steps: bool = True,
               *,
               single_threaded_executor: bool = False):
    """Creates the policy.

    Args:
      policy: a `TFPolicy`, or any object whose `action(time_step,
        policy_state)` can be traced by `tf.function`.
      time_step_spec: `TimeStep` of ArraySpecs (or TensorSpecs).
      action_spec: nest of BoundedArraySpecs of the actions.
      policy_state_spec: nest of ArraySpecs of the policy state.
      info_spec: nest of ArraySpecs of the policy info.
      use_tf_function: accepted for compatibility; `action` always runs as a
        graph function.
      batch_time_steps: whether `action()` takes single unbatched steps (True)
        or batches (False).
      single_threaded_executor: run the action graph's ops one after another
        in the calling thread (TF's SINGLE_THREADED_EXECUTOR) instead of on
        the inter-op thread pool: a few percent less latency for small graphs,
        no op-level parallelism. Graphs it cannot run are refused at load.

    Raises:
      ValueError: the policy's graph cannot take the requested batch mode or
        executor.
    """
    self._policy = policy
    self._use_tf_function = use_tf_function
    self._batch_time_steps = batch_time_steps
    super().__init__(time_step_spec, action_spec, policy_state_spec, info_spec)
    function = self._action_function()
    self._plan = marshaling_plan.MarshalingPlan(
        function, batch_time_steps,
        marshaling_plan.SINGLE_THREADED_EXECUTOR if single_threaded_executor else "")
    self._stochastic = bool(graph_audit.RANDOM_OPS & self._action_op_types())

  # -- Hooks for subclasses ---------------------------------------------------

  def _action_function(self) -> marshaling_plan.ActionFunction:
    """The concrete `action` graph over batched `(time_step, policy_state)`."""
    policy = self._policy
    time_step_spec = specs_lib.with_batch(policy.time_step_spec, None)
    state_spec = specs_lib.with_batch(policy.policy_state_spec, None)
    concrete = tf.function(policy.action).get_concrete_function(time_step_spec, state_spec)
    return marshaling_plan.action_function_from_concrete(concrete)

  def _action_op_types(self) -> set:
    return graph_audit.op_types(self._plan.function.concrete)

  def _initial_state_tensors(self, batch_size: int):
    return self._policy.get_initial_state(batch_size=batch_size)

  # -- PyPolicy ----------------------------------------------------------------

  def _action(self, time_step, policy_state, seed: Optional[Any] = None):
    if seed is not None:
      self._check_seed(seed)
    return self._run(time_step, policy_state, self._plan.function)

  def _run(self, time_step, policy_state, function: marshaling_plan.ActionFunction):
    """One call of `function` through the plan, with TF runtime errors as tf.errors."""
    try:
      return self._plan.call(time_step, policy_state, function)
    except core._NotOkStatusException as e:  # pylint: disable=protected-access
      raise core._status_to_exception(e) from None  # pylint: disable=protected-access

  def _get_initial_state(self, batch_size: Optional[int]):
    if not tf.nest.flatten(self._policy_state_spec):
      return ()
    return _to_numpy(self._initial_state_tensors(self._initial_state_batch(batch_size)))

  def _initial_state_batch(self, batch_size: Optional[int]) -> int:
    return plan_layout.initial_state_batch(batch_size, self._batch_time_steps,
                                           self._plan.fixed_batch_size)

  def _check_seed(self, seed) -> None:
    """A seed is meaningful only for deterministic graphs, where it changes nothing."""
    if self._stochastic:
      raise ValueError(plan_layout.seed_error(seed))

  def variables(self):
    """The policy's variables as numpy arrays."""
    return tf.nest.map_structure(lambda v: v.numpy(), self._policy.variables())


class _PolicyCopy:
  """One loaded copy of the SavedModel (the switch counts the calls running on it).

  `call_args` are what the engine's `call` needs to run this copy (read by
  the switch when the copy is activated).
  """

  def __init__(self, loaded: loading.LoadedPolicy, call_args: tuple):
    self.loaded = loaded
    self.call_args = call_args
    # The train step in the path of the checkpoint this copy holds (None: none).
    self.checkpoint_path_step: Optional[int] = None


BACKENDS = ("tf", "lite", "auto")

log = logging.getLogger("policy_runtime")

# How long an update waits for calls still running on the standby copy.
_IDLE_TIMEOUT_S = 60.0


class SavedModelPyTFEagerPolicy(PyTFEagerPolicyBase):
  """A `PyPolicy` running a SavedModel exported by TF-Agents' `PolicySaver`.

  Same constructor, methods and specs as TF-Agents'
  `SavedModelPyTFEagerPolicy`. Public attributes it does not define are
  forwarded to the loaded SavedModel, so functions added with
  `PolicySaver.register_function` can be called (on the weights active at
  the time of the call).

  `model_path` is any path TensorFlow's file layer reads: local, `ram://`,
  and with their plugins `gs://`, `s3://`, `hdfs://`. Nothing from the
  SavedModel runs before `graph_audit` has checked every op in it.

  `action(time_step, policy_state=(), seed=None)`: `seed` must be None for
  stochastic policies (their random ops were seeded at export; a ValueError
  says so); for deterministic policies any seed is accepted and has no effect.

  `update_from_checkpoint` swaps weights atomically: every `action()` runs
  entirely on the old or entirely on the new weights, from any thread. It
  restores into a second loaded copy of the SavedModel (made on first use,
  from the audited in-memory snapshot taken at load) and switches copies, so
  a failed update leaves the policy untouched.

  Policies whose object graph this TensorFlow cannot decode (e.g. exported
  by TF 2.3-2.12 with a TFP distribution spec it no longer reads) load from
  their flat signatures; everything works except functions added with
  `register_function`, which raise an AttributeError saying why.

  The policy cannot be pickled or copied (it holds loaded TensorFlow state):
  pass the model path and load it where it is used.
  """

  def __init__(self,
               model_path: str,
               time_step_spec=None,
               action_spec=None,
               policy_state_spec=(),
               info_spec=(),
               load_specs_from_pbtxt: bool = False,
               use_tf_function: bool = False,
               batch_time_steps: bool = True,
               *,
               allow_unsafe_ops: bool = False,
               single_threaded_executor: bool = False,
               backend: str = "tf",
               lite_cache_dir: Optional[str] = None,
               precision: str = "fp32",
               num_threads: int = 1,
               validation_observations=None):
    """Loads the policy.

    Args:
      model_path: directory written by `PolicySaver.save` (str or PathLike),
        on any file system TensorFlow reads.
      time_step_spec: `TimeStep` of ArraySpecs; optional with
        `load_specs_from_pbtxt`.
      action_spec: nest of ArraySpecs of the actions.
      policy_state_spec: nest of ArraySpecs of the policy state.
      info_spec: nest of ArraySpecs of the policy info.
      load_specs_from_pbtxt: read the specs from `policy_specs.pbtxt`.
      use_tf_function: accepted for compatibility (see PyTFEagerPolicyBase).
      batch_time_steps: single unbatched steps (True) or batches (False).
      allow_unsafe_ops: load even if the SavedModel uses ops outside the
        allow-list of `graph_audit` (files, network, datasets, Python, ...).
      single_threaded_executor: see `PyTFEagerPolicyBase`.
      backend: the engine that runs `action`: "tf" (TensorFlow eager, exact
        TF-Agents parity), "lite" (the `action` signature converted to LiteRT
        with builtin ops and validated against TF at load; see
        `policies/engines/lite.py`), or "auto" ("lite" if conversion and
        validation succeed, else "tf" with one logged warning).
        `policy.backend` says which one runs.
      lite_cache_dir: where LiteRT conversions are cached (default
        $POLICY_RUNTIME_CACHE_DIR, else ~/.cache/policy_runtime).
      precision: the LiteRT model's precision (backend "lite" or "auto"):
        "fp32" (the default), or "int8" (int8 weights, activations quantized
        per call; validated with its own criterion, `policy.lite_validation`
        reports the agreement; see docs/backends.md). A model that misses it
        is refused (backend="lite"), or runs on fp32 LiteRT (backend="auto").
      num_threads: CPU threads per LiteRT run (default 1: the calling thread).
      validation_observations: real observations to validate the LiteRT model
        on (backend "lite" or "auto"), at load and at every update: a nest like
        the observation spec whose leaves share a leading batch dimension N
        (e.g. frames from a replay buffer; a copy of at most 4,096 of them is
        kept). Default: observations sampled from the spec, which for images
        means uniform noise. The other time step fields and the policy state
        are still sampled. Checked against the spec on every backend.

    Raises:
      FileNotFoundError: `model_path`, its saved_model.pb, or (with
        `load_specs_from_pbtxt`) its policy_specs.pbtxt is missing.
      ValueError: no specs, an unreadable SavedModel, a batch mode the saved
        signature cannot take, or (backend="lite") a conversion or validation
        failure, naming the ops or outputs at fault.
      graph_audit.UnsafeGraphError: (a ValueError) unsafe ops without opt-in;
        nothing from the SavedModel has run.
    """
    if backend not in BACKENDS:
      raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKENDS))}, "
                       f"got {backend!r}")
    lite_model.check_precision(precision)   # both before anything loads
    lite_model.check_num_threads(num_threads)
    model_path = os.fspath(model_path)
    self._source = loading.SavedModelSource.read(model_path, allow_unsafe_ops)
    policy_specs = specs_lib.resolve(model_path, time_step_spec, action_spec,
                                     policy_state_spec, info_spec, load_specs_from_pbtxt)
    if validation_observations is not None:   # checked on every backend, before loading
      validation_observations = lite_validation.ObservationRows(
          validation_observations, policy_specs.time_step_spec.observation,
          np.random.default_rng(0))
    self._model_path = model_path
    self._policy_specs = policy_specs
    loaded = self._source.load(policy_specs)
    active = _PolicyCopy(loaded, tf_eager.call_args(loaded))
    self._switch = marshal.CopySwitch(active)
    # Every loaded copy (one, then two). The standby is whichever is not active,
    # derived, never stored: no exception anywhere in an update can make the two
    # names one copy.
    self._copies: Tuple[_PolicyCopy, ...] = (active,)
    # The standby copy may lack a checkpoint's values that the active one has
    # (set before checkpoint swaps; pushes then bring it level first).
    self._standby_behind = False
    # The push generation at a checkpoint swap until variables() hold the swapped-in
    # values (None: they do); a later push supersedes it. See `_catch_up_pushed`.
    self._pushed_behind: Optional[int] = None
    self._update_lock = threading.RLock()  # one update at a time
    self._pushed: Optional[list] = None    # variables(), made on first use
    self._tracker: Optional[pushed_variables.PushTracker] = None
    self._followed_generation = 0          # the tracker's generation action() runs on
    self._push_failure = None              # (generation, error) of a push that failed
    super().__init__(None, policy_specs.time_step_spec, policy_specs.action_spec,
                     policy_specs.policy_state_spec, policy_specs.info_spec,
                     use_tf_function, batch_time_steps,
                     single_threaded_executor=single_threaded_executor)
    self._engine = tf_eager.TFEagerEngine(self._plan)
    if policy_specs.collect_data_spec is not None:
      self._collect_data_spec = policy_specs.collect_data_spec
    try:
      self._warm_up(active)
    except tf.errors.OpError as e:
      if not single_threaded_executor:
        # A forged graph whose functions disagree with their own signatures.
        raise ValueError(f"{model_path}: its action graph does not run on inputs of its "
                         f"specs: {storage.first_line(e)}") from None
      raise ValueError(f"{model_path}: its action graph cannot run with "
                       f"single_threaded_executor=True: {e.message.splitlines()[0]}") from None
    self._requested_backend = backend
    self._backend_reason: Optional[str] = "backend='tf' was requested"
    if backend != "tf":
      self._use_lite(active, backend, lite_cache_dir, precision, num_threads,
                     validation_observations)

  def _use_lite(self, active: _PolicyCopy, backend: str, cache_dir: Optional[str],
                precision: str, num_threads: int, observations) -> None:
    engine = lite.LiteEngine(self._plan, self._tf_call, self._policy_specs, self._source,
                             cache_dir, precision, num_threads, observations)
    try:
      active.call_args = engine.prepare(active.loaded)
    except ValueError as e:
      if backend == "lite":
        raise
      if precision != "fp32":
        log.warning("backend='auto': %s LiteRT refused, trying fp32: %s", precision, e)
        self._use_lite(active, backend, cache_dir, "fp32", num_threads, observations)
        return
      self._backend_reason = storage.first_line(e)
      log.warning("backend='auto': running on TF, not LiteRT: %s", e)
      return
    self._switch.activate(active)   # re-reads call_args
    self._engine = engine
    self._backend_reason = None

  def _prepare_update(self, standby: _PolicyCopy, pushed: Optional[list] = None) -> None:
    """Readies the restored standby copy (or, with `pushed`, the standby copy whose
    model variables were just set to those values) for the engine in use.

    With backend="auto", weights that LiteRT cannot serve (conversion or
    validation fails) run on TF from this update on, with one warning: the
    policy never stays on old weights because of LiteRT.
    """
    try:
      if pushed is None:
        standby.call_args = self._engine.prepare(standby.loaded)
      else:
        standby.call_args = self._engine.follow(standby.loaded, pushed)
    except ValueError as e:
      if self._engine.name != "lite" or self._requested_backend != "auto":
        raise
      log.warning("backend='auto': these weights run on TF, not LiteRT: %s", e)
      self._backend_reason = storage.first_line(e)
      standby.call_args = tf_eager.call_args(standby.loaded)
      self._engine = tf_eager.TFEagerEngine(self._plan, replaces_buffer_engine=True)

  def _batching_parts(self) -> batching.BatchingParts:
    """For `batching.DynamicBatcher`: a plan for single callers' rows, on this policy's copies."""
    function = self._plan.function
    rows = marshaling_plan.build_native_plan(
        function.time_step_spec, function.policy_state_spec, function.output_structure,
        function.num_outputs, batch_time_steps=True, fixed_batch=None,
        input_slots=function.input_slots, output_indices=function.output_indices)
    # A copy carries its own engine's call_args (backend="auto" may move it to TF).
    return batching.BatchingParts(
        rows=rows, switch=self._switch,
        call_rows=engines.by_call_args(rows.call_rows, rows.call_rows_buffers),
        padded=self._engine.rows_batch, fixed_batch_size=self._plan.fixed_batch_size,
        check_seed=self._check_seed, batch_error=_batch_error,
        lone=engines.by_call_args(rows.call, rows.call_buffers))

  def _tf_call(self, time_step, policy_state, loaded: loading.LoadedPolicy):
    return self._run(time_step, policy_state, loaded.action)

  def _action_function(self) -> marshaling_plan.ActionFunction:
    return self._switch.active.loaded.action

  def _action_op_types(self) -> set:
    ops = self._source.audit.ops_by_function
    return ops.get("action") or ops.get("signature 'action'") or super()._action_op_types()

  def _initial_state_tensors(self, batch_size: int):
    return self._switch.with_active(lambda copy: copy.loaded.get_initial_state(batch_size))

  def _action(self, time_step, policy_state, seed: Optional[Any] = None):
    if seed is not None:
      self._check_seed(seed)
    engine = self._engine
    try:
      return self._switch.call(engine.call, time_step, policy_state)
    except core._NotOkStatusException as e:  # pylint: disable=protected-access
      raise core._status_to_exception(e) from None  # pylint: disable=protected-access
    except TypeError:
      if engine is self._engine:
        raise
    # backend="auto" moved to TF while this call started (in the switch's follow of a push,
    # or an update in another thread): the copy it found is prepared for the new engine.
    return self._action(time_step, policy_state)

  def _warm_up(self, copy: _PolicyCopy) -> None:
    """Runs a copy's graph once so the first real call is not slower than the rest."""
    function = copy.loaded.action
    specs = (function.time_step_spec, function.policy_state_spec)
    if any(None in s.shape.as_list()[1:] for s in tf.nest.flatten(specs)):
      return  # unknown inner dimensions: nothing sensible to feed
    batch = self._plan.fixed_batch_size or 1

    def unbatched(spec_nest):
      return tf.nest.map_structure(lambda s: tf.TensorSpec(s.shape[1:], s.dtype), spec_nest)

    time_step = specs_lib.zeros(unbatched(function.time_step_spec),
                                () if self._batch_time_steps else (batch,))
    state = specs_lib.zeros(unbatched(function.policy_state_spec), (batch,))
    self._run(time_step, state, function)

  @property
  def backend(self) -> str:
    """The engine that runs `action()`: "tf" or "lite"."""
    return self._engine.name

  @property
  def backend_reason(self) -> Optional[str]:
    """Why `backend` is not "lite" (None when it is): the request, or the first line of the
    conversion or validation failure that made backend="auto" stay on (or go back to) TF."""
    return self._backend_reason

  @property
  def lite_validation(self):
    """The last LiteRT validation report (`lite_validation.ValidationReport`), None on TF."""
    return self._engine.last_report

  @property
  def precision(self) -> Optional[str]:
    """The LiteRT model's precision ("fp32" or "int8") on backend "lite"; None on TF."""
    return getattr(self._engine, "precision", None)

  @property
  def num_threads(self) -> Optional[int]:
    """CPU threads per LiteRT run on backend "lite"; None on TF."""
    return getattr(self._engine, "num_threads", None)

  @property
  def lite_runtime(self) -> Optional[str]:
    """How LiteRT runs the active copy on backend "lite": "native" (LiteRT's C API, the
    usual way) or "interpreter (why not native)"; None on TF."""
    model = lite_model.model_of(self._switch.active.call_args)
    return model.runtime if model is not None else None

  @property
  def lite_weights(self) -> Optional[str]:
    """How new weights (a checkpoint, a push into `variables()`) reach LiteRT: "written
    into the model" (no conversion), or "converted (why they cannot be written)";
    None on TF."""
    if self._engine.name != "lite":
      return None
    reason = self._engine.weights_reason
    return "written into the model" if reason is None else f"converted ({reason})"

  @property
  def load_mode(self) -> str:
    """"object graph", or "flat signatures only (why)" for undecodable exports."""
    return self._switch.active.loaded.mode

  @property
  def fingerprint(self) -> str:
    """SHA-256 of the saved_model.pb that was audited and loaded."""
    return self._source.fingerprint

  def op_families(self) -> dict:
    """{family: op types} over every graph and function of the SavedModel (see `graph_audit`)."""
    return graph_audit.families(self._source.audit.all_ops())

  # -- TF-Agents SavedModelPyTFEagerPolicy API --------------------------------

  def get_train_step(self):
    """The training step of the weights `action()` uses: a numpy scalar (`np.int64` for
    PolicySaver exports), as TF-Agents returns it."""
    return np.asarray(self._switch.with_active(lambda copy: copy.loaded.get_train_step()))[()]

  def get_train_step_from_last_restored_checkpoint_path(self) -> Optional[int]:
    """The train step parsed from the last checkpoint path, or None."""
    return self._switch.active.checkpoint_path_step

  def get_metadata(self):
    """The metadata saved with the policy: {name: numpy array}.

    The arrays also have TF's `.numpy()` (a scalar for 0-d values, bytes for
    strings), so code written against TF-Agents' class, which returns
    tensors, works unchanged.
    """
    metadata = self._switch.with_active(lambda copy: copy.loaded.get_metadata())
    return {k: np.asarray(v).view(MetadataValue) for k, v in metadata.items()}

  def variables(self):
    """The model variables: one list of `tf.Variable`s for the policy's whole life.

    Assigning to them (eagerly, or inside a `tf.function` as TF-Agents'
    `ReverbVariableContainer.update` does) changes what the next `action()`
    computes, on every backend; all the writes of one `tf.function` call are
    one push, and no call sees part of a push. `update_from_checkpoint` sets
    them to the checkpoint's values. See `policies/updates/pushed_variables.py`.
    """
    with self._update_lock:
      if self._pushed is None:
        self._tracker = pushed_variables.PushTracker(self._switch.mark_stale)
        self._pushed = pushed_variables.pushed_copies(self._switch.active.loaded.variables(),
                                                      self._tracker)
        self._followed_generation = self._tracker.generation
        self._switch.set_follow(_follower(self))
      self._catch_up_pushed()
      return self._pushed

  def _follow_pushes(self) -> None:
    """Brings the weights pushed into `variables()` to the calls that start from now on.

    Runs (from `CopySwitch`) before a call once a push has completed. The
    pushed values are read only while no push is open, and read again if one
    began meanwhile; they are set on the standby copy, readied for the engine
    (LiteRT: written into the model's weight buffers) and swapped in, as an
    update from a checkpoint is.

    Raises:
      ValueError: the engine cannot run the pushed weights (backend="lite";
        "auto" moves to TF instead). Every call raises it until other
        weights are pushed or a checkpoint is restored: the policy never
        acts on weights older than the last push without saying so.
    """
    with self._update_lock:
      self._catch_up_pushed()
      self._switch.clear_stale()
      tracker = self._tracker
      for _ in range(3):
        generation = tracker.quiet_generation()
        if generation is None or generation == self._followed_generation:
          return   # a push is open (its end marks the switch again), or nothing new
        if self._push_failure is not None and self._push_failure[0] == generation:
          self._switch.mark_stale()
          raise self._push_failure[1]
        values = [v.read_value() for v in self._pushed]
        if tracker.quiet_generation() == generation:
          break
      else:
        self._switch.mark_stale()
        return
      try:
        self._swap_in_pushed(values)
      except ValueError as e:
        self._push_failure = (generation, e)
        self._switch.mark_stale()
        raise
      self._followed_generation = generation
      self._push_failure = None

  def _swap_in_pushed(self, values: list) -> None:
    fresh = self._standby is None
    standby = self._standby or self._load_copy()
    if not self._switch.wait_idle(standby, _IDLE_TIMEOUT_S):
      raise ValueError(f"cannot follow the pushed weights: {self._switch.in_flight(standby)} "
                       f"calls still running on the standby copy after "
                       f"{_IDLE_TIMEOUT_S:.0f} s")
    try:
      if self._standby_behind:
        standby.loaded.copy_variables_from(self._switch.active.loaded)
        self._standby_behind = False
      standby.loaded.assign_model_variables(values)
      if fresh:
        self._warm_up(standby)
      self._prepare_update(standby, pushed=values)
    except Exception as e:  # pylint: disable=broad-except
      self._standby_behind = True   # partly written: bring it level next time
      raise ValueError(f"cannot follow the weights pushed into variables(): "
                       f"{storage.first_line(e)}") from None
    standby.checkpoint_path_step = self._switch.active.checkpoint_path_step
    self._switch.activate(standby)

  def update_from_checkpoint(self, checkpoint_path: str) -> None:
    """Swaps in the weights at `<checkpoint_path>/variables/variables`, atomically.

    `checkpoint_path` is a directory passed to `PolicySaver.save` or
    `PolicySaver.save_checkpoint`, on any file system TensorFlow reads. The
    train step is taken from a trailing `_NNNN` of the path (see
    `get_train_step_from_last_restored_checkpoint_path`).

    Updates and pushes into `variables()` apply in the order they complete
    (the latest wins); after an update, `variables()` holds its values.

    Raises:
      checkpoint_errors.CheckpointNotFoundError: the checkpoint (or its index
        file) is missing: a `FileNotFoundError` and a `tf.errors.NotFoundError`.
      checkpoint_errors.CheckpointRestoreError: the checkpoint is truncated,
        corrupt, still being written or does not match the policy, or calls
        on the standby copy did not finish in time: a `ValueError` and an
        `IndexError` (what TF-Agents' retry loops catch). The policy then
        keeps acting on its current weights.
    """
    checkpoint_path = os.fspath(checkpoint_path)
    prefix = storage.join(checkpoint_path, loading.VARIABLES_PREFIX)
    if not storage.is_dir(checkpoint_path):
      raise checkpoint_errors.CheckpointNotFoundError(
          f"checkpoint directory not found: {checkpoint_path}")
    if not storage.exists(prefix + ".index"):
      raise checkpoint_errors.CheckpointNotFoundError(
          f"checkpoint index file not found: {prefix}.index")
    # Restored from an in-memory copy of the files the index references, each
    # read as a size-limited regular file (no FIFO, device or huge file waits
    # or blows up the restore).
    scratch = f"ram://policy_runtime/checkpoint-{uuid.uuid4().hex}"
    try:
      try:
        loading.snapshot_checkpoint(prefix, storage.join(scratch, loading.VARIABLES_PREFIX))
      except (ValueError, FileNotFoundError) as e:
        raise checkpoint_errors.CheckpointRestoreError(
            f"cannot restore checkpoint {checkpoint_path}: {e}") from None
      self._restore_checkpoint(checkpoint_path,
                               storage.join(scratch, loading.VARIABLES_PREFIX))
    finally:
      storage.remove_tree(scratch)

  def _restore_checkpoint(self, checkpoint_path: str, prefix: str) -> None:
    with self._update_lock:
      self._catch_up_pushed()
      if self._pushed is not None and self._switch.stale:
        try:
          self._follow_pushes()   # an earlier push first: the latest one wins
        except ValueError:
          pass                    # superseded by this checkpoint
      standby = self._standby or self._load_copy()
      # Calls that leased this copy before the last swap.
      if not self._switch.wait_idle(standby, _IDLE_TIMEOUT_S):
        raise checkpoint_errors.CheckpointRestoreError(
            f"cannot restore checkpoint {checkpoint_path}: "
            f"{self._switch.in_flight(standby)} calls still running on the "
            f"standby copy after {_IDLE_TIMEOUT_S:.0f} s")
      try:
        self._standby_behind = True   # no longer level with the active copy
        standby.loaded.restore(prefix)
        self._warm_up(standby)
        self._prepare_update(standby)
      except Exception as e:  # pylint: disable=broad-except
        # Only the standby copy was touched; the next update restores it fully.
        raise checkpoint_errors.CheckpointRestoreError(
            f"cannot restore checkpoint {checkpoint_path}: "
            f"{storage.first_line(e)}") from None
      standby.checkpoint_path_step = _train_step_from_path(checkpoint_path)
      # Both flags before the swap: an exception anywhere from here on leaves them
      # conservative (at worst one extra copy of values), never wrong.
      self._standby_behind = True
      self._pushed_behind = self._tracker.quiet_generation() if self._pushed is not None else None
      self._switch.activate(standby)
      self._set_pushed_to_active()

  @property
  def _standby(self) -> Optional[_PolicyCopy]:
    active = self._switch.active
    return next((c for c in self._copies if c is not active), None)

  def _set_pushed_to_active(self) -> None:
    """Makes `variables()` hold the active copy's values, as no push (after an update)."""
    if self._pushed is None:
      return
    before = self._tracker.quiet_generation()
    for variable, value in zip(self._pushed, self._switch.active.loaded.variables()):
      variable._silent_assign(value.read_value())  # pylint: disable=protected-access
    if before is not None and self._tracker.quiet_generation() == before:
      self._followed_generation = before
      self._push_failure = None
      self._switch.clear_stale()
    self._pushed_behind = None

  def _catch_up_pushed(self) -> None:
    """Finishes an earlier checkpoint swap's `_set_pushed_to_active` that an exception
    cut short, unless a push came since (that push is then the latest)."""
    if self._pushed_behind is not None:
      if self._tracker.quiet_generation() == self._pushed_behind:
        self._set_pushed_to_active()
      self._pushed_behind = None

  def _load_copy(self) -> _PolicyCopy:
    """The standby copy, from the snapshot of the audited SavedModel."""
    loaded = self._source.load(self._policy_specs)
    if not self._plan.accepts(loaded.action):
      raise ValueError(f"{self._model_path}: a second copy does not match the first")
    copy = _PolicyCopy(loaded, tf_eager.call_args(loaded))
    self._copies = (self._switch.active, copy)
    self._source.release()  # both copies exist; the snapshot is not needed again
    return copy

  def __getattr__(self, name: str):
    """Forwards public attributes (e.g. registered functions) to the SavedModel.

    A forwarded function runs on the copy that is active when it is called,
    which no update restores into while it runs.
    """
    switch = self.__dict__.get("_switch")
    if switch is None or name.startswith("_"):
      raise AttributeError(name)
    value = switch.active.loaded.attribute(name)
    if not callable(value):
      return value

    def forwarded(*args, **kwargs):
      return switch.with_active(lambda copy: copy.loaded.attribute(name)(*args, **kwargs))

    forwarded.__name__ = name
    forwarded.__doc__ = getattr(value, "__doc__", None)
    return forwarded

  def _not_copyable(self, *unused):
    raise TypeError(
        f"a SavedModelPyTFEagerPolicy cannot be pickled or copied (it holds loaded TensorFlow "
        f"state): pass the model path ({self._model_path!r}) to where the policy is needed, "
        f"e.g. a Ray worker, and load it there with SavedModelPyTFEagerPolicy(path, ...)")

  __reduce__ = __reduce_ex__ = __copy__ = __deepcopy__ = _not_copyable


class MetadataValue(np.ndarray):
  """A metadata value: a numpy array that also has TF's `.numpy()`."""

  def numpy(self):
    """As `tf.Tensor.numpy()`: a numpy scalar (bytes for strings) if 0-d, else an array."""
    array = self.view(np.ndarray)
    return array[()] if array.ndim == 0 else array.copy()

  def __repr__(self) -> str:
    return repr(self.view(np.ndarray))


def _follower(policy: SavedModelPyTFEagerPolicy):
  """`policy._follow_pushes` without a reference to the policy (the switch holds it)."""
  ref = weakref.ref(policy)

  def follow():
    policy = ref()
    if policy is not None:
      policy._follow_pushes()  # pylint: disable=protected-access

  return follow


def _batch_error(error: BaseException) -> BaseException:
  if isinstance(error, core._NotOkStatusException):  # pylint: disable=protected-access
    error = core._status_to_exception(error)  # pylint: disable=protected-access
  return batching.runtime_error(error)


def _train_step_from_path(path: str) -> Optional[int]:
  match = re.search(r"_(\d+)$", path.rstrip("/" + os.sep))
  return int(match.group(1)) if match else None
