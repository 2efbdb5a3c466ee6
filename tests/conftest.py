"""Session fixtures: real policies exported with TF-Agents' PolicySaver."""

import dataclasses
import os
import tempfile
import threading
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# LiteRT conversions are cached per test run, never in the user's cache.
os.environ["POLICY_RUNTIME_CACHE_DIR"] = os.path.join(
    os.environ.get("TEST_TMPDIR") or tempfile.mkdtemp(prefix="policy_runtime_test_"), "cache")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tools.fixtures import policy_zoo  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402

from policy_runtime.policies import SavedModelPyTFEagerPolicy  # noqa: E402
from policy_runtime.policies.runtime import lite_model  # noqa: E402
from policy_runtime.policies.engines import lite_validation  # noqa: E402


@dataclasses.dataclass
class SavedPolicy:
  name: str
  path: str
  tf_policy: Any
  saver: Any
  deterministic: bool
  batch_size: Optional[int] = None


_BUILDERS = {
    "q_mlp": (lambda: policy_zoo.q_mlp_policy(), True, None),
    "q_8_leaves": (lambda: policy_zoo.q_mlp_policy(num_leaves=8), True, None),
    "lstm_actor": (lambda: policy_zoo.lstm_actor_policy(greedy=True), True, None),
    "ppo_collect": (lambda: policy_zoo.ppo_collect_policy(), False, None),
    "random": (lambda: policy_zoo.random_policy(), False, None),
    "q_fixed_batch": (lambda: policy_zoo.q_mlp_policy(seed=3), True, 4),
}

ALL_POLICIES = tuple(_BUILDERS)

# Fixtures for one purpose each, not in ALL_POLICIES.
_BUILDERS["cumprod"] = (policy_zoo.CumprodPolicy, True, None)   # has no LiteRT builtin
# Sampling policies (LiteRT's distribution check).
_BUILDERS["q_sampling"] = (policy_zoo.q_sampling_policy, False, None)
_BUILDERS["epsilon_greedy"] = (policy_zoo.epsilon_greedy_policy, False, None)
_BUILDERS["ppo_categorical"] = (policy_zoo.ppo_categorical_collect_policy, False, None)
_BUILDERS["gaussian_actor"] = (policy_zoo.gaussian_actor_policy, False, None)
_BUILDERS["lstm_stochastic"] = (lambda: policy_zoo.lstm_actor_policy(greedy=False), False, None)
# Compute-bound policies (reduced precision, threads).
_BUILDERS["atari_q"] = (policy_zoo.atari_q_policy, True, None)
_BUILDERS["sac_actor"] = (policy_zoo.sac_actor_policy, True, None)


def load_saved(saved, name: str, backend: str = "tf", **kwargs):
  """Our SavedModelPyTFEagerPolicy on fixture `name` (specs from its pbtxt)."""
  return SavedModelPyTFEagerPolicy(saved(name).path, load_specs_from_pbtxt=True,
                                   backend=backend, **kwargs)


def q_steps(count: int, seed: int = 0) -> list:
  """`count` unbatched time steps for the Q fixtures (float32[4] observations)."""
  obs = np.random.default_rng(seed).standard_normal((count, 4)).astype(np.float32)
  return [ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), o) for o in obs]


def lstm_episodes(count: int, length: int, seed: int = 5) -> list:
  """`count` episodes of `length` unbatched time steps for the lstm_actor fixture."""
  rng = np.random.default_rng(seed)
  return [[ts.TimeStep(np.int32(1), np.float32(0), np.float32(1),
                       {"position": rng.standard_normal(3).astype(np.float32),
                        "velocity": rng.standard_normal(2).astype(np.float32)})
           for _ in range(length)] for _ in range(count)]


def lstm_trace(act: Callable, initial_state, episode: list) -> list:
  """[(action, state)] of one episode, the state fed back: `act(step, state)` is a PolicyStep."""
  state, trace = initial_state, []
  for step in episode:
    out = act(step, state)
    state = out.state
    trace.append((out.action, state))
  return trace


def spec_inputs(policy, count: int, outer: tuple = (), seed: int = 0) -> list:
  """`count` random (time_step, policy_state) within `policy`'s specs, with outer dims
  `outer` (() for unbatched time steps, whose state then has a batch of 1)."""
  rng = np.random.default_rng(seed)
  specs = policy._policy_specs  # pylint: disable=protected-access
  return [lite_validation.sample_inputs(specs.time_step_spec, specs.policy_state_spec, outer,
                                        outer or (1,), rng) for _ in range(count)]


def lite_twin(policy, native: bool):
  """A second LiteModel of the converted model `policy` (on "lite") acts on: natively or
  on the interpreter."""
  model = lite_model.model_of(policy._switch.active.call_args)  # pylint: disable=protected-access
  return lite_model.LiteModel(model.flatbuffer, model.input_names, model.output_names, 1,
                              native=native)


def scaled_checkpoint(fixture: SavedPolicy, directory: str, scale: float) -> str:
  """`PolicySaver.save_checkpoint` of the fixture's policy with its weights times `scale`."""
  for v in fixture.tf_policy.variables():
    v.assign(v * scale)
  try:
    fixture.saver.save_checkpoint(directory)
  finally:
    for v in fixture.tf_policy.variables():
      v.assign(v / scale)
  return directory


def run_threads(count: int, target: Callable[[int], None], timeout: float = 120) -> list:
  """Runs target(0..count-1) in threads; returns [(i, exception)] of the ones that raised."""
  errors = []

  def wrapped(i):
    try:
      target(i)
    except BaseException as e:  # pylint: disable=broad-except
      errors.append((i, e))

  threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=timeout)
    assert not t.is_alive(), "deadlock: a thread never finished"
  return errors


def act_during_swaps(policy, checkpoints: Sequence[str], swaps: int, threads: int,
                     act: Callable[[int], None]) -> None:
  """Calls act(i) in a loop in `threads` threads while `swaps` updates alternate checkpoints."""
  stop = threading.Event()

  def loop(i):
    while not stop.is_set():
      act(i)

  workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
  for t in workers:
    t.start()
  try:
    for k in range(swaps):
      policy.update_from_checkpoint(checkpoints[k % len(checkpoints)])
  finally:
    stop.set()
    for t in workers:
      t.join()


DETERMINISTIC = tuple(k for k, v in _BUILDERS.items() if v[1])


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
  """`saved(name)` builds and exports a fixture policy once per session."""
  root = tmp_path_factory.mktemp("policies")
  cache = {}

  def get(name: str) -> SavedPolicy:
    if name not in cache:
      build, deterministic, batch_size = _BUILDERS[name]
      policy = build()
      path = os.path.join(root, name)
      saver = policy_zoo.save(policy, path, batch_size=batch_size, train_step=42)
      cache[name] = SavedPolicy(name, path, policy, saver, deterministic, batch_size)
    return cache[name]

  return get
