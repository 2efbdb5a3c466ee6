"""TF-Agents' own SavedModelPyTFEagerPolicy on the hostile SavedModel cases; manual.

The comparison column of docs/untrusted_inputs.md: each case of
`hostile_saved_model_cases.py` that loads a directory, loaded with TF-Agents'
class instead (in a child process; a hang is cut at 20 s). Prints one line per
case, ours beside theirs, and checks that ours never does worse: where theirs
crashed, hung or raised an error that is not ours, ours loaded or raised ours.

    bazel test //tests:hostile_saved_model_tf_agents --test_output=all
"""

from __future__ import annotations

import hostile_saved_model_cases as cases
import isolated

OUR_ERRORS = ("ValueError", "TypeError", "FileNotFoundError")
COMPARED = ["fifo_in_variables", "fifo_in_assets", "dev_zero_link_in_variables",
            "sparse_gib_in_variables", "sparse_gib_in_assets", "fifo_as_shard",
            "dev_zero_as_shard", "fifo_as_index", "fifo_as_saved_model",
            "symlink_shard_to_regular", "checkpoint_with_fifo_shard",
            "checkpoint_with_junk_beside", "string_input_tf", "object_graph_cycle",
            "object_graph_self_loops"]


def _short(outcome) -> str:
  if outcome.kind == "ok":
    return f"acts (RSS {outcome.value['rss_mb']:.0f} MB)"
  if outcome.kind == "raised":
    return f"{outcome.error_type}: {outcome.message[:90]}"
  return outcome.kind


def test_ours_beside_tf_agents_class():
  assert set(COMPARED) <= set(cases.CASES)
  ours = isolated.run_cases("hostile_saved_model_cases", COMPARED, 60.0, 8.0)
  theirs = isolated.run_cases("hostile_saved_model_cases",
                              [f"tf_agents__{c}" for c in COMPARED], 20.0, 8.0)
  worse = []
  for case in COMPARED:
    mine, other = ours[case], theirs[f"tf_agents__{case}"]
    print(f"\n{case}\n  ours:      {_short(mine)}\n  TF-Agents: {_short(other)}")
    if not (mine.kind == "ok" or mine.is_error(*OUR_ERRORS)):
      worse.append(case)
  assert not worse, worse
