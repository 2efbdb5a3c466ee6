"""Storage: every path TensorFlow reads (ram://, PathLike, symlinks), and a standby that needs no disk."""

import contextlib
import io
import os
import pathlib
import shutil
import uuid

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.trajectories import time_step as ts

from policy_runtime.policies import CheckpointFollower, SavedModelPyTFEagerPolicy
from conftest import scaled_checkpoint
from tools.cli import policy_cli
from tools.fixtures import policy_zoo


def _to_ram(local: str, name: str = "") -> str:
  """Copies a local directory tree into TF's in-memory file system."""
  target = f"ram://storage_test/{name or uuid.uuid4().hex}"
  for root, _, files in tf.io.gfile.walk(local):
    relative = os.path.relpath(root, local)
    destination = target if relative == "." else f"{target}/{relative}"
    tf.io.gfile.makedirs(destination)
    for f in files:
      tf.io.gfile.copy(os.path.join(root, f), f"{destination}/{f}", overwrite=True)
  return target


def _lstm_step():
  rng = np.random.default_rng(0)
  return ts.TimeStep(np.int32(1), np.float32(0), np.float32(1),
                     {"position": rng.standard_normal(3).astype(np.float32),
                      "velocity": rng.standard_normal(2).astype(np.float32)})


def _act(policy):
  return policy.action(_lstm_step(), policy.get_initial_state()).action


def test_ram_policy_loads_acts_and_updates_like_a_local_one(saved, tmp_path):
  fixture = saved("lstm_actor")
  local = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  ram = SavedModelPyTFEagerPolicy(_to_ram(fixture.path), load_specs_from_pbtxt=True)
  np.testing.assert_array_equal(_act(ram), _act(local))
  assert ram.get_train_step() == 42 and ram.get_metadata()["version"] == 3

  checkpoint = scaled_checkpoint(fixture, str(tmp_path / "c_0000000009"), -1.5)
  local.update_from_checkpoint(checkpoint)
  ram.update_from_checkpoint(_to_ram(checkpoint, "c_0000000009"))
  np.testing.assert_array_equal(_act(ram), _act(local))
  assert ram.get_train_step_from_last_restored_checkpoint_path() == 9


def test_missing_ram_paths_are_file_not_found_errors(saved):
  with pytest.raises(FileNotFoundError, match="policy directory not found: ram://nowhere/pol"):
    SavedModelPyTFEagerPolicy("ram://nowhere/pol", load_specs_from_pbtxt=True)
  policy = SavedModelPyTFEagerPolicy(_to_ram(saved("q_mlp").path), load_specs_from_pbtxt=True)
  with pytest.raises(FileNotFoundError, match="checkpoint directory not found: ram://nowhere/c"):
    policy.update_from_checkpoint("ram://nowhere/c")


def test_follower_lists_and_applies_ram_checkpoints(saved, tmp_path):
  fixture = saved("lstm_actor")
  learner = f"ram://storage_test/learner-{uuid.uuid4().hex}"
  for step, scale in ((10, 0.5), (20, 0.7)):
    local = scaled_checkpoint(fixture, str(tmp_path / f"policy_checkpoint_{step:010d}"), scale)
    _to_ram(local, learner[len("ram://storage_test/"):] + f"/policy_checkpoint_{step:010d}")
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  follower = CheckpointFollower(policy, learner)
  assert [s for s, _ in follower.candidates()] == [20, 10]
  assert follower.poll() == f"{learner}/policy_checkpoint_0000000020"
  reference = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  reference.update_from_checkpoint(str(tmp_path / "policy_checkpoint_0000000020"))
  np.testing.assert_array_equal(_act(policy), _act(reference))


def test_follower_notices_a_rewritten_ram_checkpoint(saved, tmp_path):
  fixture = saved("lstm_actor")
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  learner = f"ram://storage_test/learner-{uuid.uuid4().hex}"
  bad = scaled_checkpoint(fixture, str(tmp_path / "bad" / "policy_checkpoint_0000000005"), 2.0)
  index = os.path.join(bad, "variables", "variables.index")
  good_index = open(index, "rb").read()
  open(index, "wb").write(os.urandom(len(good_index)))   # same size, broken
  name = learner[len("ram://storage_test/"):] + "/policy_checkpoint_0000000005"
  _to_ram(bad, name)
  follower = CheckpointFollower(policy, learner)
  assert follower.poll() is None                          # broken: skipped
  open(index, "wb").write(good_index)                     # rewritten, same size (ram:// has no mtime)
  tf.io.gfile.rmtree(f"{learner}/policy_checkpoint_0000000005")  # ram:// appends on overwrite
  _to_ram(bad, name)
  assert follower.poll() == f"{learner}/policy_checkpoint_0000000005"


def test_cli_inspects_a_ram_policy(saved):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert policy_cli.main(["inspect", _to_ram(saved("q_mlp").path)]) == 0
  assert "observation: float32[4]" in out.getvalue() and "train step: 42" in out.getvalue()


def test_pathlike_and_symlinked_directories(saved, tmp_path):
  fixture = saved("q_mlp")
  link = tmp_path / "link"
  os.symlink(fixture.path, link)
  step = ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), np.ones(4, np.float32))
  expected = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True).action(step).action
  for path in (pathlib.Path(fixture.path), str(link), link):
    policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
    np.testing.assert_array_equal(policy.action(step).action, expected)
  checkpoint = scaled_checkpoint(fixture, str(tmp_path / "c_0000000003"), 2.0)
  os.symlink(checkpoint, tmp_path / "linked_0000000003")
  policy.update_from_checkpoint(pathlib.Path(tmp_path / "linked_0000000003"))
  assert policy.get_train_step_from_last_restored_checkpoint_path() == 3


def _loaded_then_replaced(fixture, tmp_path, replace, scale):
  """A policy loaded from a copy of `fixture` that `replace(path)` then changes on disk;
  it and a reference are updated to the fixture's weights times `scale`."""
  path = str(tmp_path / "model")
  shutil.copytree(fixture.path, path)
  policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  shutil.rmtree(path)
  replace(path)
  checkpoint = scaled_checkpoint(fixture, str(tmp_path / "c_0000000004"), scale)
  policy.update_from_checkpoint(checkpoint)
  reference = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  reference.update_from_checkpoint(checkpoint)
  return policy, reference


def test_updates_work_after_the_model_directory_is_deleted(saved, tmp_path):
  policy, reference = _loaded_then_replaced(saved("lstm_actor"), tmp_path, lambda path: None, -0.5)
  np.testing.assert_array_equal(_act(policy), _act(reference))


def test_updates_keep_the_loaded_graph_after_the_directory_is_overwritten(saved, tmp_path):
  # Another export with the same specs but another graph (and other weights).
  policy, reference = _loaded_then_replaced(
      saved("q_mlp"), tmp_path,
      lambda path: policy_zoo.save(policy_zoo.q_mlp_policy(fc=(8,), seed=5), path), -1.0)
  steps = [ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), o)
           for o in np.random.default_rng(1).standard_normal((32, 4)).astype(np.float32)]
  assert [int(policy.action(s).action) for s in steps] == [int(reference.action(s).action)
                                                           for s in steps]
  assert policy.fingerprint == reference.fingerprint
