"""TF-Agents' agent families on LiteRT: what validation once refused falsely now loads, and wrong
models are still refused.

Each policy comes from TF-Agents' own agent class (`tools/fixtures/policy_zoo.py`), trained a
few steps for the families' exports (the mutations' pairs are untrained alike). The
classes of false refusal fixed here: uint8 frames bounded [0, 255] (Atari);
noise drawn once per call and shared across the batch (TD3); randomness
through variable state (DDPG's Ornstein-Uhlenbeck noise); samples outside the
action bounds in TF too (PPO's collect policies, clip=False); outputs mixing a
deterministic part with random draws (bandits' predicted rewards). For each,
a wrong LiteRT model (converted from a mutated policy) validated against the
right policy's TF function must be refused, naming the output.
"""

import os

import numpy as np
import pytest
from tf_agents.policies import py_tf_eager_policy
from tf_agents.trajectories import time_step as ts

from conftest import SavedPolicy, scaled_checkpoint, spec_inputs
from policy_runtime.policies import SavedModelPyTFEagerPolicy
from policy_runtime.policies.runtime import lite_model
from policy_runtime.policies.engines import lite_validation
from tools.fixtures import policy_zoo

FAMILIES = {
    "td3_collect": policy_zoo.td3_collect_policy,
    "ddpg_collect": policy_zoo.ddpg_collect_policy,
    "ppo_clip_collect": policy_zoo.ppo_clip_collect_policy,
    "bandit_epsilon_greedy": policy_zoo.bandit_epsilon_greedy_policy,
}

# The right models of mutations that are not in FAMILIES (untrained, as the mutated ones are,
# so the mutation is the only difference).
RIGHT = {"dqn_action_mask": policy_zoo.masked_dqn_policy,
         "gaussian_clipped": policy_zoo.gaussian_actor_policy}

# (family, mutated builder, what the refusal says)
MUTATIONS = [
    ("td3_collect", lambda: policy_zoo.td3_collect_policy(noise_std=0.15),
     r"action\[\d\]: LiteRT samples from another distribution than TF: Kolmogorov-Smirnov"),
    ("ddpg_collect", lambda: policy_zoo.ddpg_collect_policy(ou_damping=0.3),
     r"action\[\d\]: LiteRT's draws over consecutive calls are correlated unlike TF's"),
    ("ppo_clip_collect", lambda: policy_zoo.ppo_clip_collect_policy(scale=1.5),
     # its distribution parameters (info) give it away before its samples do
     r"info/dist_params/loc: LiteRT differs from TF by up to"),
    # TF never samples outside the bounds (clip=True); the wrong model does (clip=False).
    ("gaussian_clipped", lambda: policy_zoo.gaussian_actor_policy(clip=False),
     r"action: LiteRT sampled a value outside \[-1.0, 1.0\]"),
    ("dqn_action_mask", lambda: policy_zoo.masked_dqn_policy(ignore_mask=True),
     r"action: LiteRT gives"),
    ("bandit_epsilon_greedy", lambda: policy_zoo.bandit_epsilon_greedy_policy(epsilon=0.2),
     r"action: LiteRT samples from another distribution than TF: total variation"),
    ("bandit_epsilon_greedy", lambda: policy_zoo.bandit_epsilon_greedy_policy(reward_shift=1e-3),
     r"info/predicted_rewards_mean(\[\d\])?: LiteRT samples from another distribution than TF: "
     r"Kolmogorov-Smirnov"),
]


ZOO = policy_zoo.agent_family_policies()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  root = tmp_path_factory.mktemp("agents")
  made = {}

  def get(name, build=None):
    if name not in made:
      path = os.path.join(root, name.replace("/", "__"))
      policy = (build or ZOO.get(name) or FAMILIES[name])()
      made[name] = SavedPolicy(name, path, policy, policy_zoo.save(policy, path), False)
    return made[name].path

  get.saved = made
  return get


