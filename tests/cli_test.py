"""The main job: policy_cli inspect / run on the embedded default policy."""

import contextlib
import io
import re

from tools.cli import policy_cli
from tools.fixtures import policy_zoo


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
  for expected in ("loaded from: object graph", "LiteRT: yes; action deterministic",
                   "time_step_spec", "observation: float32[4]", "action(", "get_initial_state(",
                   "train step:", "env_name: array(b'CartPole-v0'", "op families", "variables:"):
    assert expected in text, expected


def test_missing_directory_is_a_clean_error(capsys):
  assert policy_cli.main(["inspect", "/no/such/dir"]) == 1
  assert "policy directory not found: /no/such/dir" in capsys.readouterr().err


def _inspect(policy, path: str) -> str:
  """policy_cli inspect's output for `policy`, saved at `path`."""
  policy_zoo.save(policy, path)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert policy_cli.main(["inspect", path]) == 0
  return out.getvalue()


def test_inspect_says_why_a_policy_stays_on_tf(tmp_path):
  output = _inspect(policy_zoo.CumprodPolicy(), str(tmp_path / "cumprod"))
  line = next(l for l in output.splitlines() if "LiteRT:" in l)
  assert line.strip().startswith("LiteRT: no, runs on TF: ")
  assert "no LiteRT builtin for: Cumprod" in line


def test_inspect_reports_the_distribution_check_of_a_sampling_policy(tmp_path):
  output = _inspect(policy_zoo.q_sampling_policy(), str(tmp_path / "q_sampling"))
  assert re.search(r"LiteRT: yes; action sampled \(total variation 0\.\d{3} <= 0\.054\)",
                   output)


def test_run_and_compile_take_the_precision_and_threads(tmp_path, capsys):
  assert policy_cli.main(["run", "--episodes", "2", "--backend", "lite", "--precision", "int8",
                          "--num-threads", "2"]) == 0
  assert "engine: LiteRT int8, 2 threads" in capsys.readouterr().out
  out = str(tmp_path / "compiled")
  assert policy_cli.main(["compile", policy_cli.DEFAULT_POLICY, out, "--precision", "int8"]) == 0
  assert re.search(r"\(train step \d+, int8\)", capsys.readouterr().out)
  assert policy_cli.main(["run", out, "--episodes", "1"]) == 0
  assert "engine: compiled LiteRT int8, 1 thread\n" in capsys.readouterr().out
  assert policy_cli.main(["run", "--episodes", "1", "--backend", "lite",
                          "--precision", "fp16"]) == 1
  assert "precision: expected one of 'fp32', 'int8', got 'fp16'" in capsys.readouterr().err
  assert policy_cli.main(["run", "--episodes", "1", "--precision", "int8"]) == 1
  assert ("--precision and --num-threads apply to --backend lite or auto"
          in capsys.readouterr().err)
