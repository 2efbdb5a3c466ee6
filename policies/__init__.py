"""Fast, sturdy numpy policies for TF-Agents SavedModels.

    from policies import SavedModelPyTFEagerPolicy
    policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
    step = policy.action(time_step, policy.get_initial_state())
"""

from policies import compat

compat.import_gym_without_banner()   # before TF-Agents imports gym

from policies.checkpoint_follower import CheckpointFollower
from policies.dynamic_batching import BatcherClosedError
from policies.dynamic_batching import DynamicBatchingPolicy
from policies.graph_audit import UnsafeGraphError
from policies.saved_model_policy import PyTFEagerPolicyBase
from policies.saved_model_policy import SavedModelPyTFEagerPolicy

__all__ = ["BatcherClosedError", "CheckpointFollower", "DynamicBatchingPolicy",
           "PyTFEagerPolicyBase", "SavedModelPyTFEagerPolicy", "UnsafeGraphError"]