def _load(path, **kwargs):
  return SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, **kwargs)


@pytest.mark.parametrize("batch_time_steps", [True, False])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_family_loads_on_lite(exports, family, batch_time_steps):
  policy = _load(exports(family), backend="lite", batch_time_steps=batch_time_steps)
  assert policy.backend == "lite"
  report = policy.lite_validation
  assert any(o.kind == "sampled" for o in report.outputs)
  for check in report.outputs:
    assert check.figure <= check.threshold, check
  step = ts.restart(np.full(5, 0.3, np.float32))
  if not batch_time_steps:
    step = ts.restart(np.full((3, 5), 0.3, np.float32), batch_size=3)
  policy.action(step)


def test_ddpg_noise_flows_through_variables_and_is_found(exports):
  """The OU noise is assigned to a variable and read back: the action counts as sampled."""
  policy = _load(exports("ddpg_collect"), backend="lite")
  (action,) = policy.lite_validation.outputs
  assert action.kind == "sampled"
  # Called repeatedly, LiteRT runs the OU process: consecutive actions are correlated.
  step = ts.restart(np.zeros(5, np.float32))
  actions = np.array([policy.action(step).action for _ in range(2000)])[:, 0]
  centred = actions - actions.mean()
  assert np.dot(centred[:-1], centred[1:]) / np.dot(centred, centred) > 0.5


def test_ppo_samples_outside_bounds_as_tf_does(exports):
  path = exports("ppo_clip_collect")
  policy = _load(path, backend="lite", batch_time_steps=False)
  reference = py_tf_eager_policy.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True,
                                                           batch_time_steps=False)
  step = ts.restart(np.full((20000, 5), 2.0, np.float32), batch_size=20000)
  ours = policy.action(step).action
  theirs = reference.action(step).action
  outside = lambda a: np.mean(np.abs(a) > 1.0)  # noqa: E731
  assert outside(theirs) > 0.0
  assert abs(outside(ours) - outside(theirs)) < 0.02


@pytest.mark.parametrize("family, mutated, message", MUTATIONS,
                         ids=["td3_noise_x1.5", "ddpg_ou_damping", "ppo_scale_x1.5",
                              "gaussian_unclipped", "dqn_mask_ignored", "bandit_epsilon",
                              "bandit_greedy_head"])
def test_a_wrong_model_is_refused(exports, family, mutated, message):
  right = _load(exports(family, RIGHT.get(family)), backend="lite")
  wrong_path = exports(f"{family}_wrong_{MUTATIONS.index((family, mutated, message))}", mutated)
  # The mutated policy's own graph (its constants may differ) and weights, as LiteRT runs them.
  wrong = _load(wrong_path, backend="lite")
  model = lite_model.model_of(wrong._switch.active.call_args)  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=message):
    right._engine.validate(model, right._switch.active.loaded)  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def atari_export(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("atari") / "atari")
  policy_zoo.save(policy_zoo.atari_q_policy(), path)
  return path


@pytest.mark.parametrize("batch_time_steps", [True, False])
def test_atari_dqn_on_lite_equals_tf_on_random_frames(atari_export, batch_time_steps):
  lite = _load(atari_export, backend="lite", batch_time_steps=batch_time_steps)
  assert lite.backend == "lite" and lite.lite_weights == "written into the model"
  reference = py_tf_eager_policy.SavedModelPyTFEagerPolicy(atari_export,
                                                           load_specs_from_pbtxt=True)
  frames = np.random.default_rng(0).integers(0, 256, (200, 84, 84, 4), dtype=np.uint8)
  theirs = [int(reference.action(ts.restart(f)).action) for f in frames]
  if batch_time_steps:
    ours = [int(lite.action(ts.restart(f)).action) for f in frames]
  else:
    ours = [int(a) for a in lite.action(ts.restart(frames, batch_size=len(frames))).action]
  assert ours == theirs


