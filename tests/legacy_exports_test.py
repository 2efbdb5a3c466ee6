"""Real TF 2.4 PolicySaver exports (tests/fixtures/tf2_4, written by TF 2.4.4 and TF-Agents
0.7.1): their object graph does not decode here (TFP specs of TypeSpec class 275837168), so
they load from their flat signatures. They act as TF 2.4 did on both engines and in both
batch modes, and update from that era's checkpoints and from a `PolicySaver.save()` directory."""

import numpy as np
import pytest
from tf_agents.policies import py_tf_eager_policy

import reference_exports
from policy_runtime.policies import SavedModelPyTFEagerPolicy

KINDS = [("q_mlp", True), ("lstm_actor", False)]   # (name, exact): greedy Q ints, LSTM floats


@pytest.mark.parametrize("backend", ["tf", "lite"])
@pytest.mark.parametrize("batch_time_steps", [True, False])
@pytest.mark.parametrize("name, exact", KINDS)
def test_a_tf_2_4_export_acts_as_tf_2_4_did(name, exact, backend, batch_time_steps):
  export, checkpoint, data = reference_exports.reference("tf2_4", name)
  policy = SavedModelPyTFEagerPolicy(export, load_specs_from_pbtxt=True, backend=backend,
                                     batch_time_steps=batch_time_steps)
  assert policy.backend == backend, policy.backend_reason
  assert policy.load_mode.startswith("flat signatures only") and "_TFPTypeSpec" in policy.load_mode
  assert str(data["tf_version"]) == "2.4.4" and policy.get_train_step() == 21
  steps = reference_exports.steps(policy, data)

  def check(expected, what):
    got = reference_exports.act(policy, steps, batched=not batch_time_steps)
    reference_exports.assert_actions(got, expected, exact, f"{name} {backend} {what}")

  check(data["actions"], "export")
  policy.update_from_checkpoint(checkpoint)            # PolicySaver.save_checkpoint layout
  check(data["checkpoint_actions"], "checkpoint")
  policy.update_from_checkpoint(export)                # PolicySaver.save layout
  check(data["actions"], "save() directory")


def test_tf_agents_own_class_cannot_load_them():
  export, _, _ = reference_exports.reference("tf2_4", "q_mlp")
  with pytest.raises(Exception, match="_TFPTypeSpec"):
    py_tf_eager_policy.SavedModelPyTFEagerPolicy(export, load_specs_from_pbtxt=True)


def test_a_checkpoint_of_another_policy_is_a_clear_error():
  export, _, _ = reference_exports.reference("tf2_4", "q_mlp")
  _, other, _ = reference_exports.reference("tf2_4", "lstm_actor")
  policy = SavedModelPyTFEagerPolicy(export, load_specs_from_pbtxt=True)
  before = policy.variables()[0].numpy().copy()
  with pytest.raises(ValueError, match=f"^cannot restore checkpoint {other}: "):
    policy.update_from_checkpoint(other)
  np.testing.assert_array_equal(policy.variables()[0].numpy(), before)


@pytest.mark.parametrize("backend", ["tf", "lite"])
@pytest.mark.parametrize("name, exact", KINDS)
def test_weights_pushed_into_a_tf_2_4_export_are_followed(name, exact, backend):
  """The checkpoint's values, pushed into variables(), act as the checkpoint does."""
  from tensorflow.python.training import py_checkpoint_reader  # pylint: disable=import-outside-toplevel
  export, checkpoint, data = reference_exports.reference("tf2_4", name)
  policy = SavedModelPyTFEagerPolicy(export, load_specs_from_pbtxt=True, backend=backend)
  reader = py_checkpoint_reader.NewCheckpointReader(checkpoint + "/variables/variables")
  held = policy.variables()
  values = [reader.get_tensor(f"model_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
            for i in range(len(held))]
  for variable, value in zip(held, values):
    variable.assign(value)
  steps = reference_exports.steps(policy, data)
  reference_exports.assert_actions(reference_exports.act(policy, steps),
                                   data["checkpoint_actions"], exact, f"{name} {backend} pushed")
  policy.update_from_checkpoint(export)
  assert policy.variables() is held
  reference_exports.assert_actions(reference_exports.act(policy, steps), data["actions"], exact,
                                   f"{name} {backend} export again")
