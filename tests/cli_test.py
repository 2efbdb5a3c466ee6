"""The main job: policy_cli inspect / run on the embedded default policy."""

import io
import contextlib

from tools import policy_cli


def test_run_default_policy_beats_random():
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = policy_cli.run(policy_cli.DEFAULT_POLICY, None, episodes=5, seed=0)
  assert result["policy_return"] >= 150
  assert result["policy_return"] > 3 * result["random_return"]
  assert "average return" in out.getvalue() and "latency" in out.getvalue()


def test_inspect_default_policy_lists_specs_signatures_and_ops():
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert policy_cli.main(["inspect"]) == 0
  text = out.getvalue()
  for expected in ("loaded from: object graph", "time_step_spec", "observation: float32[4]", "action(", "get_initial_state(",
                   "train step:", "env_name: array(b'CartPole-v0'", "op families", "variables:"):
    assert expected in text, expected


def test_missing_directory_is_a_clean_error(capsys):
  assert policy_cli.main(["inspect", "/no/such/dir"]) == 1
  assert "policy directory not found: /no/such/dir" in capsys.readouterr().err
