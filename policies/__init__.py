"""Fast, sturdy numpy policies for TF-Agents SavedModels.

    from policies import SavedModelPyTFEagerPolicy
    policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
    step = policy.action(time_step, policy.get_initial_state())

Compiled once where TensorFlow is, a policy acts without it:

    from policies import compile_policy            # imports TensorFlow
    compile_policy(path, compiled_dir)
    from policies import compiled                  # does not
    policy = compiled.CompiledPolicy(compiled_dir)

The names below are imported on first use (PEP 562), so importing the package,
or a module of it that needs no TensorFlow (`policies.local_ray`,
`policies.episodes`, `policies.compiled`), imports no TensorFlow.
"""

import importlib

_EXPORTS = {
    "BatcherClosedError": "policies.dynamic_batching",
    "CheckpointFollower": "policies.checkpoint_follower",
    "CompiledFollower": "policies.compiled_follower",
    "CompiledPolicy": "policies.compiled",
    "DynamicBatchingPolicy": "policies.dynamic_batching",
    "PyTFEagerPolicyBase": "policies.saved_model_policy",
    "SavedModelPyTFEagerPolicy": "policies.saved_model_policy",
    "UnsafeGraphError": "policies.graph_audit",
    "compile_policy": "policies.compile",
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
