"""Hostile SavedModel directories: every outcome is a load or one of our errors.

Each case runs in a child process with a time and address-space limit
(`isolated.py`), so a crash, a hang or a memory blow-up is a failure of that
case, not of the run. The cases are in `hostile_saved_model_cases.py`.

`HOSTILE_FUZZ_CASES` sets the number of saved_model.pb fuzz cases (200 here;
the manual target `hostile_saved_model_fuzz_long` runs 10,000).
"""

from __future__ import annotations

import collections
import os

import pytest

import hostile_saved_model_cases as cases
import isolated

OUR_ERRORS = ("ValueError", "TypeError", "FileNotFoundError")
FUZZ_CASES = int(os.environ.get("HOSTILE_FUZZ_CASES", "200"))
TIMEOUT_S = 60.0
MEMORY_GB = 8.0   # address space (TF reserves GBs it never touches); RSS is checked apart
MAX_RSS_MB = 2048


@pytest.fixture(scope="module")
def outcomes():
  return isolated.run_cases("hostile_saved_model_cases", cases.CASES, TIMEOUT_S, MEMORY_GB)


def _loaded(outcome, backend="tf"):
  assert outcome.kind == "ok", str(outcome)
  assert outcome.value["backend"] == backend, str(outcome)


def _refused(outcome, *names):
  assert outcome.is_error(*OUR_ERRORS), str(outcome)
  for name in names:
    assert name in outcome.message, str(outcome)


@pytest.mark.parametrize("case", ["fifo_in_variables", "fifo_in_assets",
                                  "dev_zero_link_in_variables", "symlink_shard_to_regular",
                                  "checkpoint_with_junk_beside", "string_input_tf"])
def test_files_nobody_references_are_not_read(outcomes, case):
  _loaded(outcomes[case])


@pytest.mark.parametrize("case", ["sparse_gib_in_variables", "sparse_gib_in_assets"])
def test_a_gib_file_nobody_references_costs_no_memory(outcomes, case):
  _loaded(outcomes[case])
  # The whole child (TF and every case before) stays far below the 1 GiB file.
  assert outcomes[case].value["rss_mb"] < 900, str(outcomes[case])


@pytest.mark.parametrize("case, path", [
    ("fifo_as_shard", "variables.data-00000-of-00001"),
    ("dev_zero_as_shard", "variables.data-00000-of-00001"),
    ("fifo_as_index", "variables.index"),
    ("fifo_as_saved_model", "saved_model.pb"),
    ("checkpoint_with_fifo_shard", "checkpoint_0001/variables/variables.data-00000-of-00001"),
])
def test_referenced_files_that_are_not_regular_are_refused_naming_them(outcomes, case, path):
  _refused(outcomes[case], path, "not a regular file")


def test_string_signature_input_is_refused_on_lite(outcomes):
  _refused(outcomes["string_input_lite"], "policy")


def test_string_signature_input_falls_back_to_tf_on_auto(outcomes):
  _loaded(outcomes["string_input_auto"], "tf")


def test_model_io_check_names_the_tensor(outcomes):
  _refused(outcomes["flatbuffer_wrong_dtype_expected"], "'0/observation'", "expected float64",
           "got float32")


def test_flipped_flatbuffers_load_or_raise_value_error(outcomes):
  outcome = outcomes["flatbuffer_flips"]
  assert outcome.kind == "ok", str(outcome)   # every flip: a load or our ValueError
  assert sum(outcome.value.values()) == 150


def test_no_case_crashes_hangs_or_blows_memory(outcomes):
  for outcome in outcomes.values():
    assert outcome.kind in ("ok", "raised"), str(outcome)
    assert outcome.child_max_rss_mb < MAX_RSS_MB, str(outcome)


def test_fuzzed_saved_model_pb_loads_or_raises_our_errors():
  names = [f"fuzz_{i}" for i in range(FUZZ_CASES)]
  results = isolated.run_cases("hostile_saved_model_cases", names, TIMEOUT_S, MEMORY_GB)
  counts = collections.Counter(
      o.kind if o.kind != "raised" else f"raised {o.error_type}" for o in results.values())
  print(f"\nsaved_model.pb fuzz, {len(names)} cases: {dict(sorted(counts.items()))}")
  bad = [str(o) for o in results.values()
         if not (o.kind == "ok" or o.is_error(*OUR_ERRORS) and o.message)
         or o.child_max_rss_mb >= MAX_RSS_MB]
  assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize("case", ["object_graph_cycle", "object_graph_self_loops"])
def test_object_graph_cycles_are_value_errors_naming_the_file(outcomes, case):
  _refused(outcomes[case], "policy")


def test_converter_timeout_is_a_value_error_on_lite(outcomes):
  _refused(outcomes["converter_timeout_lite"], "policy", "did not finish")


def test_converter_timeout_falls_back_to_tf_on_auto(outcomes):
  _loaded(outcomes["converter_timeout_auto"], "tf")


def test_converter_crash_is_a_value_error_on_lite(outcomes):
  _refused(outcomes["converter_crash_lite"], "policy", "converter crashed", "signal 11")
