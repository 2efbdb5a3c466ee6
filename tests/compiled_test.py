"""Compiled policies: compile_policy, CompiledPolicy against backend="lite", the format's checks."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.drivers import py_driver
from tf_agents.environments import suite_gym
from tf_agents.metrics import py_metrics
from tf_agents.specs import array_spec

import reference_exports
from bad_inputs import BAD_CALLS, lstm_step
from conftest import run_threads, scaled_checkpoint
from policy_runtime.policies import DynamicBatchingPolicy, SavedModelPyTFEagerPolicy, compile_policy
from policy_runtime.policies import CompiledFollower, compiled, compiled_tf_agents
from policy_runtime.policies.runtime import compiled_format
from policy_runtime.policies.engines import lite_validation
from tools.cli import policy_cli

DEFAULT_POLICY = policy_cli.DEFAULT_POLICY
_DETERMINISTIC = ("q_mlp", "q_8_leaves", "lstm_actor", "q_fixed_batch")
_SAMPLED = ("q_sampling", "epsilon_greedy", "ppo_categorical", "gaussian_actor", "lstm_stochastic",
            "ppo_collect", "random")


@pytest.fixture(scope="module")
def compiled_dir(saved, tmp_path_factory):
  """`compiled_dir(name)`: the fixture compiled once per module."""
  root = tmp_path_factory.mktemp("compiled")
  cache = {}

  def get(name: str) -> str:
    if name not in cache:
      cache[name] = str(root / name)
      compile_policy(saved(name).path, cache[name])
    return cache[name]

  return get


def _lite(saved, name, batch_time_steps=True):
  return SavedModelPyTFEagerPolicy(saved(name).path, load_specs_from_pbtxt=True,
                                   batch_time_steps=batch_time_steps, backend="lite")


def _inputs(policy, batch, rng):
  outer = () if batch is None else (batch,)
  step = array_spec.sample_spec_nest(policy.time_step_spec, rng, outer_dims=outer)
  step = step._replace(observation=tf.nest.map_structure(
      lambda o: np.clip(o, -10, 10).astype(o.dtype), step.observation))
  return step, policy.get_initial_state(1 if batch is None else batch)


def _assert_close(got, want):
  for g, w in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
    assert g.dtype == w.dtype and g.shape == w.shape
    if np.issubdtype(g.dtype, np.floating):
      np.testing.assert_allclose(g, w, rtol=lite_validation.FLOAT_RTOL,
                                 atol=lite_validation.FLOAT_ATOL)
    else:
      np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("batch_time_steps", [True, False])
@pytest.mark.parametrize("name", _DETERMINISTIC)
def test_compiled_acts_like_lite(saved, compiled_dir, name, batch_time_steps):
  fixed = saved(name).batch_size
  if batch_time_steps and fixed:
    with pytest.raises(ValueError, match="fixed batch size of 4"):
      compiled.CompiledPolicy(compiled_dir(name), batch_time_steps=True)
    return
  lite = _lite(saved, name, batch_time_steps)
  policy = compiled.CompiledPolicy(compiled_dir(name), batch_time_steps=batch_time_steps)
  rng = np.random.RandomState(1)
  for _ in range(20):
    step, state = _inputs(lite, None if batch_time_steps else (fixed or 5), rng)
    got, want = policy.action(step, state), lite.action(step, state)
    assert type(got).__name__ == "PolicyStep" and got._fields == ("action", "state", "info")
    _assert_close(got, want)
  assert policy.get_train_step() == lite.get_train_step() == 42
  assert policy.get_metadata().keys() == lite.get_metadata().keys()
  for key, value in lite.get_metadata().items():
    np.testing.assert_array_equal(policy.get_metadata()[key], value)
  batch = fixed or 3
  _assert_close(policy.get_initial_state(batch), lite.get_initial_state(batch))


def test_lstm_state_carried_over_20_steps_matches_lite(saved, compiled_dir):
  lite = _lite(saved, "lstm_actor")
  policy = compiled.CompiledPolicy(compiled_dir("lstm_actor"))
  rng = np.random.default_rng(3)
  mine, theirs = policy.get_initial_state(), lite.get_initial_state()
  for _ in range(20):
    step = lstm_step(rng)
    got, want = policy.action(step, mine), lite.action(step, theirs)
    _assert_close(got, want)
    mine, theirs = got.state, want.state
  assert np.abs(mine[0]).sum() > 0


@pytest.mark.parametrize("name", _SAMPLED)
def test_sampled_outputs_follow_lites_distribution(saved, compiled_dir, name):
  lite = _lite(saved, name, batch_time_steps=False)
  policy = compiled.CompiledPolicy(compiled_dir(name), batch_time_steps=False)
  report = policy.report["validation"]
  assert any(o["kind"] == "sampled" for o in report["outputs"])
  step, state = _inputs(lite, None, np.random.RandomState(2))
  draws = 4000
  steps, states = lite_validation.copies(step, tf.nest.map_structure(lambda s: s[:1], state), draws)
  got, want = policy.action(steps, states), lite.action(steps, states)
  paths = lite_validation.leaf_paths(want)
  bounds = lite_validation.action_bounds(lite.action_spec)
  sampled = {o["path"] for o in report["outputs"] if o["kind"] == "sampled"}
  for path, g, w in zip(paths, tf.nest.flatten(got), tf.nest.flatten(want)):
    if path in sampled:
      lite_validation.compare_distributions(path, [w], [g], bounds.get(path), tests=len(paths))
    else:
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="per-call seed cannot be applied"):
    policy.action(steps, states, seed=1)
  # One unbatched step: TF's dtypes and shapes, within the action spec.
  single, lite_single = compiled.CompiledPolicy(compiled_dir(name)), _lite(saved, name)
  got = single.action(step, single.get_initial_state())
  want = lite_single.action(step, lite_single.get_initial_state())
  for path, g, w in zip(paths, tf.nest.flatten(got), tf.nest.flatten(want)):
    assert g.dtype == w.dtype and g.shape == w.shape, path
    lite_validation.check_bounds(path, g, bounds)


@pytest.mark.parametrize("tf_version", ["tf2_4", "tf2_21"])
@pytest.mark.parametrize("name", ["q_mlp", "lstm_actor"])
def test_exports_of_other_tensorflow_versions_compile(tmp_path, tf_version, name):
  export, checkpoint, data = reference_exports.reference(tf_version, name)
  out = compile_policy(export, str(tmp_path / "compiled")).path
  lite = SavedModelPyTFEagerPolicy(export, load_specs_from_pbtxt=True, backend="lite")
  policy = compiled.CompiledPolicy(out)
  steps = reference_exports.steps(lite, data)
  want = reference_exports.act(lite, steps)
  reference_exports.assert_actions(reference_exports.act(policy, steps), want,
                                   exact=want.dtype.kind in "iu")
  # ... and with a checkpoint of that era.
  out = compile_policy(export, str(tmp_path / "with_checkpoint"), checkpoint=checkpoint).path
  lite.update_from_checkpoint(checkpoint)
  reference_exports.assert_actions(
      reference_exports.act(compiled.CompiledPolicy(out), steps), reference_exports.act(lite, steps),
      exact=want.dtype.kind in "iu")


def test_compiling_a_checkpoint_uses_its_weights(saved, tmp_path):
  fixture = saved("lstm_actor")
  checkpoint = scaled_checkpoint(fixture, str(tmp_path / "checkpoint_0000007"), 1.7)
  out = str(tmp_path / "compiled_7")
  result = compile_policy(fixture.path, out, checkpoint=checkpoint)
  lite = _lite(saved, "lstm_actor")
  lite.update_from_checkpoint(checkpoint)
  policy = compiled.CompiledPolicy(out)
  assert result.report["source"]["checkpoint"] == checkpoint
  step, state = lstm_step(), policy.get_initial_state()
  _assert_close(policy.action(step, state), lite.action(step, state))
  original = compiled.CompiledPolicy(compile_policy(fixture.path, str(tmp_path / "c0")).path)
  assert not np.allclose(original.action(step, state).state[0], policy.action(step, state).state[0])


@pytest.mark.parametrize("name,mutate,error,pattern", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_gives_the_same_error_as_the_saved_model_policy(saved, compiled_dir, name, mutate,
                                                                  error, pattern):
  policy = compiled.CompiledPolicy(compiled_dir("lstm_actor"))
  reference = _lite(saved, "lstm_actor")
  good, state = lstm_step(), policy.get_initial_state()
  expected = policy.action(good, state).action.copy()
  with pytest.raises(error) as mine:
    policy.action(*mutate(good, state))
  with pytest.raises(error) as theirs:
    reference.action(*mutate(good, state))
  first_line = str(mine.value).splitlines()[0]
  assert re.search(pattern, first_line), first_line
  assert str(mine.value) == str(theirs.value)
  np.testing.assert_array_equal(policy.action(good, state).action, expected)


# -- The format's checks -----------------------------------------------------------------

def _copy(compiled_dir, tmp_path, name="q_mlp"):
  target = tmp_path / "copy"
  shutil.copytree(compiled_dir(name), target)
  return str(target)


def _rewrite_manifest(directory):
  files = {name: open(os.path.join(directory, name), "rb").read()
           for name in compiled_format.FILES}
  with open(os.path.join(directory, compiled_format.MANIFEST), "wb") as f:
    f.write(compiled_format.manifest_bytes(files))


def _truncate(path):
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])


def _flip(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _set_manifest(directory, **fields):
  path = os.path.join(directory, compiled_format.MANIFEST)
  manifest = json.load(open(path))
  manifest.update(fields)
  json.dump(manifest, open(path, "w"))


_DAMAGE = [
    ("no manifest", lambda d: os.remove(os.path.join(d, "manifest.json")),
     r"manifest\.json: missing; not a compiled policy, or one still being written"),
    ("truncated flatbuffer", lambda d: _truncate(os.path.join(d, "action.tflite")),
     r"action\.tflite: expected \d+ bytes \(manifest\), got \d+: truncated"),
    ("corrupt flatbuffer", lambda d: _flip(os.path.join(d, "action.tflite")),
     r"action\.tflite: SHA-256 does not match the manifest"),
    ("corrupt values", lambda d: _flip(os.path.join(d, "values.npz")),
     r"values\.npz: SHA-256 does not match the manifest"),
    ("missing policy.json", lambda d: os.remove(os.path.join(d, "policy.json")),
     r"policy\.json: missing from the compiled policy"),
    ("foreign manifest", lambda d: _set_manifest(d, format="someone.else"),
     r"manifest\.json: expected format 'policy_runtime\.compiled_policy', got 'someone\.else'"),
    ("newer format", lambda d: _set_manifest(d, version=2),
     r"manifest\.json: format version 2 is newer than this library reads \(up to 1\)"),
    ("manifest not JSON", lambda d: open(os.path.join(d, "manifest.json"), "w").write("{"),
     r"manifest\.json: not valid JSON"),
    ("policy.json edited with a matching manifest",
     lambda d: (open(os.path.join(d, "policy.json"), "w").write('{"specs": {}}'),
                _rewrite_manifest(d)),
     r"policy\.json: signature: expected an object, got None"),
]


@pytest.mark.parametrize("what,damage,pattern", _DAMAGE, ids=[d[0] for d in _DAMAGE])
def test_a_damaged_directory_is_refused_naming_the_file(compiled_dir, tmp_path, what, damage,
                                                        pattern):
  directory = _copy(compiled_dir, tmp_path)
  damage(directory)
  with pytest.raises(ValueError) as info:
    compiled.CompiledPolicy(directory)
  first_line = str(info.value).splitlines()[0]
  assert re.search(pattern, first_line), first_line
  assert directory in first_line


def test_values_that_do_not_fit_the_specs_are_refused(compiled_dir, tmp_path):
  directory = _copy(compiled_dir, tmp_path, "lstm_actor")
  path = os.path.join(directory, "values.npz")
  values = dict(np.load(path))
  values["initial_state_1"] = np.zeros((1, 3), np.float64)
  with open(path, "wb") as f:
    f.write(compiled_format.values_bytes(values))
  _rewrite_manifest(directory)
  with pytest.raises(ValueError, match=r"values\.npz: initial_state_1: expected float32\[1, 16\], "
                                       r"got float64\[1, 3\]"):
    compiled.CompiledPolicy(directory)


def test_initial_state_keeps_the_specs_nest(compiled_dir, saved):
  policy = compiled.CompiledPolicy(compiled_dir("lstm_actor"), batch_time_steps=False)
  lite = _lite(saved, "lstm_actor", batch_time_steps=False)
  _assert_close(policy.get_initial_state(7), lite.get_initial_state(7))
  with pytest.raises(ValueError, match="pass batch_size"):
    policy.get_initial_state()


def test_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="compiled policy directory not found"):
    compiled.CompiledPolicy(str(tmp_path / "nowhere"))


def test_a_model_with_a_custom_op_is_refused_before_it_runs(compiled_dir, tmp_path):
  import flatbuffers  # pylint: disable=import-outside-toplevel
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
  directory = _copy(compiled_dir, tmp_path)
  path = os.path.join(directory, "action.tflite")
  model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(open(path, "rb").read(), 0))
  code = model.operatorCodes[0]
  code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
  code.customCode = "MyEvilOp"
  builder = flatbuffers.Builder(1024)
  builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
  open(path, "wb").write(bytes(builder.Output()))
  _rewrite_manifest(directory)
  with pytest.raises(ValueError, match=r"action\.tflite: uses operators outside LiteRT's "
                                       r"builtins, which compiled policies do not run: MyEvilOp"):
    compiled.CompiledPolicy(directory)


def test_compile_refuses_a_non_empty_output_and_leaves_no_partial_directory(saved, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="exists and is not empty"):
    compile_policy(saved("q_mlp").path, str(out))
  assert sorted(os.listdir(out)) == ["keep.txt"]
  with pytest.raises(ValueError, match="no LiteRT builtin for: Cumprod"):
    compile_policy(saved("cumprod").path, str(tmp_path / "cumprod"))
  assert sorted(os.listdir(tmp_path)) == ["out"]


# -- Updates ----------------------------------------------------------------------------

def test_update_under_8_threads_is_atomic_and_a_failed_update_changes_nothing(saved, tmp_path):
  fixture = saved("lstm_actor")
  dirs = [compile_policy(fixture.path, str(tmp_path / "c0")).path]
  checkpoint = scaled_checkpoint(fixture, str(tmp_path / "ckpt"), 1.5)
  dirs.append(compile_policy(fixture.path, str(tmp_path / "c1"), checkpoint=checkpoint).path)
  policy = compiled.CompiledPolicy(dirs[0])
  step, state = lstm_step(), policy.get_initial_state()
  expected = []
  for d in dirs:
    policy.update(d)
    expected.append(policy.action(step, state))
  assert not np.allclose(expected[0].state[0], expected[1].state[0])

  def same(got, want):
    return all(np.array_equal(g, w) for g, w in zip(tf.nest.flatten(got), tf.nest.flatten(want)))

  stop = []
  mixed = []

  def act(_):
    while not stop:
      got = policy.action(step, state)
      if not (same(got, expected[0]) or same(got, expected[1])):
        mixed.append(got)

  import threading  # pylint: disable=import-outside-toplevel
  workers = [threading.Thread(target=act, args=(i,)) for i in range(8)]
  for t in workers:
    t.start()
  try:
    for k in range(40):
      policy.update(dirs[k % 2])
  finally:
    stop.append(True)
    for t in workers:
      t.join()
  assert not mixed
  policy.update(dirs[1])
  broken = shutil.copytree(dirs[0], str(tmp_path / "broken"))
  _truncate(os.path.join(broken, "action.tflite"))
  with pytest.raises(ValueError, match="truncated"):
    policy.update(broken)
  other = compile_policy(saved("q_mlp").path, str(tmp_path / "other")).path
  with pytest.raises(ValueError, match=r"policy\.json: its specs differ from this policy's"):
    policy.update(other)
  assert same(policy.action(step, state), expected[1])
  assert policy.path == dirs[1]


# -- Around it ---------------------------------------------------------------------------

def test_tf_agents_driver_and_metric_take_the_adapter(tmp_path):
  out = compile_policy(DEFAULT_POLICY, str(tmp_path / "cartpole")).path
  policy = compiled_tf_agents.as_py_policy(compiled.CompiledPolicy(out))
  env = suite_gym.load("CartPole-v0")
  metric = py_metrics.AverageReturnMetric()
  driver = py_driver.PyDriver(env, policy, observers=[metric], max_episodes=3)
  driver.run(env.reset())
  assert metric.result() > 100   # the trained default policy; a random one gets about 22
  assert policy.time_step_spec == env.time_step_spec()


def test_dynamic_batching_over_a_compiled_policy(saved, compiled_dir):
  policy = compiled.CompiledPolicy(compiled_dir("lstm_actor"), batch_time_steps=False)
  serial = compiled.CompiledPolicy(compiled_dir("lstm_actor"))
  rng = np.random.default_rng(5)
  steps = [lstm_step(rng) for _ in range(16)]
  want = [serial.action(s, serial.get_initial_state()) for s in steps]
  got = [None] * 16
  with DynamicBatchingPolicy(policy, max_batch_size=16, max_wait_us=100_000) as batched:
    def act(i):
      got[i] = batched.action(steps[i], batched.get_initial_state())
    assert not run_threads(16, act)
    assert batched.batches < 16
  for g, w in zip(got, want):
    _assert_close(g, w)


_TF_FREE = """
import sys
import numpy as np
from policy_runtime.policies import compiled
policy = compiled.CompiledPolicy({path!r})
spec = policy.time_step_spec
step = type(spec)(*[np.zeros(s.shape, s.dtype) for s in spec])
print(int(policy.action(step).action))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_agents")))
"""


def test_acting_imports_neither_tensorflow_nor_tf_agents(tmp_path):
  out = compile_policy(DEFAULT_POLICY, str(tmp_path / "cartpole")).path
  result = subprocess.run([sys.executable, "-c", _TF_FREE.format(path=out)], capture_output=True,
                          text=True, env=dict(os.environ), timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  action, modules = result.stdout.strip().splitlines()[-2:]
  assert action in ("0", "1")
  assert modules == "[]"


def test_cli_runs_a_compiled_directory(tmp_path, capsys):
  out = compile_policy(DEFAULT_POLICY, str(tmp_path / "cartpole")).path
  summary = policy_cli.run(out, None, episodes=2, seed=0)
  assert summary["policy_return"] == 200.0


def test_cli_compile(tmp_path, capsys):
  out = str(tmp_path / "cli")
  assert policy_cli.main(["compile", DEFAULT_POLICY, out]) == 0
  printed = capsys.readouterr().out
  assert f"-> {out}" in printed and "action: deterministic, max abs difference (exact) 0 (threshold 0)" in printed
  assert compiled_format.is_compiled(out)
  assert policy_cli.main(["compile", DEFAULT_POLICY, out]) == 1
  assert "exists and is not empty" in capsys.readouterr().err


def test_follower_applies_the_newest_good_compiled_checkpoint_and_never_goes_back(saved,
                                                                                  tmp_path):
  fixture = saved("lstm_actor")
  published = tmp_path / "published"
  published.mkdir()

  def publish(step, scale):
    checkpoint = scaled_checkpoint(fixture, str(tmp_path / f"ckpt_{step}"), scale)
    return compile_policy(fixture.path, str(published / f"compiled_{step:010d}"),
                          checkpoint=checkpoint).path

  first = publish(1, 1.0)
  policy = compiled.CompiledPolicy(first)
  follower = CompiledFollower(policy, str(published))
  assert follower.poll() == first and follower.current_step == 1
  second = publish(2, 1.3)
  half_written = published / "compiled_0000000009"
  shutil.copytree(second, half_written)
  os.remove(half_written / "manifest.json")       # still being written
  broken = shutil.copytree(second, str(published / "compiled_0000000005"))
  _truncate(os.path.join(broken, "values.npz"))   # checks fail
  assert follower.poll() == second and follower.current_step == 2
  assert policy.path == second
  assert follower.poll() is None                  # nothing newer that works
  shutil.copytree(first, str(published / "compiled_0000000000"))
  assert follower.poll() is None and policy.path == second   # never back
  _rewrite_manifest(str(half_written))            # finished now
  assert follower.poll() == str(half_written)
