"""A compiled policy as a TF-Agents `PyPolicy`, for TF-Agents' drivers and metrics.

    from policy_runtime.policies import compiled, compiled_tf_agents
    policy = compiled_tf_agents.as_py_policy(compiled.CompiledPolicy(path))

Needs TF-Agents (so TensorFlow); `policies.runtime.compiled` alone does not.
"""

from __future__ import annotations

from typing import Any, Optional

from .saved_model import quiet_gym  # noqa: F401  before TF-Agents, which imports gym

from tf_agents.policies import py_policy
from tf_agents.specs import array_spec
from tf_agents.trajectories import policy_step
from tf_agents.trajectories import time_step as ts

from .runtime import array_specs
from .runtime import compiled


def _tf_agents_spec(spec):
  if isinstance(spec, array_specs.BoundedArraySpec):
    return array_spec.BoundedArraySpec(spec.shape, spec.dtype, spec.minimum, spec.maximum,
                                       spec.name)
  return array_spec.ArraySpec(spec.shape, spec.dtype, spec.name)


def tf_agents_specs(spec_nest):
  """The nest with TF-Agents' ArraySpecs (a top-level TimeStep as TF-Agents' TimeStep)."""
  converted = array_specs.map_structure(_tf_agents_spec, spec_nest)
  if array_specs.is_namedtuple(converted) and type(converted).__name__ == "TimeStep" and \
      tuple(converted._fields) == ts.TimeStep._fields:
    converted = ts.TimeStep(*converted)
  return converted


class CompiledPyPolicy(py_policy.PyPolicy):
  """A `PyPolicy` acting through a `compiled.CompiledPolicy` (same results, TF-Agents types)."""

  def __init__(self, policy: compiled.CompiledPolicy):
    self._compiled = policy
    super().__init__(tf_agents_specs(policy.time_step_spec), tf_agents_specs(policy.action_spec),
                     tf_agents_specs(policy.policy_state_spec),
                     tf_agents_specs(policy.info_spec))

  @property
  def compiled(self) -> compiled.CompiledPolicy:
    return self._compiled

  def _action(self, time_step, policy_state, seed: Optional[Any] = None):
    step = self._compiled.action(time_step, policy_state, seed)
    return policy_step.PolicyStep(step.action, step.state, step.info)

  def _get_initial_state(self, batch_size: Optional[int]):
    return self._compiled.get_initial_state(batch_size)

  def get_train_step(self):
    return self._compiled.get_train_step()

  def get_metadata(self):
    return self._compiled.get_metadata()


def as_py_policy(policy: compiled.CompiledPolicy) -> CompiledPyPolicy:
  """`policy` as a TF-Agents `PyPolicy`."""
  return CompiledPyPolicy(policy)
