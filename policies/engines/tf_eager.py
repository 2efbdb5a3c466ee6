"""The TensorFlow engine: the saved `action` function through TF's eager runtime."""

from __future__ import annotations

from policies import loading
from policies import marshaling_plan


def call_args(loaded: loading.LoadedPolicy) -> tuple:
  """What the native plan's `call` needs to run this copy's `action`."""
  return (loaded.action.name, loaded.action.captures)


class TFEagerEngine:
  """Runs a copy's own `action` graph function (exact TF-Agents parity)."""

  name = "tf"

  def __init__(self, plan: marshaling_plan.MarshalingPlan):
    self.call = plan.native_call   # call(time_step, policy_state, function_name, captures)

  def prepare(self, loaded: loading.LoadedPolicy) -> tuple:
    return call_args(loaded)
