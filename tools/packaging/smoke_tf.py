"""The installed wheel with TensorFlow: the drop-in class on both backends, then compile_policy.

Run by wheel_smoke.sh from outside the checkout, in a fresh venv.
"""

import importlib.metadata

import numpy as np

from policy_runtime import policies
from policy_runtime.policies import SavedModelPyTFEagerPolicy
from policy_runtime.policies import compile_policy
from policy_runtime.policies import time_steps


def _actions(policy, observations):
  state = policy.get_initial_state(len(observations))
  return policy.action(time_steps.restart(observations, batch_size=len(observations)),
                       state).action


def test_imported_from_the_wheel_not_the_checkout():
  assert "site-packages" in policies.__file__, policies.__file__
  assert importlib.metadata.version("policy-runtime") == policies.__version__
  from policy_runtime.native import marshal  # pylint: disable=import-outside-toplevel
  assert "site-packages" in marshal.__file__, marshal.__file__


def test_drop_in_on_both_backends_then_compiled(options, observations):
  on_tf = _actions(SavedModelPyTFEagerPolicy(options["policy"], load_specs_from_pbtxt=True,
                                             batch_time_steps=False), observations)
  lite = SavedModelPyTFEagerPolicy(options["policy"], load_specs_from_pbtxt=True,
                                   batch_time_steps=False, backend="lite")
  assert lite.backend == "lite"
  np.testing.assert_array_equal(_actions(lite, observations), on_tf)
  compile_policy(options["policy"], options["compiled"])
  np.save(options["actions"], on_tf)
