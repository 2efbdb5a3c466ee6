"""Sampling policies on LiteRT: sampled outputs found statically, the distribution check
(and its teeth), independent random streams, and what backend="auto" says and does."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.trajectories import time_step as ts

from conftest import lite_twin, scaled_checkpoint
from policy_runtime.policies import DynamicBatchingPolicy
from policy_runtime.policies import SavedModelPyTFEagerPolicy
from policy_runtime.policies.saved_model import graph_audit
from policy_runtime.policies.engines import lite_validation
from tools.fixtures import policy_zoo

SAMPLING = ("q_sampling", "epsilon_greedy", "ppo_categorical", "ppo_collect", "gaussian_actor",
            "lstm_stochastic", "random")


def _load(path, **kwargs):
  return SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, **kwargs)


def _copy(policy):
  return policy._switch.active.loaded  # pylint: disable=protected-access


@pytest.mark.parametrize("name, sampled", [
    ("q_mlp", {"action": False}),
    ("q_sampling", {"action": True}),
    ("epsilon_greedy", {"action": True}),
    ("ppo_categorical", {"action": True, "info/dist_params/logits": False,
                         "info/value_prediction": False}),
    ("lstm_stochastic", {"action": True, "state/0": False, "state/1": False}),
])
def test_sampled_outputs_are_found_in_the_graph(saved, name, sampled):
  policy = _load(saved(name).path, backend="lite")
  report = {o.path: o.kind == "sampled" for o in policy.lite_validation.outputs}
  assert report == sampled
  flags = graph_audit.sampled_outputs(_copy(policy).action.concrete)
  assert sorted(flags) == sorted(sampled.values())


@pytest.mark.parametrize("batch_time_steps", [True, False])
@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_kinds_run_on_lite_and_pass_the_distribution_check(saved, name,
                                                                    batch_time_steps, caplog):
  path = saved(name).path
  with caplog.at_level(logging.WARNING, logger="policy_runtime"):
    policy = _load(path, backend="auto", batch_time_steps=batch_time_steps)
  assert policy.backend == "lite" and policy.backend_reason is None, policy.backend_reason
  assert not [r for r in caplog.records if r.name == "policy_runtime"]
  report = policy.lite_validation
  assert report.draws == lite_validation.DRAWS
  action = next(o for o in report.outputs if o.path == "action")
  assert action.kind == "sampled" and 0 < action.figure < action.threshold
  expected = ("total variation" if np.issubdtype(policy.action_spec.dtype, np.integer)
              else "Kolmogorov-Smirnov")
  assert action.statistic == expected
  for other in report.outputs:
    if other.kind == "deterministic":
      assert other.figure <= lite_validation.FLOAT_ATOL


def test_a_fixed_batch_export_draws_over_repeated_calls(tmp_path):
  path = str(tmp_path / "q_sampling_batch_4")
  policy_zoo.save(policy_zoo.q_sampling_policy(), path, batch_size=4)
  policy = _load(path, backend="lite", batch_time_steps=False)
  batch, calls = lite_validation.draw_plan(4)
  assert policy.lite_validation.draws == batch * calls == 4 * lite_validation.MAX_DRAW_CALLS
  action = policy.lite_validation.outputs[0]
  assert action.kind == "sampled" and action.figure < action.threshold


def _wrong_sampler_is_rejected(right_path, wrong_path, pattern):
  """Validates the right policy's TF function against a LiteRT model of other weights."""
  policy = _load(right_path, backend="lite")
  wrong = _load(wrong_path)
  engine = policy._engine  # pylint: disable=protected-access
  model = engine.model_for(_copy(wrong))
  with pytest.raises(ValueError, match=pattern):
    engine.validate(model, _copy(policy))
  engine.validate(engine.model_for(_copy(policy)), _copy(policy))   # the right one passes


def test_the_check_rejects_shifted_logits(tmp_path):
  """The first action's logit +1: near-uniform softmax(Q) moves by a total variation of ~0.2."""
  right, wrong = str(tmp_path / "right"), str(tmp_path / "wrong")
  policy_zoo.save(policy_zoo.q_sampling_policy(seed=1), right)
  policy_zoo.save(policy_zoo.q_sampling_policy(seed=1, first_action_shift=1.0), wrong)
  _wrong_sampler_is_rejected(
      right, wrong,
      r"action: LiteRT samples from another distribution than TF: total variation distance "
      r"0\.\d+ over 20000 draws, above 0\.05\d")


def test_the_check_rejects_a_shifted_normal(tmp_path):
  """The same Gaussian actor with its weights 1.1x: means and scales move a little."""
  right, wrong = str(tmp_path / "right"), str(tmp_path / "wrong")
  policy_zoo.save(policy_zoo.gaussian_actor_policy(seed=2), right)
  actor = policy_zoo.gaussian_actor_policy(seed=2)
  for v in actor.variables():
    v.assign(v * 1.1)
  policy_zoo.save(actor, wrong)
  _wrong_sampler_is_rejected(
      right, wrong,
      r"action\[\d\]: LiteRT samples from another distribution than TF: Kolmogorov-Smirnov "
      r"distance 0\.\d+ over 20000 draws")


def _fixed_step(policy):
  observation = tf.nest.map_structure(lambda s: np.full(s.shape, 0.3, s.dtype),
                                      policy.time_step_spec.observation)
  return ts.restart(observation)


