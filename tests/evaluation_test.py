"""Evaluation on Ray: one local Ray instance (2 CPUs) for the whole module."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray
import tensorflow as tf

from conftest import scaled_checkpoint
from policy_runtime.policies import CheckpointFollower
from policy_runtime.policies import SavedModelPyTFEagerPolicy, compile_policy
from policy_runtime.policies import episodes as episodes_lib
from policy_runtime.policies import evaluation
from policy_runtime.policies.scale_out import local_ray
from tools.cli import policy_cli

DEFAULT_POLICY = policy_cli.DEFAULT_POLICY
# CartPole-v1 (500 steps at most): the embedded policy's returns differ by seed.
VARIED_ENV = "CartPole-v1"


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
  with local_ray.instance(num_cpus=2):
    yield


@pytest.fixture(scope="module")
def reference_returns():
  """Returns of seeds 0..9 on VARIED_ENV, run here in the test process."""
  policy = SavedModelPyTFEagerPolicy(DEFAULT_POLICY, load_specs_from_pbtxt=True)
  env = episodes_lib.load_env(VARIED_ENV)
  return [episodes_lib.run_episode(env, policy, seed).total_return for seed in range(10)]


_EVALUATE_IN_A_FRESH_PROCESS = """
import json, os, stat, sys
import ray
from policy_runtime.policies import evaluation
from tools.cli import policy_cli
assert not ray.is_initialized()
result = evaluation.evaluate(policy_cli.DEFAULT_POLICY, episodes=2, workers=1)
token = os.environ["RAY_AUTH_TOKEN_PATH"]
print(json.dumps({
    "returns": result.returns.tolist(), "token": token,
    "auth_mode": os.environ.get("RAY_AUTH_MODE"),
    "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(token)).st_mode),
    "file_mode": stat.S_IMODE(os.stat(token).st_mode)}))
