"""Compiled policies: act on a policy compiled by `policies.compile`, without TensorFlow.

    from policy_runtime.policies import compiled
    policy = compiled.CompiledPolicy("/models/compiled/step_1000")
    step = policy.action(time_step, policy.get_initial_state())

This module and what it imports (numpy, ai-edge-litert, the native module)
never import TensorFlow or TF-Agents. A `CompiledPolicy` has the surface of
`SavedModelPyTFEagerPolicy`: `action`, `get_initial_state`, the four specs,
`get_train_step`, `get_metadata`, and `update` for an atomic swap to another
compiled directory. Inputs go through the same native plan, so bad input gets
the same errors; results are arrays the caller owns. Paths are local (there is
no TensorFlow file layer here). Outputs are within the validated tolerance of
TensorFlow's, not bit-equal across CPUs (LiteRT picks kernels per ISA).
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Any, Optional

import numpy as np

from ...native import marshal
from . import array_specs
from . import batching
from . import compiled_checks
from . import compiled_format
from . import lite_checks
from . import lite_preflight
from . import lite_model
from . import plan_layout

PolicyStep = collections.namedtuple("PolicyStep", ["action", "state", "info"])
PolicyStep.__new__.__defaults__ = ((), ())


# Flatbuffers (by SHA-256, checked against the manifest) that passed
# `check_model_io` against these expectations, the builtin-ops check and the
# load in a child (`lite_preflight`): a reload or an update back to them skips
# those (the walk of every tensor, ~1 ms for a small MLP; the child, ~0.24 s).
_CHECKED: collections.OrderedDict = collections.OrderedDict()
_MAX_CHECKED = 256


class _Model:
  """One compiled directory, loaded: its files, LiteRT model and call arguments.

  The flatbuffer is checked against `layout` (the policy's specs) before
  LiteRT reads it.
  """

  def __init__(self, files: compiled_format.CompiledFiles, layout: dict, num_threads: int = 1):
    signature = files.policy["signature"]
    path = os.path.join(files.directory, compiled_format.FLATBUFFER)
    inputs, outputs = _expected_io(layout, signature)
    key = (files.flatbuffer_sha256, repr((inputs, outputs)))
    first_batch = layout["fixed_batch_size"] or 1
    if not files.flatbuffer_sha256 or key not in _CHECKED:
      try:
        lite_checks.check_model_io(files.flatbuffer, inputs, outputs,
                                   compiled_checks.MAX_TENSOR_BYTES)
      except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
      blocked = lite_model.non_builtin_ops(files.flatbuffer)
      if blocked:
        raise ValueError(f"{path}: uses operators outside LiteRT's builtins, which compiled "
                         f"policies do not run: {', '.join(sorted(set(blocked)))}")
      lite_preflight.check(files.flatbuffer, signature["input_names"],
                           signature["output_names"], first_batch, num_threads, path)
      _CHECKED[key] = True
      while len(_CHECKED) > _MAX_CHECKED:
        _CHECKED.popitem(last=False)
    try:
      self.model = lite_model.LiteModel(files.flatbuffer, signature["input_names"],
                                        signature["output_names"], first_batch,
                                        num_threads=num_threads)
    except Exception as e:  # pylint: disable=broad-except  (a malformed model: never a crash)
      lines = str(e).strip().splitlines()
      raise ValueError(f"{path}: the LiteRT model does not load: "
                       f"{lines[0] if lines else type(e).__name__}") from None
    self.files = files
    self.call_args = self.model.call_args
    # What the getters hand out (copies of), decoded once.
    policy, values = files.policy, files.values
    self.initial_state = [values[f"initial_state_{i}"]
                          for i in range(int(policy["initial_state"]["leaves"]))]
    self.initial_state_batch = int(policy["initial_state"]["batch"])
    strings = set(policy.get("metadata_strings", ()))
    self.metadata = {name: values[f"metadata_{i}"].astype(object) if name in strings else
                     values[f"metadata_{i}"] for i, name in enumerate(policy["metadata"])}
    self.train_step = values["train_step"]


class _Copy:
  """One of the policy's two slots in its `CopySwitch`: the model acting in it.

  Updates fill the slot that is not active and activate it, so the switch
  holds two models at most (the one acting, and the one before it, which
  calls in flight may still run on) whatever the number of updates.
  """

  __slots__ = ("model",)

  def __init__(self, model: Optional[_Model]):
    self.model = model

  @property
  def call_args(self) -> tuple:
    return self.model.call_args


# How long an update waits for calls still running on the model it replaces
# (the one before the active one).
UPDATE_IDLE_TIMEOUT_S = 60.0


def _leaf_io(leaves: list, names: list, index_of, kind: str, path: str) -> list:
  """(name, dtype, shape with -1 for unknown dims) per signature leaf, named by `index_of`."""
  found = []
  for i, leaf in enumerate(leaves):
    index = index_of(i)
    if not 0 <= index < len(names):
      raise ValueError(f"{path}: signature {kind} {i} has no name ({len(names)} names)")
    found.append((names[index], array_specs.dtype_of(leaf),
                  [-1 if d is None else d for d in array_specs.shape_of(leaf)]))
  return found


def _expected_io(layout: dict, signature: dict) -> tuple:
  """What `lite_checks.check_model_io` expects of the flatbuffer: the stored signature."""
  path = layout["path"]
  slots, indices = layout["input_slots"], layout["output_indices"]
  inputs = _leaf_io(array_specs.flatten(layout["signature_time_step"]) +
                    array_specs.flatten(layout["signature_state"]), signature["input_names"],
                    (lambda i: i) if slots is None else slots.__getitem__, "input", path)
  outputs = _leaf_io(array_specs.flatten(layout["outputs"]), signature["output_names"],
                     (lambda i: i) if indices is None else indices.__getitem__, "output", path)
  return inputs, outputs


def _check_signature_matches_specs(layout: dict, path: str) -> None:
  """The stored signature's leaves are the specs' leaves with a batch dimension."""
  outputs = layout["outputs"]
  spec_outputs = (array_specs.flatten(layout["action_spec"]) +
                  array_specs.flatten(layout["policy_state_spec"]) +
                  array_specs.flatten(layout["info_spec"]))
  pairs = [("time_step", array_specs.flatten(layout["time_step_spec"]),
            array_specs.flatten(layout["signature_time_step"])),
           ("policy_state", array_specs.flatten(layout["policy_state_spec"]),
            array_specs.flatten(layout["signature_state"])),
           ("outputs", spec_outputs, array_specs.flatten(outputs))]
  for field, specs, signature in pairs:
    if len(specs) != len(signature):
      raise ValueError(f"{path}: signature.{field}: expected {len(specs)} leaves (the "
                       f"specs'), got {len(signature)}")
    for i, (spec, leaf) in enumerate(zip(specs, signature)):
      want = array_specs.shape_of(spec)
      got = array_specs.shape_of(leaf)
      if (array_specs.dtype_of(spec) != array_specs.dtype_of(leaf) or len(got) != len(want) + 1
          or any(w is not None and g is not None and w != g for w, g in zip(want, got[1:]))):
        raise ValueError(f"{path}: signature.{field} leaf {i}: expected "
                         f"{array_specs.dtype_of(spec)}[batch, {want}] (the specs'), got "
                         f"{array_specs.dtype_of(leaf)}{got}")


def _layout(policy: dict, path: str) -> dict:
  """The decoded specs and signature layout of policy.json."""
  try:
    specs = policy["specs"]
    signature = policy["signature"]
    layout = {
        "time_step_spec": array_specs.from_json(specs["time_step_spec"], "time_step_spec"),
        "action_spec": array_specs.from_json(specs["action_spec"], "action_spec"),
        "policy_state_spec": array_specs.from_json(specs["policy_state_spec"],
                                                   "policy_state_spec"),
        "info_spec": array_specs.from_json(specs["info_spec"], "info_spec"),
        "signature_time_step": array_specs.from_json(signature["time_step"], "time_step"),
        "signature_state": array_specs.from_json(signature["policy_state"], "policy_state"),
        "outputs": array_specs.from_json(signature["outputs"], "outputs"),
        "num_outputs": int(signature["num_outputs"]),
        "input_slots": None if signature["input_slots"] is None else
                       tuple(int(i) for i in signature["input_slots"]),
        "output_indices": None if signature["output_indices"] is None else
                          tuple(int(i) for i in signature["output_indices"]),
        "fixed_batch_size": signature["fixed_batch_size"],
        "stochastic": bool(policy["stochastic"]),
        "path": path,
    }
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  except (KeyError, TypeError, AttributeError, IndexError, OverflowError, RecursionError) as e:
    raise ValueError(f"{path}: malformed ({type(e).__name__}: {e})") from None
  _check_signature_matches_specs(layout, path)
  return layout


def _spec_sample(spec, outer: tuple) -> np.ndarray:
  """A value that conforms to `spec` (its minimum where it is bounded), with `outer` dims."""
  shape = outer + tuple(1 if d is None else d for d in spec.shape)
  minimum = getattr(spec, "minimum", None)
  if minimum is None:
    return np.zeros(shape, spec.dtype)
  return np.array(np.broadcast_to(np.asarray(minimum, spec.dtype), shape))


def _check_outputs(step, layout: dict, outer: tuple, path: str) -> None:
  """`step` (a PolicyStep) has the action, state and info specs' dtypes and shapes."""
  for field, spec_nest, batch in (("action", layout["action_spec"], outer),
                                  ("state", layout["policy_state_spec"], outer or (1,)),
                                  ("info", layout["info_spec"], outer)):
    specs = array_specs.flatten(spec_nest)
    got = array_specs.flatten(getattr(step, field))
    if len(got) != len(specs):
      raise ValueError(f"{path}: a checked call returned {len(got)} {field} leaves, "
                       f"expected {len(specs)}")
    for i, (spec, value) in enumerate(zip(specs, got)):
      want = batch + tuple(spec.shape)
      value = np.asarray(value)
      if value.dtype != spec.dtype or len(value.shape) != len(want) or any(
          w is not None and w != g for w, g in zip(want, value.shape)):
        raise ValueError(f"{path}: a checked call's {field} leaf {i}: expected "
                         f"{spec.dtype}{list(want)}, got {value.dtype}{list(value.shape)}")


def _plan(layout: dict, batch_time_steps: bool, fixed, path: str):
  """The native plan (no TF runtime) for the stored signature layout."""
  try:
    return plan_layout.build_native_plan(
        layout["signature_time_step"], layout["signature_state"], layout["outputs"],
        layout["num_outputs"], batch_time_steps, fixed, PolicyStep, layout["input_slots"],
        layout["output_indices"], runtime=None)
  except (ValueError, TypeError, IndexError) as e:
    raise ValueError(f"{path}: the signature layout is not usable: {e}") from None


def _check_values(files: compiled_format.CompiledFiles, layout: dict) -> None:
  """values.npz holds what policy.json says, with the specs' dtypes and shapes."""
  path = os.path.join(files.directory, compiled_format.VALUES)
  values, policy = files.values, files.policy
  try:
    state = policy["initial_state"]
    batch, count = int(state["batch"]), int(state["leaves"])
    names = list(policy["metadata"])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{os.path.join(files.directory, compiled_format.POLICY)}: malformed "
                     f"({type(e).__name__}: {e})") from None
  specs = array_specs.flatten(layout["policy_state_spec"])
  if count != len(specs):
    raise ValueError(f"{path}: {count} initial state leaves for a state of {len(specs)}")
  for i, spec in enumerate(specs):
    leaf = values.get(f"initial_state_{i}")
    want = (batch,) + tuple(spec.shape)
    if leaf is None or leaf.dtype != spec.dtype or leaf.shape != want:
      got = "nothing" if leaf is None else f"{leaf.dtype}{list(leaf.shape)}"
      raise ValueError(f"{path}: initial_state_{i}: expected {spec.dtype}{list(want)}, got {got}")
  missing = [k for k in ["train_step"] + [f"metadata_{i}" for i in range(len(names))]
             if k not in values]
  if missing:
    raise ValueError(f"{path}: missing {', '.join(missing)}")