def _assert_close(got, want, what):
  for g, w in zip(tf_nest_flatten(got), tf_nest_flatten(want)):
    g, w = np.asarray(g), np.asarray(w)
    if np.issubdtype(w.dtype, np.floating):
      np.testing.assert_allclose(g, w, rtol=lite_validation.FLOAT_RTOL,
                                 atol=lite_validation.FLOAT_ATOL, err_msg=what)
    else:
      np.testing.assert_array_equal(g, w, err_msg=what)


def tf_nest_flatten(structure):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.nest.flatten(structure)


def _deterministic(policy):
  return all(o.kind == "deterministic" for o in policy.lite_validation.outputs)


@pytest.mark.parametrize("batch_time_steps", [True, False])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_agent_family_runs_on_lite(exports, tmp_path, name, batch_time_steps):
  """Loads with no fallback; deterministic policies act as TF-Agents' class does (10 steps
  with the state fed back for RNNs), before and after an update from a checkpoint."""
  path = exports(name)
  kwargs = dict(batch_time_steps=batch_time_steps)
  policy = _load(path, backend="lite", **kwargs)
  assert policy.backend == "lite", policy.backend_reason
  for check in policy.lite_validation.outputs:
    assert check.figure <= check.threshold, check
  reference = py_tf_eager_policy.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True,
                                                           **kwargs)
  outer = () if batch_time_steps else (4,)

  def compare(what):
    if not _deterministic(policy):
      policy.action(*spec_inputs(policy, 1, outer)[0])
      return
    time_step, state = spec_inputs(policy, 1, outer, seed=7)[0]
    ours_state, theirs_state = state, state
    for step in range(10 if tf_nest_flatten(state) else 3):
      ours = policy.action(time_step, ours_state)
      theirs = reference.action(time_step, theirs_state)
      _assert_close(ours.action, theirs.action, f"{name} {what} step {step}")
      _assert_close(ours.state, theirs.state, f"{name} {what} state {step}")
      _assert_close(ours.info, theirs.info, f"{name} {what} info {step}")
      ours_state, theirs_state = ours.state, theirs.state
      time_step = spec_inputs(policy, 1, outer, seed=step)[0][0]

  compare("export")
  checkpoint = scaled_checkpoint(exports.saved[name], str(tmp_path / "policy_checkpoint_0002"),
                                 0.75)
  policy.update_from_checkpoint(checkpoint)
  reference.update_from_checkpoint(checkpoint)
  assert policy.backend == "lite"
  compare("checkpoint")


