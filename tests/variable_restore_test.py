"""Restores by reading and assigning (policies/saved_model/variable_restore.py), with TF's semantics.

TF's object-based restore keeps about 38 KB an update (update_memory_test.py);
ours matches the checkpoint's object graph once and assigns. The values must
be exactly TF's restore's, on every checkpoint layout PolicySaver writes, and
anything outside the plain match must still end where TF's restore does.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.training import py_checkpoint_reader

from policy_runtime.policies import SavedModelPyTFEagerPolicy
from policy_runtime.policies.saved_model import variable_restore
from tools.fixtures import policy_zoo


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  """An MLP Q export and a `save_checkpoint` of it with its weights scaled by -2."""
  root = tmp_path_factory.mktemp("restore")
  policy = policy_zoo.q_mlp_policy()
  saver = policy_zoo.save(policy, str(root / "export"), train_step=3)
  for v in policy.variables():
    v.assign(v * -2)
  saver.save_checkpoint(str(root / "checkpoint"))
  return str(root / "export"), str(root / "checkpoint"), policy


def _prefix(checkpoint):
  return os.path.join(checkpoint, "variables", "variables")


def _values(variables):
  return [v.numpy() for v in variables]


@pytest.mark.parametrize("layout", ["save_checkpoint", "saved_model_variables"])
def test_restore_assigns_what_tf_restore_assigns(export, layout):
  path, checkpoint, _ = export
  prefix = _prefix(checkpoint) if layout == "save_checkpoint" else _prefix(path)
  ours, theirs = tf.saved_model.load(path), tf.saved_model.load(path)
  for v in ours.model_variables:
    v.assign(tf.zeros_like(v))
  nested = layout == "save_checkpoint"
  restorer = variable_restore.VariableRestorer(ours, {"policy": ours} if nested else None)
  assert restorer.restore(py_checkpoint_reader.NewCheckpointReader(prefix))
  checkpoint_object = (tf.train.Checkpoint(policy=theirs) if nested else
                       tf.train.Checkpoint(root=theirs))
  checkpoint_object.read(prefix).assert_existing_objects_matched().expect_partial()
  for a, b in zip(_values(variable_restore.reachable_variables(ours)),
                  _values(variable_restore.reachable_variables(theirs))):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, 0 * a) for a in _values(ours.model_variables))


def test_a_checkpoint_of_other_shapes_is_refused_naming_the_key(export, tmp_path):
  path, _, _ = export
  other = policy_zoo.q_mlp_policy(fc=(32, 32))   # the same graph, other shapes
  saver = policy_zoo.make_saver(other)
  saver.save_checkpoint(str(tmp_path / "other"))
  policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  before = _values(policy.variables())
  with pytest.raises(ValueError, match=r"/.ATTRIBUTES/VARIABLE_VALUE: expected float32\[4, 64\], "
                                       r"got float32\[4, 32\]"):
    policy.update_from_checkpoint(str(tmp_path / "other"))
  for a, b in zip(before, _values(policy.variables())):
    np.testing.assert_array_equal(a, b)


def test_a_checkpoint_without_a_value_for_a_variable_is_left_to_tf_restore(export, tmp_path):
  """Not the plain match: ours assigns nothing, and TF's restore raises as it always did."""
  path, _, _ = export
  saved = tf.saved_model.load(path)
  prefix = str(tmp_path / "partial" / "ckpt")
  tf.train.Checkpoint(model_variables=saved.model_variables[:1]).write(prefix)
  restorer = variable_restore.VariableRestorer(saved)
  before = _values(variable_restore.reachable_variables(saved))
  assert not restorer.restore(py_checkpoint_reader.NewCheckpointReader(prefix))
  for a, b in zip(before, _values(variable_restore.reachable_variables(saved))):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(AssertionError):
    tf.train.Checkpoint(root=saved).read(prefix).assert_existing_objects_matched()


def test_updates_from_either_layout_act_like_the_checkpoint(export, tmp_path):
  path, checkpoint, trained = export
  policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  policy.update_from_checkpoint(checkpoint)
  for a, b in zip(_values(policy.variables()), _values(trained.variables())):
    np.testing.assert_array_equal(a, b)
  policy.update_from_checkpoint(path)     # the export's own variables/
  for a, b in zip(_values(policy.variables()), _values(trained.variables())):
    np.testing.assert_array_equal(a, -0.5 * b)
