"""Reduced precision (precision="int8") and CPU threads (num_threads) on the LiteRT engine.

int8 is validated with its own criterion (lite_validation.check_agreement):
integer actions agree with TF on at least 99.9 % of sampled rows, float
outputs stay within 3 % of their range. A model that misses is refused
(backend="lite") naming the figure, or runs on fp32 LiteRT (backend="auto").
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema

from conftest import load_saved, lstm_episodes, lstm_trace, spec_inputs
from policy_runtime.policies import SavedModelPyTFEagerPolicy, compile_policy, compiled
from policy_runtime.policies.engines import lite_validation
from policy_runtime.policies.runtime import lite_model
from tools.cli import policy_cli


def _active_model(policy):
  return lite_model.model_of(policy._switch.active.call_args)  # pylint: disable=protected-access


def _act_rows(policy, inputs):
  return [tf.nest.flatten(policy.action(time_step, state)) for time_step, state in inputs]


@pytest.mark.parametrize("name", ["sac_actor", "lstm_actor"])
def test_int8_actors_load_with_their_figures_in_range(saved, name):
  tf_policy = load_saved(saved, name, batch_time_steps=False)
  int8 = load_saved(saved, name, "lite", precision="int8", batch_time_steps=False)
  assert (int8.backend, int8.precision) == ("lite", "int8")
  report = int8.lite_validation
  assert report.precision == "int8" and report.to_json()["precision"] == "int8"
  assert report.outputs and all(o.figure <= o.threshold == lite_validation.REDUCED_FLOAT_BOUND
                                for o in report.outputs)
  assert any(o.figure > 0 for o in report.outputs)   # int8 is not fp32 in disguise
  # Outside validation too: within the bound of each output's range.
  inputs = spec_inputs(tf_policy, 20, outer=(16,), seed=7)
  for ref, got in zip(_act_rows(tf_policy, inputs), _act_rows(int8, inputs)):
    for r, g in zip(ref, got):
      spread = max(float(np.ptp(r)), 1e-6)
      assert np.max(np.abs(g - r)) <= lite_validation.REDUCED_FLOAT_BOUND * max(spread, 2.0)


def test_int8_lstm_actor_carries_its_state_like_tf(saved):
  tf_policy = load_saved(saved, "lstm_actor")
  int8 = load_saved(saved, "lstm_actor", "lite", precision="int8")
  for episode in lstm_episodes(3, 20):
    ours = lstm_trace(int8.action, int8.get_initial_state(), episode)
    theirs = lstm_trace(tf_policy.action, tf_policy.get_initial_state(), episode)
    for (a, _), (b, _) in zip(ours, theirs):
      np.testing.assert_allclose(a, b, atol=0.06)   # actions in [-1, 1]: 3 % of the range


def test_int8_discrete_policy_reports_its_agreement():
  """The embedded CartPole policy (trained): its greedy actions agree with TF's on
  at least 99.9 % of sampled rows, and the report says how many."""
  int8 = SavedModelPyTFEagerPolicy(policy_cli.DEFAULT_POLICY, load_specs_from_pbtxt=True,
                                   backend="lite", precision="int8")
  agreement = int8.lite_validation.agreement
  assert list(agreement) == ["action"]
  assert lite_validation.MIN_AGREEMENT <= agreement["action"] <= 1.0
  check = int8.lite_validation.outputs[0]
  assert check.figure == pytest.approx(1.0 - agreement["action"])


def test_int8_that_misses_the_agreement_is_refused_naming_the_figure(saved):
  # An untrained Atari Q-network: its six Q-values are nearly tied on random frames.
  with pytest.raises(ValueError, match=r"action: int8 LiteRT agrees with TF on \d+\.\d+% of "
                                       r"4096 sampled rows \(at least 99\.9% needed\)"):
    load_saved(saved, "atari_q", "lite", precision="int8")
  auto = load_saved(saved, "atari_q", "auto", precision="int8")
  assert (auto.backend, auto.precision) == ("lite", "fp32")


def _perturbed_int8_weights(flatbuffer: bytes, rng: np.random.Generator) -> bytes:
  """The model with every int8 weight buffer shifted by up to +-40 quantization steps."""
  model = schema.Model.GetRootAs(flatbuffer, 0)
  data = bytearray(flatbuffer)
  perturbed = 0
  for s in range(model.SubgraphsLength()):
    subgraph = model.Subgraphs(s)
    for t in range(subgraph.TensorsLength()):
      tensor = subgraph.Tensors(t)
      if tensor.Type() != schema.TensorType.INT8 or tensor.Buffer() == 0:
        continue
      values = model.Buffers(tensor.Buffer()).DataAsNumpy()
      if isinstance(values, int) or values.size < 64:
        continue
      start = bytes(data).find(values.tobytes())
      assert start >= 0
      shifted = values.view(np.int8).astype(np.int16) + rng.integers(-40, 41, values.size)
      data[start:start + values.size] = np.clip(shifted, -127, 127).astype(np.int8).tobytes()
      perturbed += 1
  assert perturbed
  return bytes(data)


@pytest.mark.parametrize("name", ["sac_actor", "lstm_actor"])
def test_int8_weights_perturbed_beyond_the_bound_are_refused(saved, name):
  int8 = load_saved(saved, name, "lite", precision="int8")
  engine = int8._engine  # pylint: disable=protected-access
  model = _active_model(int8)
  broken = lite_model.LiteModel(_perturbed_int8_weights(model.flatbuffer,
                                                        np.random.default_rng(0)),
                                model.input_names, model.output_names, 1)
  with pytest.raises(ValueError, match=r"(action|state\S*): int8 LiteRT differs from TF by up "
                                       r"to \d+\.\d+% of the output's range \(at most 3% "
                                       r"allowed\)"):
    engine.validate(broken, int8._switch.active.loaded)  # pylint: disable=protected-access
  engine.validate(model, int8._switch.active.loaded)   # the real one still passes


def test_int8_follows_a_checkpoint_by_converting_it(saved, tmp_path):
  from conftest import scaled_checkpoint  # pylint: disable=import-outside-toplevel
  fixture = saved("sac_actor")
  int8 = load_saved(saved, "sac_actor", "lite", precision="int8")
  assert int8.lite_weights.startswith("converted") or "quantized" in int8.lite_weights
  checkpoint = scaled_checkpoint(fixture, str(tmp_path / "ckpt"), 0.5)
  reference = load_saved(saved, "sac_actor")
  reference.update_from_checkpoint(checkpoint)
  int8.update_from_checkpoint(checkpoint)
  assert int8.precision == "int8"
  inputs = spec_inputs(reference, 8, seed=3)
  for ref, got in zip(_act_rows(reference, inputs), _act_rows(int8, inputs)):
    np.testing.assert_allclose(got[0], ref[0], atol=0.06)


def test_int8_compiles_and_acts_without_tensorflow_code(saved, tmp_path):
  result = compile_policy(saved("sac_actor").path, str(tmp_path / "c"), precision="int8")
  assert result.report["validation"]["precision"] == "int8"
  policy = compiled.CompiledPolicy(str(tmp_path / "c"), batch_time_steps=False)
  assert policy.precision == "int8"
  int8 = load_saved(saved, "sac_actor", "lite", precision="int8", batch_time_steps=False)
  for time_step, state in spec_inputs(int8, 4, outer=(8,), seed=2):
    np.testing.assert_array_equal(policy.action(time_step, state).action,
                                  int8.action(time_step, state).action)


@pytest.mark.parametrize("name", ["atari_q", "sac_actor"])
def test_threads_give_what_one_thread_gives(saved, name):
  one = load_saved(saved, name, "lite", batch_time_steps=False)
  two = load_saved(saved, name, "lite", batch_time_steps=False, num_threads=2)
  assert (one.num_threads, two.num_threads) == (1, 2)
  assert two.lite_runtime == "native"
  for time_step, state in spec_inputs(one, 3, outer=(32,), seed=4):
    a, b = one.action(time_step, state).action, two.action(time_step, state).action
    np.testing.assert_allclose(b, a, rtol=lite_validation.FLOAT_RTOL,
                               atol=lite_validation.FLOAT_ATOL)


def test_threads_on_a_compiled_policy_and_on_the_interpreter(saved, tmp_path):
  compile_policy(saved("atari_q").path, str(tmp_path / "c"))
  one = compiled.CompiledPolicy(str(tmp_path / "c"), batch_time_steps=False)
  two = compiled.CompiledPolicy(str(tmp_path / "c"), batch_time_steps=False, num_threads=2)
  lite = load_saved(saved, "atari_q", "lite", batch_time_steps=False)
  model = _active_model(lite)
  interpreter = lite_model.LiteModel(model.flatbuffer, model.input_names, model.output_names, 1,
                                     native=False, num_threads=2)
  assert interpreter.engine is None and interpreter.num_threads == 2
  for time_step, state in spec_inputs(lite, 2, outer=(16,), seed=5):
    np.testing.assert_array_equal(two.action(time_step, state).action,
                                  one.action(time_step, state).action)


@pytest.mark.parametrize("value, error, message", [
    (0, ValueError, "num_threads: expected a positive int, got 0"),
    (-2, ValueError, "num_threads: expected a positive int, got -2"),
    ("2", TypeError, "num_threads: expected a positive int, got str"),
    (True, TypeError, "num_threads: expected a positive int, got bool"),
])
def test_bad_num_threads_is_named(saved, tmp_path, value, error, message):
  with pytest.raises(error, match=message):
    load_saved(saved, "q_mlp", "lite", num_threads=value)


def test_an_unknown_precision_is_named(saved):
  with pytest.raises(ValueError, match=r"precision: expected one of 'fp32', 'int8', got 'fp16'"):
    load_saved(saved, "q_mlp", "lite", precision="fp16")


# -- Validation on the user's observations (validation_observations) ----------------


def _cartpole_observations(count: int = 1000) -> np.ndarray:
  """Observations of CartPole-v1 under random actions (Gymnasium), float32[count, 4]."""
  import gymnasium as gym  # pylint: disable=import-outside-toplevel
  env = gym.make("CartPole-v1")
  rng = np.random.default_rng(0)
  observation, _ = env.reset(seed=0)
  rows = []
  while len(rows) < count:
    observation, _, terminated, truncated, _ = env.step(int(rng.integers(2)))
    rows.append(observation)
    if terminated or truncated:
      observation, _ = env.reset()
  return np.asarray(rows, np.float32)


def test_int8_validates_on_the_given_observations(saved, tmp_path):
  """The Atari Q-network refused on sampled frames (98.97 %) loads when validated on black
  frames (every Q-value is its zero bias on both engines), also after an update, and is
  refused on random frames given as observations, naming them."""
  from conftest import scaled_checkpoint  # pylint: disable=import-outside-toplevel
  black = np.zeros((8, 84, 84, 4), np.uint8)
  int8 = load_saved(saved, "atari_q", "lite", precision="int8", validation_observations=black)
  assert (int8.precision, int8.lite_validation.observations) == ("int8", 8)
  assert int8.lite_validation.agreement == {"action": 1.0}
  assert int8.lite_validation.to_json()["observations"] == 8
  before = int8.lite_validation
  int8.update_from_checkpoint(scaled_checkpoint(saved("atari_q"), str(tmp_path / "ckpt"), 0.5))
  assert int8.lite_validation is not before   # validated again, on the same frames
  assert (int8.precision, int8.lite_validation.observations) == ("int8", 8)
  assert int8.lite_validation.agreement == {"action": 1.0}
  noise = np.random.default_rng(0).integers(0, 256, (256, 84, 84, 4), dtype=np.uint8)
  with pytest.raises(ValueError, match=r"on validation_observations \(other fields sampled\): "
                                       r"action: int8 LiteRT agrees with TF on \d+\.\d+%"):
    load_saved(saved, "atari_q", "lite", precision="int8", validation_observations=noise)
  auto = load_saved(saved, "atari_q", "auto", precision="int8", validation_observations=noise)
  assert (auto.backend, auto.precision, auto.lite_validation.observations) == ("lite", "fp32",
                                                                             256)


def test_real_observations_validate_a_policy_and_a_compiled_one(tmp_path):
  observations = _cartpole_observations()
  policy = SavedModelPyTFEagerPolicy(policy_cli.DEFAULT_POLICY, load_specs_from_pbtxt=True,
                                     backend="lite", precision="int8",
                                     validation_observations=observations)
  report = policy.lite_validation
  assert report.observations == len(observations)
  assert lite_validation.MIN_AGREEMENT <= report.agreement["action"] <= 1.0
  fp32 = SavedModelPyTFEagerPolicy(policy_cli.DEFAULT_POLICY, load_specs_from_pbtxt=True,
                                   backend="lite", validation_observations=observations)
  assert fp32.lite_validation.observations == len(observations)
  assert SavedModelPyTFEagerPolicy(policy_cli.DEFAULT_POLICY, load_specs_from_pbtxt=True,
                                   backend="lite").lite_validation.observations is None
  result = compile_policy(policy_cli.DEFAULT_POLICY, str(tmp_path / "c"), precision="int8",
                          validation_observations=observations)
  assert result.report["validation"]["observations"] == len(observations)


@pytest.mark.parametrize("observations, error, message", [
    (np.zeros((16, 4), np.float64), TypeError,
     r"^validation_observations: expected float32\[N,4\] \(N >= 1 observations\), "
     r"got float64\[16,4\]$"),
    (np.zeros((16, 3), np.float32), ValueError,
     r"^validation_observations: expected float32\[N,4\] \(N >= 1 observations\), "
     r"got float32\[16,3\]$"),
    (np.zeros((4,), np.float32), ValueError,
     r"^validation_observations: expected float32\[N,4\] .*, got float32\[4\]$"),
    ({"x": np.zeros((16, 4), np.float32)}, TypeError,
     r"^validation_observations: expected float32\[N,4\] .*, got dict$"),
    (np.zeros((0, 4), np.float32), ValueError,
     r"^validation_observations: expected N >= 1 observations, got none$"),
])
def test_bad_validation_observations_are_named(observations, error, message):
  with pytest.raises(error, match=message):
    SavedModelPyTFEagerPolicy(policy_cli.DEFAULT_POLICY, load_specs_from_pbtxt=True,
                              backend="lite", validation_observations=observations)
  with pytest.raises(error, match=message):   # checked on TF too: never silently ignored
    SavedModelPyTFEagerPolicy(policy_cli.DEFAULT_POLICY, load_specs_from_pbtxt=True,
                              validation_observations=observations)


def test_dict_observations_are_named_by_key_and_validate_an_lstm_actor(saved):
  spec = saved("lstm_actor").tf_policy.time_step_spec.observation
  good = {k: np.zeros([5] + s.shape.as_list(), s.dtype.as_numpy_dtype) for k, s in spec.items()}
  key = sorted(good)[-1]   # the leaves are checked in tf.nest (sorted-key) order
  bad = dict(good, **{key: good[key][:3]})
  with pytest.raises(ValueError, match=rf"^validation_observations\['{key}'\]: expected the "
                                       r"same N as the other leaves \(5\), got 3$"):
    load_saved(saved, "lstm_actor", "lite", validation_observations=bad)
  lite = load_saved(saved, "lstm_actor", "lite", validation_observations=good)
  assert lite.lite_validation.observations == 5


def test_fp32_validation_draws_its_inputs_from_the_given_observations(saved, monkeypatch):
  """Every deterministic case and every distribution input of a sampling policy."""
  taken = []
  real_take = lite_validation.ObservationRows.take
  monkeypatch.setattr(lite_validation.ObservationRows, "take",
                      lambda self, outer: taken.append(outer) or real_take(self, outer))
  spec = saved("q_sampling").tf_policy.time_step_spec.observation
  observations = np.random.default_rng(0).standard_normal(
      [7] + spec.shape.as_list()).astype(spec.dtype.as_numpy_dtype)
  lite = load_saved(saved, "q_sampling", "lite", validation_observations=observations)
  assert lite.lite_validation.draws > 0
  assert taken == [()] * (lite_validation.DETERMINISTIC_CASES +
                          lite_validation.DISTRIBUTION_INPUTS)


def test_validation_draws_every_given_observation_and_keeps_at_most_the_rows_it_uses():
  spec = {"a": tf.TensorSpec([2], tf.float32), "b": tf.TensorSpec([], tf.int32)}
  values = np.arange(10, dtype=np.int32)
  rows = lite_validation.ObservationRows(
      {"a": np.stack([values, values], 1).astype(np.float32), "b": values}, spec,
      np.random.default_rng(0))
  seen = np.concatenate([rows.take((4,))["b"] for _ in range(5)])
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
  single = rows.take(())
  assert single["a"].shape == (2,) and single["b"].shape == ()
  np.testing.assert_array_equal(single["a"], [single["b"]] * 2)   # rows stay whole
  many = lite_validation.ObservationRows(np.zeros((5000, 1), np.float32),
                                         tf.TensorSpec([1], tf.float32),
                                         np.random.default_rng(0), limit=4096)
  assert many.count == 4096


def test_validation_observations_are_copied():
  frames = np.zeros((4, 2), np.float32)
  rows = lite_validation.ObservationRows(frames, tf.TensorSpec([2], tf.float32),
                                         np.random.default_rng(0))
  frames[:] = 1
  assert not rows.take((4,)).any()
