"""Entry point of every `pytest_test`: runs the test file given first under pytest."""

import os
import sys

import pytest


def main(argv) -> int:
  test_file, extra = argv[0], argv[1:]
  if not os.path.isfile(test_file):
    print(f"pytest_main: no test file {test_file}", file=sys.stderr)
    return 2
  args = [test_file, "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
  tmp = os.environ.get("TEST_TMPDIR")
  if tmp:
    args += ["--basetemp", os.path.join(tmp, "pytest")]
  return int(pytest.main(args + extra))   # "no tests collected" (5) fails too


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
