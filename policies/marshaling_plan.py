"""Compiles a policy's `action` concrete function into a native marshaling plan.

Everything that can be decided once per policy is decided here, at load time:
the flat argument order of `(time_step, policy_state)` (as `tf.nest` flattens
it), each leaf's dtype, inner shape and batch handling, the output nest, the
function's registered name, captured inputs and call attributes. `action()`
then makes a single native call (`MarshalingPlan.call`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from policies import quiet_gym  # noqa: F401  before TF-Agents, which imports gym

import numpy as np
import tensorflow as tf
from tensorflow.python import pywrap_tfe
from tensorflow.python.eager import context
from tensorflow.python.framework import ops

from native import marshal
from tf_agents.trajectories import policy_step


SINGLE_THREADED_EXECUTOR = "SINGLE_THREADED_EXECUTOR"


def _tf_runtime(num_outputs: int, executor_type: str) -> dict:
  """What every call passes to TF's executor, resolved once."""
  ctx = context.context()
  ctx.ensure_initialized()
  attrs = ctx.function_call_options.as_attrs()
  if executor_type:
    attrs["executor_type"] = executor_type
  return {
      "from_dlpack": pywrap_tfe.TFE_FromDlpackCapsule,
      "eager_tensor": ops.EagerTensor,
      "execute": pywrap_tfe.TFE_Py_Execute,
      "context_handle": ctx._handle,  # pylint: disable=protected-access
      "device": ctx.device_name,
      "attrs": tuple(item for pair in attrs.items() for item in pair),
      "num_outputs": num_outputs,
  }


def _is_namedtuple(value) -> bool:
  return isinstance(value, tuple) and hasattr(type(value), "_fields")


def _input_tree(structure, path: str, slots: list, batch: int, slot_of) -> tuple:
  """Encodes a spec nest as native input nodes; appends leaf specs to `slots`."""
  if isinstance(structure, tf.TensorSpec):
    slot = slot_of(len(slots))
    slots.append(structure)
    inner = tuple(-1 if d is None else int(d) for d in structure.shape.as_list()[1:])
    return ("leaf", path, slot, np.dtype(structure.dtype.as_numpy_dtype), inner,
            batch, structure.dtype.as_datatype_enum)
  if _is_namedtuple(structure):
    children = tuple(
        _input_tree(getattr(structure, f), f"{path}.{f}", slots, batch, slot_of)
        for f in structure._fields)
    return ("namedtuple", path, children, tuple(structure._fields), type(structure).__name__)
  if isinstance(structure, dict):
    keys = tuple(sorted(structure))
    children = tuple(
        _input_tree(structure[k], f"{path}[{k!r}]", slots, batch, slot_of)
        for k in keys)
    return ("dict", path, children, keys)
  if isinstance(structure, (list, tuple)):
    children = tuple(
        _input_tree(v, f"{path}[{i}]", slots, batch, slot_of) for i, v in enumerate(structure))
    return ("sequence", path, children)
  if structure is None:
    return ("sequence", path, ())
  raise TypeError(f"{path}: unsupported input spec {structure!r}")


def _output_tree(structure, counter: list, unbatch: bool, top: bool = False) -> tuple:
  """Output nodes; `counter` = [leaves seen, index_of(leaf number)]."""
  if isinstance(structure, (tf.TensorSpec, tf.Tensor)):
    index = counter[1](counter[0])
    counter[0] += 1
    return ("leaf", index, unbatch)
  if _is_namedtuple(structure):
    out_type = type(structure)
    if top:
      out_type = policy_step.PolicyStep
      children = tuple(
          _output_tree(getattr(structure, f), counter, unbatch and f != "state")
          for f in structure._fields)
    else:
      children = tuple(_output_tree(v, counter, unbatch) for v in structure)
    return ("namedtuple", out_type, children)
  if isinstance(structure, dict):
    # Values are flattened in sorted-key order; the dict keeps its own order.
    by_key = {k: _output_tree(structure[k], counter, unbatch) for k in sorted(structure)}
    return ("dict", tuple(structure), tuple(by_key[k] for k in structure))
  if isinstance(structure, list):
    return ("list", tuple(_output_tree(v, counter, unbatch) for v in structure))
  if isinstance(structure, tuple):
    return ("tuple", tuple(_output_tree(v, counter, unbatch) for v in structure))
  raise TypeError(f"unsupported output structure {structure!r}")


@dataclasses.dataclass(frozen=True)
class ActionFunction:
  """A callable graph function: its registered name, inputs and outputs."""
  name: str
  time_step_spec: Any          # nest of batched tf.TensorSpec
  policy_state_spec: Any       # nest of batched tf.TensorSpec
  output_structure: Any        # PolicyStep-like nest of specs
  num_outputs: int
  captures: tuple              # captured inputs, appended to the arguments
  concrete: Any                # keeps the function registered while in use
  # Argument slot of each (time_step, policy_state) leaf in tf.nest order, and
  # output index of each PolicyStep leaf; None: the same order.
  input_slots: Optional[tuple] = None
  output_indices: Optional[tuple] = None


