"""The installed wheel without TensorFlow: a CompiledPolicy acts as the drop-in class did.

Run by wheel_smoke.sh from outside the checkout, in a fresh venv with numpy and
LiteRT only.
"""

import importlib.metadata
import sys

import numpy as np
import pytest

from policy_runtime.policies import compiled
from policy_runtime.policies import time_steps


def test_no_tensorflow_here():
  with pytest.raises(ImportError):
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  assert importlib.metadata.version("policy-runtime")


def test_compiled_policy_acts_as_the_drop_in_did(options, observations):
  policy = compiled.CompiledPolicy(options["compiled"], batch_time_steps=False)
  step = policy.action(time_steps.restart(observations, batch_size=len(observations)),
                       policy.get_initial_state(len(observations)))
  np.testing.assert_array_equal(step.action, np.load(options["actions"]))
  assert "tensorflow" not in sys.modules