"""


def test_evaluate_starts_ray_where_no_dot_ray_can_be_made(tmp_path):
  """No Ray running, no token configured, and a home in which ~/.ray cannot exist."""
  home = tmp_path / "home_is_a_regular_file"
  home.write_text("")
  env = {k: v for k, v in os.environ.items() if k not in local_ray.AUTH_ENV_VARS}
  env["HOME"] = str(home)
  process = subprocess.run([sys.executable, "-c", _EVALUATE_IN_A_FRESH_PROCESS], env=env,
                           cwd=os.path.dirname(os.path.dirname(policy_cli.__file__)),
                           capture_output=True, text=True, timeout=600)
  assert process.returncode == 0, process.stderr[-3000:]
  report = json.loads(process.stdout.strip().splitlines()[-1])
  assert report["returns"] == [200.0, 200.0]
  assert report["auth_mode"] == "token"     # authentication stayed on
  assert (report["dir_mode"], report["file_mode"]) == (0o700, 0o600)
  assert not os.path.exists(os.path.dirname(report["token"])), "token left behind at exit"
  assert home.read_text() == ""


def test_embedded_policy_solves_cartpole():
  result = evaluation.evaluate(DEFAULT_POLICY, episodes=6, workers=2)
  assert [e.index for e in result.episodes] == list(range(6))
  assert [e.seed for e in result.episodes] == list(range(6))
  assert result.env_id == "CartPole-v0"
  np.testing.assert_array_equal(result.returns, [200.0] * 6)
  np.testing.assert_array_equal(result.lengths, [200] * 6)
  assert result.steps == 1200
  assert result.mean_return == 200.0 and result.ci95 == 0.0
  assert sorted({e.worker for e in result.episodes}) == [0, 1]
  assert len(result.worker_steps_per_s) == 2 and min(result.worker_steps_per_s) > 0
  assert result.steps_per_s > 0 and result.restarts == 0


def test_returns_match_in_process_episodes_with_1_and_2_workers(reference_returns):
  assert len(set(reference_returns)) > 1, "the check needs returns that differ by seed"
  one = evaluation.evaluate(DEFAULT_POLICY, VARIED_ENV, episodes=10, workers=1)
  two = evaluation.evaluate(DEFAULT_POLICY, VARIED_ENV, episodes=10, workers=2)
  assert one.returns.tolist() == reference_returns
  assert two.returns.tolist() == reference_returns
  shifted = evaluation.evaluate(DEFAULT_POLICY, VARIED_ENV, episodes=5, workers=2, seed=5)
  assert shifted.returns.tolist() == reference_returns[5:]


def test_confidence_interval_is_students_t(reference_returns):
  result = evaluation.evaluate(DEFAULT_POLICY, VARIED_ENV, episodes=10, workers=2)
  half_width = 2.2621571627 * np.std(reference_returns, ddof=1) / np.sqrt(10)   # t(0.975, 9)
  assert result.ci95 == pytest.approx(half_width, rel=1e-5)


def test_a_compiled_directory_evaluates_on_workers_without_tensorflow(reference_returns,
                                                                     tmp_path):
  out = compile_policy(DEFAULT_POLICY, str(tmp_path / "compiled")).path
  result = evaluation.evaluate(out, VARIED_ENV, episodes=10, workers=2)
  assert result.returns.tolist() == reference_returns   # same actions, same episodes
  assert result.backend == "lite (compiled)"
  assert result.worker_tensorflow == (False, False)
  saved = evaluation.evaluate(DEFAULT_POLICY, VARIED_ENV, episodes=2, workers=2)
  assert saved.worker_tensorflow == (True, True)
  assert len(result.worker_load_s) == 2 and min(result.worker_load_s) > 0
  assert "TensorFlow imported on 0 of 2 workers" in result.summary()


def test_killed_worker_loses_and_doubles_nothing(reference_returns):
  killed = []

  def kill_first_reporter(episode):
    if not killed:
      killed.append(episode.pid)
      os.kill(episode.pid, signal.SIGKILL)

  result = evaluation.evaluate(DEFAULT_POLICY, VARIED_ENV, episodes=10, workers=2,
                               on_episode=kill_first_reporter)
  assert killed
  assert [e.index for e in result.episodes] == list(range(10))
  assert result.returns.tolist() == reference_returns
  assert result.restarts >= 1


def test_broken_policy_path_is_a_clear_error(tmp_path):
  missing = str(tmp_path / "no_such_policy")
  with pytest.raises(FileNotFoundError) as error:
    evaluation.evaluate(missing, episodes=2, workers=2)
  assert str(error.value).splitlines()[0] == f"policy directory not found: {missing}"
  assert "Traceback" not in str(error.value)


def test_unknown_environment_is_a_clear_error():
  with pytest.raises(ValueError, match=r"^env_id: no Gymnasium environment 'NoSuchEnv-v9'"):
    evaluation.evaluate(DEFAULT_POLICY, "NoSuchEnv-v9", episodes=2, workers=1)


def test_workers_are_released_after_a_run():
  evaluation.evaluate(DEFAULT_POLICY, episodes=2, workers=2)
  with pytest.raises(FileNotFoundError):
    evaluation.evaluate("/no/such/policy", episodes=2, workers=2)
  # Both CPUs are free again: a third run could not start otherwise.
  result = evaluation.evaluate(DEFAULT_POLICY, episodes=2, workers=2)
  assert result.returns.tolist() == [200.0, 200.0]


def test_policy_cannot_be_sent_to_a_worker():
  policy = SavedModelPyTFEagerPolicy(DEFAULT_POLICY, load_specs_from_pbtxt=True)
  with pytest.raises(TypeError, match="pass the model path"):
    ray.put(policy)

  @ray.remote
  def use(p):
    return p

  with pytest.raises(TypeError, match="pass the model path"):
    use.remote(policy)


# The README's recipe: load from the path inside the actor, follow the learner's directory.
@ray.remote
class Actor:
  def __init__(self, policy_dir, learner_dir):
    self.policy = SavedModelPyTFEagerPolicy(policy_dir, load_specs_from_pbtxt=True)
    self.follower = CheckpointFollower(self.policy, learner_dir, interval_s=0.2).start()

  def act(self, time_step, state):
    return self.policy.action(time_step, state)


# Ray ships the class itself to the workers (this test module is not importable there).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_readme_recipe_ray_actor_follows_learner_checkpoints(saved, tmp_path):
  fixture = saved("q_mlp")
  learner = tmp_path / "learner"
  learner.mkdir()
  original = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  flipped = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  checkpoint = scaled_checkpoint(fixture, str(tmp_path / "policy_checkpoint_0000000007"), -1.0)
  flipped.update_from_checkpoint(checkpoint)
  rng = np.random.default_rng(0)
  step = tf.nest.map_structure(lambda s: np.zeros(s.shape, s.dtype), original.time_step_spec)
  for _ in range(100):   # an observation on which the two weights disagree
    step = step._replace(observation=rng.normal(size=4).astype(np.float32) * 3)
    if original.action(step).action != flipped.action(step).action:
      break
  else:
    pytest.fail("no observation where the flipped weights act differently")
  actor = Actor.remote(fixture.path, str(learner))
  assert ray.get(actor.act.remote(step, ())).action == original.action(step).action
  os.rename(checkpoint, learner / "policy_checkpoint_0000000007")
  deadline = time.monotonic() + 60
  while ray.get(actor.act.remote(step, ())).action != flipped.action(step).action:
    assert time.monotonic() < deadline, "the actor never picked up the learner's checkpoint"
    time.sleep(0.2)
  ray.kill(actor)


def test_cli_ends_with_the_json_line(tmp_path, capsys):
  plot = tmp_path / "returns.png"
  assert policy_cli.main(["evaluate", "--workers", "2", "--episodes", "4", "--json",
                          "--plot", str(plot)]) == 0
  last = capsys.readouterr().out.strip().splitlines()[-1]
  summary = json.loads(last)
  assert summary["engine"] == "ray"
  assert summary["workers"] == 2 and summary["episodes"] == 4
  assert summary["mean_return"] == 200.0 and summary["ci95"] == 0.0
  assert summary["steps"] == 800 and summary["steps_per_s"] > 0
  assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_load_error_exits_non_zero(tmp_path, capsys):
  missing = str(tmp_path / "gone")
  assert policy_cli.main(["evaluate", missing, "--workers", "1", "--episodes", "2"]) == 1
  err = capsys.readouterr().err
  assert err.splitlines()[-1] == f"policy_cli: policy directory not found: {missing}"
  assert "Traceback" not in err


def _processes_with(text: str) -> list:
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        if text.encode() in f.read():
          found.append(int(pid))
    except OSError:
      pass
  return found


def test_ctrl_c_stops_the_workers_and_the_local_instance(tmp_path):
  # stderr goes to a file, never a pipe: Ray's processes may inherit it, and a
  # read until EOF would then wait for them instead of failing the test.
  log = tmp_path / "stderr.txt"
  command = [sys.executable, "-m", "tools.cli.policy_cli", "evaluate", "--workers", "2",
             "--episodes", "100000"]
  with open(log, "w") as stderr:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                               cwd=os.path.dirname(os.path.dirname(policy_cli.__file__)),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  session = f"_{process.pid}/"   # the local instance's session directory ends with the pid

  def tail():
    return log.read_text()[-2000:]

  try:
    deadline = time.monotonic() + 240
    while not re.search(r"\b[1-9]\d*/100000 ", log.read_text()) and process.poll() is None:
      assert time.monotonic() < deadline, f"no episode finished in 240 s: {tail()}"
      time.sleep(0.2)
    assert process.poll() is None, f"policy_cli ended early: {tail()}"
    assert _processes_with(session), "no local Ray instance found"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, tail()
  finally:
    process.kill()
    process.wait()
  assert log.read_text().splitlines()[-1] == "policy_cli: interrupted"
  deadline = time.monotonic() + 60
  while _processes_with(session) and time.monotonic() < deadline:
    time.sleep(0.5)
  left = _processes_with(session)
  for pid in left:   # so that a failure here leaves nothing running
    with contextlib.suppress(OSError):
      os.kill(pid, signal.SIGKILL)
  assert not left, "processes of the local Ray instance outlived policy_cli"
