"""What differs between the stacks: Keras, protobuf, and exports saved by another TensorFlow.

Every case runs on both stacks (`stack_test` on TF 2.15, `stack_test_py313`
on TF 2.21), so an export saved by TF 2.21 is loaded by TF 2.15 and the
embedded TF 2.15 export by TF 2.21.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import struct_pb2
from tf_agents.policies import py_tf_eager_policy
from tf_agents.trajectories import time_step as ts

import reference_exports
from policy_runtime.policies import SavedModelPyTFEagerPolicy
from policy_runtime.policies.saved_model import compat
from tools.cli import policy_cli

REPO = os.path.dirname(os.path.dirname(policy_cli.__file__))


@pytest.mark.parametrize("backend", ["tf", "lite"])
def test_a_tf_2_21_export_acts_as_tf_2_21_did(backend):
  """Greedy Q actions exactly; the LSTM's continuous actions within float tolerance."""
  for name, exact in (("q_mlp", True), ("lstm_actor", False)):
    export, checkpoint, data = reference_exports.reference("tf2_21", name)
    policy = SavedModelPyTFEagerPolicy(export, load_specs_from_pbtxt=True, backend=backend)
    assert policy.backend == backend and policy.load_mode == "object graph"
    assert policy.get_train_step() == 21
    assert policy.get_metadata()["tf_version"].item().decode() == str(data["tf_version"])
    steps = reference_exports.steps(policy, data)
    for weights, expected in ((None, data["actions"]), (checkpoint, data["checkpoint_actions"])):
      if weights:
        policy.update_from_checkpoint(weights)
      reference_exports.assert_actions(reference_exports.act(policy, steps), expected, exact,
                                       f"{name} {weights}")


def test_a_tf_2_21_export_matches_tf_agents_here():
  for name in ("q_mlp", "lstm_actor"):
    export, _, data = reference_exports.reference("tf2_21", name)
    ours = SavedModelPyTFEagerPolicy(export, load_specs_from_pbtxt=True)
    theirs = py_tf_eager_policy.SavedModelPyTFEagerPolicy(export, load_specs_from_pbtxt=True)
    steps = reference_exports.steps(ours, data)
    state = theirs.get_initial_state(batch_size=1)
    expected = []
    for step in steps:
      out = theirs.action(step, state)
      state = out.state
      expected.append(out.action)
    np.testing.assert_array_equal(reference_exports.act(ours, steps), np.stack(expected),
                                  err_msg=name)


@pytest.mark.parametrize("backend", ["tf", "lite"])
def test_the_embedded_tf_2_15_export_matches_tf_agents(backend):
  ours = SavedModelPyTFEagerPolicy(policy_cli.DEFAULT_POLICY, load_specs_from_pbtxt=True,
                                   backend=backend)
  theirs = py_tf_eager_policy.SavedModelPyTFEagerPolicy(policy_cli.DEFAULT_POLICY,
                                                        load_specs_from_pbtxt=True)
  rng = np.random.default_rng(4)
  for _ in range(200):
    step = ts.restart((rng.normal(size=4) * [1, 2, 0.2, 2]).astype(np.float32))
    assert ours.action(step).action == theirs.action(step).action


_KERAS_3_BESIDE_THE_LIBRARY = """
import json, os
import numpy as np
import keras
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
from policy_runtime.policies import SavedModelPyTFEagerPolicy
from tf_agents.trajectories import time_step as ts
from tools.cli import policy_cli
policy = SavedModelPyTFEagerPolicy(policy_cli.DEFAULT_POLICY, load_specs_from_pbtxt=True)
action = policy.action(ts.restart(np.zeros(4, np.float32))).action
import tensorflow as tf
print(json.dumps({
    "keras": keras.__version__, "legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"),
    "action": int(action), "model_outputs": int(model(np.zeros((1, 4), np.float32)).shape[1]),
    "tf_keras_is_keras": tf.keras.layers.Dense is keras.layers.Dense}))
"""


def test_the_library_leaves_keras_as_the_user_has_it():
  """The user's Keras (3 on TF 2.21) keeps working and the library never sets TF_USE_LEGACY_KERAS."""
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  process = subprocess.run([sys.executable, "-c", _KERAS_3_BESIDE_THE_LIBRARY], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
  assert process.returncode == 0, process.stderr[-3000:]
  report = json.loads(process.stdout.strip().splitlines()[-1])
  assert report["legacy_keras"] is None
  assert report["model_outputs"] == 3 and report["action"] in (0, 1)
  if tuple(int(x) for x in tf.__version__.split(".")[:2]) >= (2, 16):
    assert report["keras"].startswith("3.") and report["tf_keras_is_keras"]


def test_repeated_protobuf_fields_are_told_apart_on_this_protobuf():
  fields = struct_pb2.StructuredValue.DESCRIPTOR.fields_by_name
  assert not compat.is_repeated(fields["list_value"])
  assert compat.is_repeated(struct_pb2.ListValue.DESCRIPTOR.fields_by_name["values"])
  assert compat.is_repeated(struct_pb2.DictValue.DESCRIPTOR.fields_by_name["fields"])
