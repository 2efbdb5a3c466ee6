"""An actor of this monorepo that acts through policy_runtime."""

import numpy as np

from policy_runtime.policies import SavedModelPyTFEagerPolicy
from policy_runtime.policies import time_steps


def first_actions(policy_dir: str, backend: str, observations: np.ndarray) -> np.ndarray:
  """The policy's actions on a batch of first observations, on one backend."""
  policy = SavedModelPyTFEagerPolicy(policy_dir, load_specs_from_pbtxt=True, batch_time_steps=False,
                                     backend=backend)
  step = policy.action(time_steps.restart(observations, batch_size=len(observations)),
                       policy.get_initial_state(len(observations)))
  return step.action
