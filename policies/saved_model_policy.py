"""numpy policies running TensorFlow policy graphs through the native marshaler.

Drop-in replacements for TF-Agents' `PyTFEagerPolicyBase` and
`SavedModelPyTFEagerPolicy` (`tf_agents.policies.py_tf_eager_policy`): same
constructors, methods and specs. `action()` validates the nested numpy input,
hands it to the graph without copying where it can, and returns numpy views.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from typing import Any, Optional

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import core
from tf_agents.policies import py_policy

from policies import graph_audit
from policies import loading
from policies import marshaling_plan
from policies import specs as specs_lib


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
    self._stochastic = any(graph_audit.RANDOM_OPS.search(op) for op in self._action_op_types())

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
    fixed = self._plan.fixed_batch_size
    if batch_size is None:
      if self._batch_time_steps:
        return 1
      if fixed is not None:
        return fixed
      raise ValueError(
          "get_initial_state: pass batch_size (the number of environments) when the "
          "policy was created with batch_time_steps=False")
    if fixed is not None and batch_size != fixed:
      raise ValueError(
          f"get_initial_state: expected batch_size {fixed} (fixed at export), got {batch_size}")
    return batch_size

  def _check_seed(self, seed) -> None:
    """A seed is meaningful only for deterministic graphs, where it changes nothing."""
    if self._stochastic:
      raise ValueError(
          f"seed={seed!r}: this policy samples with random ops whose seeds were fixed when "
          "its graph was built, so a per-call seed cannot be applied. Seed the policy "
          "at export instead (PolicySaver(policy, seed=...)) and call action() without seed")

  def variables(self):
    """The policy's variables as numpy arrays."""
    return tf.nest.map_structure(lambda v: v.numpy(), self._policy.variables())


class _PolicyCopy:
  """One loaded copy of the SavedModel and the number of calls running on it."""

  def __init__(self, loaded: loading.LoadedPolicy):
    self.loaded = loaded
    self.in_flight = 0


