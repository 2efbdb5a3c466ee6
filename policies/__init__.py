"""Fast, sturdy numpy policies for TF-Agents SavedModels.

    from policy_runtime.policies import SavedModelPyTFEagerPolicy
    policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
    step = policy.action(time_step, policy.get_initial_state())

Compiled once where TensorFlow is, a policy acts without it:

    from policy_runtime.policies import compile_policy   # imports TensorFlow
    compile_policy(path, compiled_dir)
    from policy_runtime.policies import compiled         # does not
    policy = compiled.CompiledPolicy(compiled_dir)

The package tree is the architecture:

    policies/               the public classes (TensorFlow): saved_model_policy,
                            dynamic_batching, compile, compiled_tf_agents
    policies/runtime/       what acts without TensorFlow: compiled policies, the
                            LiteRT runners, the batcher's core, specs, time steps
    policies/saved_model/   loading and auditing SavedModels, the marshaling plan
    policies/engines/       the TF and LiteRT engines
    policies/updates/       pushed weights and CheckpointFollower
    policies/scale_out/     Ray evaluation (the only part that needs Ray)

The names below, and the modules `compiled`, `time_steps`, `episodes` and
`evaluation` (forwarded to their packages), are imported on first use (PEP
562), so importing the package, or a module of it that needs no TensorFlow,
imports no TensorFlow.
"""

import importlib

from .version import __version__

_EXPORTS = {
    "BatcherClosedError": ".dynamic_batching",
    "CheckpointFollower": ".updates.checkpoint_follower",
    "CompiledFollower": ".runtime.compiled_follower",
    "CompiledPolicy": ".runtime.compiled",
    "DynamicBatchingPolicy": ".dynamic_batching",
    "PyTFEagerPolicyBase": ".saved_model_policy",
    "SavedModelPyTFEagerPolicy": ".saved_model_policy",
    "UnsafeGraphError": ".saved_model.graph_audit",
    "compile_policy": ".compile",
}

# Modules users import from the package itself (`from policy_runtime.policies
# import compiled`), where they lived before the split into packages.
_MODULES = {
    "compiled": ".runtime.compiled",
    "episodes": ".runtime.episodes",
    "evaluation": ".scale_out.evaluation",
    "time_steps": ".runtime.time_steps",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
  if name in _MODULES:
    value = importlib.import_module(_MODULES[name], __name__)
    globals()[name] = value
    return value
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
