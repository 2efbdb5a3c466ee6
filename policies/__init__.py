"""Fast, sturdy numpy policies for TF-Agents SavedModels.

    from policy_runtime.policies import SavedModelPyTFEagerPolicy
    policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
    step = policy.action(time_step, policy.get_initial_state())

Compiled once where TensorFlow is, a policy acts without it:

    from policy_runtime.policies import compile_policy   # imports TensorFlow
    compile_policy(path, compiled_dir)
    from policy_runtime.policies import compiled         # does not
    policy = compiled.CompiledPolicy(compiled_dir)

The names below are imported on first use (PEP 562), so importing the package,
or a module of it that needs no TensorFlow (`local_ray`, `episodes`,
`compiled`), imports no TensorFlow.
"""

import importlib

from .version import __version__

_EXPORTS = {
    "BatcherClosedError": ".dynamic_batching",
    "CheckpointFollower": ".checkpoint_follower",
    "CompiledFollower": ".compiled_follower",
    "CompiledPolicy": ".compiled",
    "DynamicBatchingPolicy": ".dynamic_batching",
    "PyTFEagerPolicyBase": ".saved_model_policy",
    "SavedModelPyTFEagerPolicy": ".saved_model_policy",
    "UnsafeGraphError": ".graph_audit",
    "compile_policy": ".compile",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  try:
    imported = importlib.import_module(module, __name__)
  except AttributeError as e:
    # `from package import name` would report an AttributeError raised while
    # importing as "cannot import name", hiding what failed (e.g. a TFP
    # that does not match the installed TF and Keras).
    raise ImportError(f"{name}: importing {module.lstrip('.')} failed: "
                      f"{type(e).__name__}: {e}") from e
  value = getattr(imported, name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
