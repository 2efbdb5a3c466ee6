"""policy_runtime as an external repository, beside this workspace's own `policies`."""

import os
import sys

import numpy as np
import pytest

import policies
from policies import greedy_actor


def test_our_policies_package_is_ours():
  assert policies.OWNER == "rl_monorepo"


def test_the_embedded_policy_acts_alike_on_both_backends():
  policy_dir = os.path.join(os.environ["TEST_SRCDIR"], "policy_runtime", "tools", "cli", "default_policy")
  observations = np.random.default_rng(0).uniform(-0.2, 0.2, (8, 4)).astype(np.float32)
  on_tf = greedy_actor.first_actions(policy_dir, "tf", observations)
  on_lite = greedy_actor.first_actions(policy_dir, "lite", observations)
  assert on_tf.shape == (8,)
  assert set(on_tf.tolist()) <= {0, 1}
  np.testing.assert_array_equal(on_tf, on_lite)


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