class SavedModelPyTFEagerPolicy(PyTFEagerPolicyBase):
  """A `PyPolicy` running a SavedModel exported by TF-Agents' `PolicySaver`.

  Same constructor, methods and specs as TF-Agents'
  `SavedModelPyTFEagerPolicy`. Attributes it does not define are forwarded to
  the loaded SavedModel object, so functions added with
  `PolicySaver.register_function` can be called.

  `action(time_step, policy_state=(), seed=None)`: `seed` must be None for
  stochastic policies (their random ops were seeded at export; a ValueError
  says so); for deterministic policies any seed is accepted and has no effect.

  `update_from_checkpoint` swaps weights atomically: every `action()` runs
  entirely on the old or entirely on the new weights, from any thread. It
  restores into a second loaded copy of the SavedModel (made on first use)
  and switches copies, so a failed update leaves the policy untouched.

  Policies whose object graph this TensorFlow cannot decode (e.g. exported
  by TF 2.3-2.12 with a TFP distribution spec it no longer reads) load from
  their flat signatures; everything works except functions added with
  `register_function`, which raise an AttributeError saying why, and
  `variables()`, which then returns snapshots of the checkpoint's values.
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
               single_threaded_executor: bool = False):
    """Loads the policy.

    Args:
      model_path: directory written by `PolicySaver.save`.
      time_step_spec: `TimeStep` of ArraySpecs; optional with
        `load_specs_from_pbtxt`.
      action_spec: nest of ArraySpecs of the actions.
      policy_state_spec: nest of ArraySpecs of the policy state.
      info_spec: nest of ArraySpecs of the policy info.
      load_specs_from_pbtxt: read the specs from `policy_specs.pbtxt`.
      use_tf_function: accepted for compatibility (see PyTFEagerPolicyBase).
      batch_time_steps: single unbatched steps (True) or batches (False).
      allow_unsafe_ops: load even if the policy's functions use ops that touch
        the file system, the network or run Python (see `graph_audit`).
      single_threaded_executor: see `PyTFEagerPolicyBase`.

    Raises:
      FileNotFoundError: `model_path`, its saved_model.pb, or (with
        `load_specs_from_pbtxt`) its policy_specs.pbtxt is missing.
      ValueError: no specs, an unreadable SavedModel, or a batch mode the
        saved signature cannot take.
      graph_audit.UnsafeGraphError: (a ValueError) unsafe ops without opt-in.
    """
    model_path = os.fspath(model_path)
    loading.check_model_dir(model_path)
    policy_specs = specs_lib.resolve(model_path, time_step_spec, action_spec,
                                     policy_state_spec, info_spec, load_specs_from_pbtxt)
    self._model_path = model_path
    self._policy_specs = policy_specs
    self._active = _PolicyCopy(loading.load(model_path, policy_specs))
    self._standby: Optional[_PolicyCopy] = None
    self._copy_lock = threading.Lock()     # guards _active and in_flight counts
    self._update_lock = threading.Lock()   # one update at a time
    self._allow_unsafe_ops = allow_unsafe_ops
    self._ops_by_function = graph_audit.audit(self._active.loaded.functions(), model_path,
                                              allow_unsafe_ops)
    super().__init__(None, policy_specs.time_step_spec, policy_specs.action_spec,
                     policy_specs.policy_state_spec, policy_specs.info_spec,
                     use_tf_function, batch_time_steps,
                     single_threaded_executor=single_threaded_executor)
    if policy_specs.collect_data_spec is not None:
      self._collect_data_spec = policy_specs.collect_data_spec
    self._train_step_from_last_restored_checkpoint_path = None
    try:
      self._warm_up(self._active)
    except tf.errors.OpError as e:
      if not single_threaded_executor:
        raise
      raise ValueError(f"{model_path}: its action graph cannot run with "
                       f"single_threaded_executor=True: {e.message.splitlines()[0]}") from None

  def _action_function(self) -> marshaling_plan.ActionFunction:
    return self._active.loaded.action

  def _action_op_types(self) -> set:
    return self._ops_by_function.get("action") or super()._action_op_types()

  def _initial_state_tensors(self, batch_size: int):
    with self._using_active() as copy:
      return copy.loaded.get_initial_state(batch_size)

  @contextlib.contextmanager
  def _using_active(self):
    """The active copy, which no update restores into while it is in use."""
    with self._copy_lock:
      copy = self._active
      copy.in_flight += 1
    try:
      yield copy
    finally:
      with self._copy_lock:
        copy.in_flight -= 1

  def _action(self, time_step, policy_state, seed: Optional[Any] = None):
    if seed is not None:
      self._check_seed(seed)
    # `_using_active`, inlined: a generator context manager costs ~1 us per call.
    with self._copy_lock:
      copy = self._active
      copy.in_flight += 1
    try:
      return self._run(time_step, policy_state, copy.loaded.action)
    finally:
      with self._copy_lock:
        copy.in_flight -= 1

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
  def load_mode(self) -> str:
    """"object graph", or "flat signatures only (why)" for undecodable exports."""
    return self._active.loaded.mode

  def op_families(self) -> dict:
    """{family: op types} over every function of the policy (see `graph_audit`)."""
    return graph_audit.families(set().union(*self._ops_by_function.values()))

  # -- TF-Agents SavedModelPyTFEagerPolicy API --------------------------------

  def get_train_step(self):
    """The training step stored in the SavedModel (numpy scalar)."""
    with self._using_active() as copy:
      return copy.loaded.get_train_step()

  def get_train_step_from_last_restored_checkpoint_path(self) -> Optional[int]:
    """The train step parsed from the last checkpoint path, or None."""
    return self._train_step_from_last_restored_checkpoint_path

  def get_metadata(self):
    """The metadata saved with the policy, as a dict of numpy values."""
    with self._using_active() as copy:
      return copy.loaded.get_metadata()

  def variables(self):
    """The model variables (`tf.Variable`s) of the weights `action()` uses now."""
    return self._active.loaded.variables()

  def update_from_checkpoint(self, checkpoint_path: str) -> None:
    """Swaps in the weights at `<checkpoint_path>/variables/variables`, atomically.

    `checkpoint_path` is a directory passed to `PolicySaver.save` or
    `PolicySaver.save_checkpoint`. The train step is taken from a trailing
    `_NNNN` of the path (see `get_train_step_from_last_restored_checkpoint_path`).

    Raises:
      FileNotFoundError: the checkpoint (or its index file) is missing.
      ValueError: the checkpoint is truncated, corrupt or does not match the
        policy. The policy then keeps acting on its current weights.
    """
    checkpoint_path = os.fspath(checkpoint_path)
    prefix = os.path.join(checkpoint_path, loading.VARIABLES_PREFIX)
    if not os.path.isdir(checkpoint_path):
      raise FileNotFoundError(f"checkpoint directory not found: {checkpoint_path}")
    if not os.path.isfile(prefix + ".index"):
      raise FileNotFoundError(f"checkpoint index file not found: {prefix}.index")
    with self._update_lock:
      standby = self._standby or self._load_copy()
      self._standby = standby
      while standby.in_flight:  # calls that started before the last swap
        time.sleep(0.0005)
      try:
        standby.loaded.restore(prefix)
        self._warm_up(standby)
      except Exception as e:  # pylint: disable=broad-except
        # Only the standby copy was touched; the next update restores it fully.
        raise ValueError(f"cannot restore checkpoint {checkpoint_path}: "
                         f"{loading.first_line(e)}") from None
      with self._copy_lock:
        self._standby, self._active = self._active, standby
      self._train_step_from_last_restored_checkpoint_path = _train_step_from_path(checkpoint_path)

  def _load_copy(self) -> _PolicyCopy:
    loaded = loading.load(self._model_path, self._policy_specs)
    # The files are read again: audit them again.
    graph_audit.audit(loaded.functions(), self._model_path, self._allow_unsafe_ops)
    if not self._plan.accepts(loaded.action):
      raise ValueError(f"{self._model_path} changed on disk since it was loaded")
    return _PolicyCopy(loaded)

  def __getattr__(self, name: str):
    """Forwards other attributes (e.g. registered functions) to the SavedModel."""
    active = self.__dict__.get("_active")
    if active is None or name.startswith("__"):
      raise AttributeError(name)
    return active.loaded.attribute(name)


def _train_step_from_path(path: str) -> Optional[int]:
  match = re.search(r"_(\d+)$", path.rstrip(os.sep))
  return int(match.group(1)) if match else None