def test_consecutive_calls_sample_independently_and_follow_tf(saved):
  path = saved("q_sampling").path
  on_lite, on_tf = _load(path, backend="lite"), _load(path)
  step = _fixed_step(on_tf)
  lite_actions = np.array([on_lite.action(step).action for _ in range(4000)])
  tf_actions = np.array([on_tf.action(step).action for _ in range(4000)])
  assert len(set(lite_actions[:20].tolist())) > 1
  threshold = lite_validation.discrete_threshold(4, 4000, 1)
  assert lite_validation.total_variation(lite_actions, tf_actions) < threshold


def test_pooled_interpreters_do_not_replay_one_stream(saved):
  """Two interpreters of one model (two concurrent callers) draw different sequences."""
  policy = _load(saved("q_sampling").path, backend="lite")
  model = lite_twin(policy, native=False)
  first, second = model.lease(1), model.lease(1)
  try:
    sequences = []
    for inputs, invoke, outputs, _, _ in (first, second):
      for buffer in inputs:
        buffer.fill(0)
      draws = []
      for _ in range(64):
        invoke()
        draws.append(int(outputs[0].ravel()[0]))
      sequences.append(draws)
  finally:
    model.release(first)
    model.release(second)
  assert sequences[0] != sequences[1]
  assert len(set(sequences[0])) > 1


def test_native_runners_do_not_replay_one_stream(saved):
  """Two natively compiled runners of one model draw different sequences."""
  policy = _load(saved("q_sampling").path, backend="lite")
  step = _fixed_step(policy)
  plan = policy._plan  # pylint: disable=protected-access
  sequences = []
  for model in (lite_twin(policy, native=True), lite_twin(policy, native=True)):
    assert model.engine is not None, model.native_reason
    sequences.append([int(plan.native_call_buffers(step, (), *model.call_args).action)
                      for _ in range(64)])
  assert sequences[0] != sequences[1]
  assert len(set(sequences[0])) > 1


def test_backend_reason_says_why_not_lite(saved):
  q = saved("q_mlp").path
  assert _load(q).backend_reason == "backend='tf' was requested"
  assert _load(q, backend="lite").backend_reason is None
  fallback = _load(saved("cumprod").path, backend="auto")
  assert fallback.backend == "tf" and fallback.lite_validation is None
  assert "no LiteRT builtin for: Cumprod" in fallback.backend_reason


def test_an_update_that_fails_validation(saved, tmp_path, caplog):
  """LSTM weights x1e12 overflow on the validation inputs, where TF and LiteRT part ways:
  "lite" refuses the update and keeps its weights; "auto" runs the new weights on TF."""
  fixture = saved("lstm_actor")
  checkpoint = scaled_checkpoint(fixture, str(tmp_path / "policy_checkpoint_0000000001"), 1e12)
  on_tf = _load(fixture.path)
  on_tf.update_from_checkpoint(checkpoint)
  step = tf.nest.map_structure(lambda s: np.full(s.shape, 0.5, s.dtype),
                               on_tf.time_step_spec)._replace(step_type=np.int32(1))
  new = on_tf.action(step, on_tf.get_initial_state())

  strict = _load(fixture.path, backend="lite")
  before = strict.action(step, strict.get_initial_state())
  with pytest.raises(ValueError, match=r"disagrees with the TF function .*: action: LiteRT "
                                       r"gives nan where TF gives"):
    strict.update_from_checkpoint(checkpoint)
  after = strict.action(step, strict.get_initial_state())
  np.testing.assert_array_equal(after.action, before.action)
  assert strict.backend == "lite"

  auto = _load(fixture.path, backend="auto")
  assert auto.backend == "lite"
  with caplog.at_level(logging.WARNING, logger="policy_runtime"):
    auto.update_from_checkpoint(checkpoint)
  assert auto.backend == "tf" and "disagrees with the TF function" in auto.backend_reason
  assert len([r for r in caplog.records if "these weights run on TF" in r.getMessage()]) == 1
  got = auto.action(step, auto.get_initial_state())
  np.testing.assert_array_equal(got.action, new.action)
  auto.update_from_checkpoint(checkpoint)   # later updates stay on TF
  assert auto.backend == "tf"


def test_the_batcher_keeps_serving_when_auto_moves_to_tf(saved, tmp_path):
  fixture = saved("lstm_actor")
  checkpoint = scaled_checkpoint(fixture, str(tmp_path / "policy_checkpoint_0000000002"), 1e12)
  reference = _load(fixture.path, batch_time_steps=False)
  reference.update_from_checkpoint(checkpoint)
  auto = _load(fixture.path, backend="auto", batch_time_steps=False)
  step = tf.nest.map_structure(lambda s: np.full(s.shape, 0.5, s.dtype),
                               auto.time_step_spec)._replace(step_type=np.int32(1))
  with DynamicBatchingPolicy(auto) as batcher:
    state = batcher.get_initial_state()
    batcher.action(step, state)
    auto.update_from_checkpoint(checkpoint)
    assert auto.backend == "tf"
    got = batcher.action(step, state)
  want = reference.action(tf.nest.map_structure(lambda x: np.asarray(x)[None], step),
                          reference.get_initial_state(1))
  np.testing.assert_array_equal(got.action, want.action[0])
