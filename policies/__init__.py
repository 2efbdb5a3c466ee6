"""Fast, sturdy numpy policies for TF-Agents SavedModels.

    from policies import SavedModelPyTFEagerPolicy
    policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
    step = policy.action(time_step, policy.get_initial_state())

The names below are imported on first use (PEP 562), so importing the package,
or a module of it that needs no TensorFlow (`policies.local_ray`,
`policies.episodes`), imports no TensorFlow.
"""

import importlib

_EXPORTS = {
    "BatcherClosedError": "policies.dynamic_batching",
    "CheckpointFollower": "policies.checkpoint_follower",
    "DynamicBatchingPolicy": "policies.dynamic_batching",
    "PyTFEagerPolicyBase": "policies.saved_model_policy",
    "SavedModelPyTFEagerPolicy": "policies.saved_model_policy",
    "UnsafeGraphError": "policies.graph_audit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f"module 'policies' has no attribute {name!r}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
