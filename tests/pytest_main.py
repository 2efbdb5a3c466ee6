"""Runs one test file under pytest from a Bazel py_test."""

import os
import sys

import pytest


def main(test_file: str) -> None:
  args = [test_file, "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
  tmp = os.environ.get("TEST_TMPDIR")
  if tmp:
    args += ["--basetemp", os.path.join(tmp, "pytest")]
  sys.exit(pytest.main(args + sys.argv[1:]))
