"""Dynamic batching as a TF-Agents `PyPolicy`: `DynamicBatchingPolicy`.

The batcher itself (`policies.runtime.batching.DynamicBatcher`, no TensorFlow) runs
many threads' single-step `action()` calls as one batched call; see there for
how batches form. This module gives it TF-Agents' `PyPolicy` face, over a
`SavedModelPyTFEagerPolicy` (either backend) or a `CompiledPolicy`, both
created with `batch_time_steps=False`.
"""

from __future__ import annotations

from typing import Any, Optional

from .saved_model import quiet_gym  # noqa: F401  before TF-Agents, which imports gym

from tf_agents.policies import py_policy

from . import compiled_tf_agents
from .runtime import batching
from .runtime import compiled

BatcherClosedError = batching.BatcherClosedError


class DynamicBatchingPolicy(py_policy.PyPolicy):
  """A `PyPolicy` that batches concurrent single-step calls into one call.

  Same specs as the wrapped policy (TF-Agents' specs for a `CompiledPolicy`).
  `action(time_step, policy_state=())` takes one unbatched time step (and a
  policy state with a batch of 1, as `get_initial_state()` returns it) from
  any number of threads at once and returns an unbatched action and info,
  like `batch_time_steps=True`. Use it as a context manager or call
  `close()`: calls not already in a running batch then get a
  `BatcherClosedError`.
  """

  def __init__(self, policy, max_batch_size: int = 64, max_wait_us: float = 0.0):
    """Wraps `policy`; batches form from the calls that overlap.

    Args:
      policy: a `SavedModelPyTFEagerPolicy` or `CompiledPolicy` created with
        `batch_time_steps=False`.
      max_batch_size: most calls run in one batch. A policy exported with a
        fixed batch size runs batches of at most that size, padded to it.
      max_wait_us: how long the caller leading a batch waits for more calls
        to fill it. 0 (the default, best in the
        measurements in the README) runs whatever is waiting at once; calls
        that arrive meanwhile form the next batch.

    Raises:
      ValueError: the policy batches its own time steps, a bad batch size, or
        a signature with unknown inner dimensions (rows must stack).
    """
    self._batcher = batching.DynamicBatcher(policy, max_batch_size, max_wait_us)
    self._policy = policy
    if isinstance(policy, compiled.CompiledPolicy):
      specs = [compiled_tf_agents.tf_agents_specs(s) for s in (
          policy.time_step_spec, policy.action_spec, policy.policy_state_spec,
          policy.info_spec)]
    else:
      specs = [policy.time_step_spec, policy.action_spec, policy.policy_state_spec,
               policy.info_spec]
    super().__init__(*specs)

  # -- PyPolicy -----------------------------------------------------------------

  def _action(self, time_step, policy_state, seed: Optional[Any] = None):
    return self._batcher.action(time_step, policy_state, seed)

  def _get_initial_state(self, batch_size: Optional[int]):
    return self._batcher.get_initial_state(batch_size)

  async def action_async(self, time_step, policy_state=(), seed: Optional[Any] = None):
    """`action` for coroutines, batched across the coroutines and threads calling
    (see `batching.DynamicBatcher.action_async`)."""
    return await self._batcher.action_async(time_step, policy_state, seed)

  # -- Wrapped policy -------------------------------------------------------------

  @property
  def wrapped_policy(self):
    return self._policy

  @property
  def max_batch_size(self) -> int:
    return self._batcher.max_batch_size

  @property
  def max_wait_us(self) -> float:
    return self._batcher.max_wait_us

  @property
  def batches(self) -> int:
    return self._batcher.batches

  @property
  def calls(self) -> int:
    return self._batcher.calls

  @property
  def mean_batch_size(self) -> float:
    return self._batcher.mean_batch_size

  def update_from_checkpoint(self, checkpoint_path: str) -> None:
    """Updates the wrapped policy's weights; every batch runs on one set of weights."""
    self._policy.update_from_checkpoint(checkpoint_path)

  def update(self, path) -> None:
    """Swaps a wrapped `CompiledPolicy` to another compiled directory (see its `update`)."""
    self._policy.update(path)

  def get_train_step_from_last_restored_checkpoint_path(self) -> Optional[int]:
    return self._policy.get_train_step_from_last_restored_checkpoint_path()

  def get_train_step(self):
    return self._policy.get_train_step()

  def get_metadata(self):
    return self._policy.get_metadata()

  def variables(self):
    return self._policy.variables()

  # -- Lifetime ---------------------------------------------------------------------

  def close(self) -> None:
    """Stops batching; calls not already in a running batch get a BatcherClosedError."""
    self._batcher.close()

  def __enter__(self) -> "DynamicBatchingPolicy":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