class CompiledPolicy:
  """A compiled policy acting on numpy nests (see the module docstring).

  Args:
    path: a directory written by `policies.compile_policy` (a local path).
    batch_time_steps: single unbatched time steps (True) or batches (False),
      as for `SavedModelPyTFEagerPolicy`.
    num_threads: CPU threads per `action()` (LiteRT's XNNPACK thread pool).
      1, the default, runs on the calling thread only; more helps large
      batches of compute-bound models when cores are free (docs/speed.md).

  Raises:
    FileNotFoundError: `path` does not exist.
    TypeError, ValueError: `num_threads` is not a positive int.
    ValueError: the directory is half-written, truncated, corrupt, of another
      format or a newer version, or its model uses non-builtin operators
      (naming the file); or a batch mode its export cannot take.
  """

  backend = "lite"

  def __init__(self, path, batch_time_steps: bool = True, num_threads: int = 1):
    self.num_threads = lite_model.check_num_threads(num_threads)
    path = os.fspath(path)
    files = compiled_format.read(path)
    layout = _layout(files.policy, os.path.join(path, compiled_format.POLICY))
    _check_values(files, layout)
    fixed = layout["fixed_batch_size"]
    if batch_time_steps and plan_layout.fixed_batch_error(fixed):
      raise ValueError(plan_layout.fixed_batch_error(fixed))
    self._batch_time_steps = batch_time_steps
    self._layout = layout
    self._policy_json = files.policy
    self._plan = _plan(layout, batch_time_steps, fixed, os.path.join(path, compiled_format.POLICY))
    self._call = self._plan.call_buffers
    self._copies = (_Copy(self._checked_model(files)), _Copy(None))
    self._switch = marshal.CopySwitch(self._copies[0])
    self._update_lock = threading.Lock()

  def _checked_model(self, files: compiled_format.CompiledFiles) -> _Model:
    """The loaded model of `files`, after one call on a spec-conforming input whose
    outputs have the specs' dtypes and shapes."""
    model = _Model(files, self._layout, self.num_threads)
    path = os.path.join(files.directory, compiled_format.FLATBUFFER)
    layout = self._layout
    outer = () if self._batch_time_steps else (layout["fixed_batch_size"] or 1,)
    batch = outer[0] if outer else 1
    time_step = array_specs.map_structure(lambda s: _spec_sample(s, outer),
                                          layout["time_step_spec"])
    state = array_specs.pack_sequence_as(
        layout["policy_state_spec"],
        [np.array(np.broadcast_to(leaf[:1], (batch,) + leaf.shape[1:]))
         for leaf in model.initial_state])
    try:
      step = self._call(time_step, state, *model.call_args)
    except Exception as e:  # pylint: disable=broad-except  (the model's fault: refused)
      lines = str(e).strip().splitlines()
      raise ValueError(f"{path}: a checked call on a spec-conforming input failed: "
                       f"{lines[0] if lines else type(e).__name__}") from None
    _check_outputs(step, layout, outer, path)
    return model

  # -- Specs ---------------------------------------------------------------------

  @property
  def time_step_spec(self):
    return self._layout["time_step_spec"]

  @property
  def action_spec(self):
    return self._layout["action_spec"]

  @property
  def policy_state_spec(self):
    return self._layout["policy_state_spec"]

  @property
  def info_spec(self):
    return self._layout["info_spec"]

  @property
  def policy_step_spec(self):
    return PolicyStep(self.action_spec, self.policy_state_spec, self.info_spec)

  @property
  def batch_time_steps(self) -> bool:
    return self._batch_time_steps

  # -- Acting ----------------------------------------------------------------------

  def action(self, time_step, policy_state=(), seed: Optional[Any] = None) -> PolicyStep:
    """The `PolicyStep(action, state, info)` for `time_step`, as arrays the caller owns.

    `time_step` is TF-Agents' `TimeStep` or any namedtuple with its fields.
    `seed` must be None for policies that sample (their random ops were seeded
    at export); deterministic policies accept any seed, which changes nothing.

    Raises:
      ValueError, TypeError: bad input, naming the field (as
        `SavedModelPyTFEagerPolicy` does).
    """
    if seed is not None:
      self._check_seed(seed)
    return self._switch.call(self._call, time_step, policy_state)

  def get_initial_state(self, batch_size: Optional[int] = None):
    """The initial policy state for `batch_size` environments (numpy arrays)."""
    model = self._switch.active.model
    if not model.initial_state:
      return ()
    batch = plan_layout.initial_state_batch(batch_size, self._batch_time_steps,
                                            self._layout["fixed_batch_size"])
    arrays = [np.array(np.broadcast_to(leaf[:1], (batch,) + leaf.shape[1:]))
              if model.initial_state_batch != batch else leaf.copy()
              for leaf in model.initial_state]
    return array_specs.pack_sequence_as(self.policy_state_spec, arrays)

  # -- What the export stored ----------------------------------------------------

  def get_train_step(self) -> np.ndarray:
    """The training step of the weights that act now (numpy scalar)."""
    return self._switch.active.model.train_step.copy()

  def get_metadata(self) -> dict:
    """The metadata saved with the policy, as a dict of numpy values."""
    return {name: value.copy() for name, value in self._switch.active.model.metadata.items()}

  @property
  def report(self) -> dict:
    """report.json of the active directory: source fingerprint, versions, validation."""
    return self._switch.active.model.files.report

  @property
  def precision(self) -> str:
    """The compiled model's precision ("fp32" or "int8"), as validated when compiled."""
    report = self.report
    validation = report.get("validation") if isinstance(report, dict) else None
    precision = validation.get("precision") if isinstance(validation, dict) else None
    return precision if precision in lite_model.PRECISIONS else "fp32"

  @property
  def lite_runtime(self) -> str:
    """How LiteRT runs the active model: "native" (LiteRT's C API, the usual way), or
    "interpreter (why not native)" (ai-edge-litert's Python interpreter)."""
    return self._switch.active.model.model.runtime

  @property
  def path(self) -> str:
    """The compiled directory that acts now."""
    return self._switch.active.model.files.directory

  @property
  def manifest_sha256(self) -> str:
    """SHA-256 of the active directory's manifest (names its exact files)."""
    return self._switch.active.model.files.manifest_sha256

  # -- Updates -------------------------------------------------------------------------

  def update(self, path) -> None:
    """Swaps atomically to another compiled directory of the same policy.

    Calls in flight finish on the old model; later calls run on the new one.

    Raises:
      FileNotFoundError, ValueError: as the constructor, or a directory whose
        specs or signature differ from this policy's. The policy then keeps
        acting as before.
    """
    path = os.fspath(path)
    with self._update_lock:
      files = compiled_format.read(path)
      policy_json = os.path.join(path, compiled_format.POLICY)
      _check_values(files, _layout(files.policy, policy_json))
      for key in ("specs", "signature", "stochastic"):
        if files.policy.get(key) != self._policy_json.get(key):
          raise ValueError(f"{policy_json}: its {key} differ from this policy's "
                           f"({self.path}); compile the same export's checkpoints to update")
      model = self._checked_model(files)
      # The standby slot is whichever is not active now (asked of the switch, so
      # an interrupt anywhere here cannot leave the two confused).
      standby = self._copies[1] if self._switch.active is self._copies[0] else self._copies[0]
      if not self._switch.wait_idle(standby, UPDATE_IDLE_TIMEOUT_S):
        raise TimeoutError(f"cannot update to {path}: calls still running on the model "
                           f"before {self.path} after {UPDATE_IDLE_TIMEOUT_S:.0f} s")
      replaced, standby.model = standby.model, model
      self._switch.activate(standby)
      if replaced is not None:   # no call can run on it: activate dropped its call_args
        replaced.model.close()

  def _check_seed(self, seed) -> None:
    if self._layout["stochastic"]:
      raise ValueError(plan_layout.seed_error(seed))

  def _batching_parts(self) -> batching.BatchingParts:
    """For `batching.DynamicBatcher`: a plan for single callers' rows, on this policy's models."""
    layout = self._layout
    rows = _plan(layout, True, None, os.path.join(self.path, compiled_format.POLICY))
    return batching.BatchingParts(
        rows=rows, switch=self._switch, call_rows=rows.call_rows_buffers,
        padded=batching.padded_rows, fixed_batch_size=layout["fixed_batch_size"],
        check_seed=self._check_seed, batch_error=batching.runtime_error,
        lone=rows.call_buffers)

  def _not_copyable(self, *unused):
    raise TypeError(f"a CompiledPolicy cannot be pickled or copied: pass its directory "
                    f"({self.path!r}) and load it where it is used")

  __reduce__ = __reduce_ex__ = __copy__ = __deepcopy__ = _not_copyable