def action_function_from_concrete(concrete) -> ActionFunction:
  """Describes a concrete function taking `(time_step, policy_state, ...)`."""
  args, _ = concrete.structured_input_signature
  time_step_spec, policy_state_spec = args[0], args[1]
  num_leaves = len(tf.nest.flatten((time_step_spec, policy_state_spec)))
  captures = tuple(concrete.captured_inputs)
  if len(concrete.inputs) != num_leaves + len(captures):
    raise ValueError(
        f"action function {concrete.name!r} takes {len(concrete.inputs) - len(captures)} "
        f"tensors, but its (time_step, policy_state) signature has {num_leaves} leaves")
  return ActionFunction(
      name=concrete._inference_function.name.decode(),  # pylint: disable=protected-access
      time_step_spec=time_step_spec,
      policy_state_spec=policy_state_spec,
      output_structure=concrete.structured_outputs,
      num_outputs=len(concrete.outputs),
      captures=captures,
      concrete=concrete,
  )


def leading_batch(spec_nest) -> int | None:
  """The fixed batch size of a batched spec nest, None when unknown."""
  sizes = {s.shape[0] for s in tf.nest.flatten(spec_nest)}
  if len(sizes) > 1:
    raise ValueError(f"inconsistent batch dimensions in signature: {sorted(map(str, sizes))}")
  return sizes.pop() if sizes else None


def build_native_plan(time_step_spec, policy_state_spec, output_structure, num_outputs: int,
                      batch_time_steps: bool, fixed_batch: int | None,
                      input_slots: Optional[tuple] = None,
                      output_indices: Optional[tuple] = None,
                      executor_type: str = ""):
  """The native `Plan` for nests of batched signature specs.

  With `batch_time_steps`, time-step leaves come unbatched (a batch of 1 is
  added) and state leaves come with a batch of 1; otherwise every leaf carries
  the caller's batch, which must be consistent (and equal `fixed_batch` if set).
  """
  caller_batch = marshal.ANY_BATCH if fixed_batch is None else fixed_batch
  ts_batch = marshal.NO_CALLER_BATCH if batch_time_steps else caller_batch
  state_batch = 1 if batch_time_steps else caller_batch
  slot_of = (lambda i: i) if input_slots is None else input_slots.__getitem__
  slots: list = []
  ts_tree = _input_tree(time_step_spec, "time_step", slots, ts_batch, slot_of)
  state_tree = _input_tree(policy_state_spec, "policy_state", slots, state_batch, slot_of)
  counter = [0, (lambda i: i) if output_indices is None else output_indices.__getitem__]
  out_tree = _output_tree(output_structure, counter, batch_time_steps, top=True)
  if counter[0] != num_outputs:
    raise ValueError(f"action function returns {num_outputs} tensors but its output "
                     f"structure has {counter[0]} leaves")
  return marshal.Plan(ts_tree, state_tree, out_tree, len(slots),
                     _tf_runtime(num_outputs, executor_type))


class MarshalingPlan:
  """The native plan plus everything needed to call the function."""

  def __init__(self, function: ActionFunction, batch_time_steps: bool, executor_type: str = ""):
    self.function = function
    self.batch_time_steps = batch_time_steps
    fixed = leading_batch((function.time_step_spec, function.policy_state_spec))
    self.fixed_batch_size = fixed
    if batch_time_steps and fixed not in (None, 1):
      raise ValueError(
          f"this policy was saved with a fixed batch size of {fixed}, so it cannot act "
          f"on single unbatched time steps; create it with batch_time_steps=False and "
          f"pass batches of {fixed}")

    self._native = build_native_plan(
        function.time_step_spec, function.policy_state_spec, function.output_structure,
        function.num_outputs, batch_time_steps, fixed, function.input_slots,
        function.output_indices, executor_type)

  @property
  def native_call(self):
    """The native `call(time_step, policy_state, function_name, captures)`."""
    return self._native.call

  @property
  def native_call_buffers(self):
    """The native `call_buffers(time_step, policy_state, lease, release)` (buffer engines)."""
    return self._native.call_buffers

  def call(self, time_step, policy_state, function: ActionFunction):
    """Validates, converts, runs `function` and packs a `PolicyStep`.

    `function` is `self.function` or another copy of it (same structure).
    """
    return self._native.call(time_step, policy_state, function.name, function.captures)

  def accepts(self, function: ActionFunction) -> bool:
    """Whether `function` has this plan's structure (e.g. a second loaded copy)."""
    mine = self.function
    return (function.num_outputs == mine.num_outputs and
            function.input_slots == mine.input_slots and
            function.output_indices == mine.output_indices and
            tf.nest.flatten(function.time_step_spec) == tf.nest.flatten(mine.time_step_spec) and
            tf.nest.flatten(function.policy_state_spec) ==
            tf.nest.flatten(mine.policy_state_spec))

  def flatten(self, time_step, policy_state, staging: bool = False) -> list:
    """The flat eager tensors `call` would pass (for inspection and tests).

    With `staging`, small leaves are the plan's reused staging tensors, valid
    until the next call; without, every tensor is the caller's own.
    """
    return self._native.flatten(time_step, policy_state, staging)
