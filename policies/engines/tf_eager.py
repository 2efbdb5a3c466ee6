"""The TensorFlow engine: the saved `action` function through TF's eager runtime."""

from __future__ import annotations

from .. import engines
from ..saved_model import loading
from ..saved_model import marshaling_plan


def call_args(loaded: loading.LoadedPolicy) -> tuple:
  """What the native plan's `call` needs to run this copy's `action`."""
  return (loaded.action.name, loaded.action.captures)


class TFEagerEngine:
  """Runs a copy's own `action` graph function (exact TF-Agents parity)."""

  name = "tf"
  last_report = None

  def __init__(self, plan: marshaling_plan.MarshalingPlan, replaces_buffer_engine: bool = False):
    """`replaces_buffer_engine`: calls may still find a copy prepared for a
    buffer engine (LiteRT) while this engine takes over; those run there."""
    self.call = plan.native_call   # call(time_step, policy_state, function_name, captures)
    if replaces_buffer_engine:
      self.call = engines.by_call_args(plan.native_call, plan.native_call_buffers)

  def prepare(self, loaded: loading.LoadedPolicy) -> tuple:
    return call_args(loaded)

  def follow(self, loaded: loading.LoadedPolicy, pushed: list) -> tuple:  # pylint: disable=unused-argument
    """A copy's own graph reads its variables, which hold the pushed values."""
    return call_args(loaded)

  @staticmethod
  def rows_batch(rows: int, max_rows: int) -> int:  # pylint: disable=unused-argument
    """The batch a call of `rows` rows runs at: any size costs nothing to set up."""
    return rows
