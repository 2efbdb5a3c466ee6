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

from . import quiet_gym  # noqa: F401  before TF-Agents, which imports gym

import tensorflow as tf
from tensorflow.python import pywrap_tfe
from tensorflow.python.eager import context
from tensorflow.python.framework import ops

from ..runtime import plan_layout
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


def build_native_plan(time_step_spec, policy_state_spec, output_structure, num_outputs: int,
                      batch_time_steps: bool, fixed_batch: int | None,
                      input_slots: Optional[tuple] = None,
                      output_indices: Optional[tuple] = None,
                      executor_type: str = ""):
  """The native `Plan` (with TF's runtime) for nests of batched `tf.TensorSpec`s
  (see `plan_layout.build_native_plan`)."""
  return plan_layout.build_native_plan(
      time_step_spec, policy_state_spec, output_structure, num_outputs, batch_time_steps,
      fixed_batch, policy_step.PolicyStep, input_slots, output_indices,
      _tf_runtime(num_outputs, executor_type))


class MarshalingPlan:
  """The native plan plus everything needed to call the function."""

  def __init__(self, function: ActionFunction, batch_time_steps: bool, executor_type: str = ""):
    self.function = function
    self.batch_time_steps = batch_time_steps
    fixed = plan_layout.leading_batch((function.time_step_spec, function.policy_state_spec))
    self.fixed_batch_size = fixed
    if batch_time_steps and plan_layout.fixed_batch_error(fixed):
      raise ValueError(plan_layout.fixed_batch_error(fixed))

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
