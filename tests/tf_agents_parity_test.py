"""TF-Agents' own tests of its `SavedModelPyTFEagerPolicy`, run against ours.

The installed `tf_agents/policies/py_tf_eager_policy_test.py` is imported as
is; only the class its `SavedModelPYTFEagerPolicyTest` constructs is ours
(`PyTFEagerPolicy`, which wraps a live TF policy, stays TF-Agents'). Runs on
both stacks, so TF-Agents' tests pass with our class on TF 2.15 and TF 2.21.
"""

import types

from tf_agents.policies import py_tf_eager_policy
from tf_agents.policies import py_tf_eager_policy_test as upstream

from policy_runtime.policies import SavedModelPyTFEagerPolicy

upstream.py_tf_eager_policy = types.SimpleNamespace(
    PyTFEagerPolicy=py_tf_eager_policy.PyTFEagerPolicy,
    SavedModelPyTFEagerPolicy=SavedModelPyTFEagerPolicy)


class TestTFAgentsSavedModelPyTFEagerPolicyTests(upstream.SavedModelPYTFEagerPolicyTest):
  """Every case of TF-Agents' SavedModelPYTFEagerPolicyTest, on our class."""

  test_session = None   # tf.test.TestCase's session helper, which pytest would collect


def test_the_upstream_cases_construct_our_class():
  assert upstream.py_tf_eager_policy.SavedModelPyTFEagerPolicy is SavedModelPyTFEagerPolicy
  cases = [n for n in dir(TestTFAgentsSavedModelPyTFEagerPolicyTests)
           if n.startswith("test") and callable(getattr(TestTFAgentsSavedModelPyTFEagerPolicyTests, n))]
  assert len(cases) == 11, cases
