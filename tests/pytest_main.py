"""Entry point of every `pytest_test`: runs the test file given first under pytest.

`--python=PATH` first re-executes this file, with the same runfiles and
environment, under that interpreter (the test variants of other stacks).
"""

import os
import sys


def main(argv) -> int:
  if argv and argv[0].startswith("--python="):
    python = argv[0].split("=", 1)[1]
    os.execv(python, [python, os.path.abspath(__file__)] + argv[1:])
  # TF-Agents' networks (the fixtures) need Keras 2: tf-keras on TF >= 2.16.
  from tools.fixtures import tf_agents_keras  # pylint: disable=import-outside-toplevel
  tf_agents_keras.select_keras_2()
  import pytest  # pylint: disable=import-outside-toplevel

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