@pytest.mark.parametrize("equation, shapes, rewritten", [
    ("j,jk->k", [(3,), (3, 5)], True),            # LinUCB's estimated reward
    ("ij,ij->j", [(4, 3), (4, 3)], True),         # and its variance
    ("j,jk->jk", [(3,), (3, 5)], True),           # eigendecomposition's scaling
    ("bij,j->bi", [(2, 3, 4), (4,)], True),
    ("ijk,ik->kj", [(2, 3, 4), (2, 4)], True),    # a transposed output
    ("i,i->", [(3,), (3,)], True),                # a scalar
    ("ij,jk->ik", [(2, 3), (3, 4)], False),       # a matrix product: left to the converter
])
def test_einsums_over_dynamic_shapes_convert(tmp_path, equation, shapes, rewritten):
  """Per-arm LinUCB's einsums see dynamic shapes, which the converter cannot lower; those whose
  labels all appear in one operand are rewritten as a product and a sum, with TF's values."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from policy_runtime.policies.engines import lite_rewrites  # pylint: disable=import-outside-toplevel

  class Einsum(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None] * len(s), tf.float32) for s in shapes])
    def action(self, a, b):
      return tf.einsum(equation, a, b)

  module = Einsum()
  path = str(tmp_path / "einsum")
  tf.saved_model.save(module, path, signatures={"action": module.action})
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    original = f.read()
  converted = lite_rewrites.for_builtins(original)
  assert (converted != original) == rewritten
  with open(os.path.join(path, "saved_model.pb"), "wb") as f:
    f.write(converted)
  converter = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=["action"])
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  from ai_edge_litert import interpreter as litert  # pylint: disable=import-outside-toplevel
  runner = litert.Interpreter(model_content=converter.convert()).get_signature_runner("action")
  rng = np.random.default_rng(0)
  a, b = (rng.normal(size=s).astype(np.float32) for s in shapes)
  (got,) = runner(a=a, b=b).values()
  np.testing.assert_allclose(got, np.einsum(equation, a, b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_family_compiles_and_acts_without_the_saved_model(exports, tmp_path, family):
  """compile_policy shares the validation: what loads on lite compiles."""
  from policy_runtime.policies import compile_policy  # pylint: disable=import-outside-toplevel
  from policy_runtime.policies import compiled  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "compiled")
  result = compile_policy(exports(family), out, load_specs_from_pbtxt=True)
  assert any(o["kind"] == "sampled" for o in result.report["validation"]["outputs"])
  policy = compiled.CompiledPolicy(out)
  step = ts.restart(np.full(5, 0.3, np.float32))
  actions = np.array([policy.action(step).action for _ in range(50)])
  assert len({a.tobytes() for a in actions}) > 1   # it samples


@pytest.mark.parametrize("name", sorted(n for n in ZOO if n.endswith("/collect_policy")))
def test_every_family_compiles_through_the_cli(exports, tmp_path, name):
  """`policy_cli compile` shares the validation: every family's collect policy compiles, and
  the compiled policy acts on the export's specs."""
  from policy_runtime.policies import compiled  # pylint: disable=import-outside-toplevel
  from tools.cli import policy_cli  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "compiled")
  assert policy_cli.main(["compile", exports(name), out]) == 0
  policy = compiled.CompiledPolicy(out)
  time_step, state = spec_inputs(_load(exports(name), backend="tf"), 1)[0]
  step = policy.action(time_step, state)
  for spec, action in zip(tf_nest_flatten(policy.action_spec), tf_nest_flatten(step.action)):
    assert (action.dtype, action.shape) == (spec.dtype, spec.shape), (spec, action)


def test_rnn_callers_keep_their_own_state_through_the_batcher(exports):
  """PPO's RNN greedy policy on LiteRT behind a DynamicBatchingPolicy: 4 threads, each its own
  episode of 10 steps with its own state, act as TF-Agents' class does on each alone."""
  import threading  # pylint: disable=import-outside-toplevel
  from policy_runtime.policies import DynamicBatchingPolicy  # pylint: disable=import-outside-toplevel
  path = exports("ppo_rnn/greedy_policy")
  batched = _load(path, backend="lite", batch_time_steps=False)
  reference = py_tf_eager_policy.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  episodes = [[spec_inputs(batched, 1, seed=100 * caller + t)[0][0] for t in range(10)]
              for caller in range(4)]
  got, errors = [[] for _ in episodes], []
  barrier = threading.Barrier(len(episodes), timeout=60)
  with DynamicBatchingPolicy(batched, max_batch_size=4, max_wait_us=20_000) as policy:
    def act(caller):
      try:
        state = policy.get_initial_state()
        for time_step in episodes[caller]:
          barrier.wait()   # the 4 callers' steps arrive together: they share batches
          step = policy.action(time_step, state)
          got[caller].append(step.action)
          state = step.state
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)
    threads = [threading.Thread(target=act, args=(c,)) for c in range(len(episodes))]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and not errors, errors[:3]
    assert policy.batches < policy.calls, (policy.batches, policy.calls)
  for caller, episode in enumerate(episodes):
    state = reference.get_initial_state(1)
    assert len(got[caller]) == len(episode)
    for t, time_step in enumerate(episode):
      step = reference.action(time_step, state)
      _assert_close(got[caller][t], step.action, f"caller {caller} step {t}")
      state = step.state
