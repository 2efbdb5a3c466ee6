"""The marshaler fuzz test with 100,000 cases (a separate, manual Bazel target)."""

import os
import sys

os.environ.setdefault("FUZZ_EXAMPLES", "100000")

import pytest  # noqa: E402

if __name__ == "__main__":
  here = os.path.dirname(os.path.abspath(__file__))
  sys.exit(pytest.main([os.path.join(here, "marshal_fuzz_test.py"), "-q", "-p", "no:cacheprovider",
                        "--hypothesis-show-statistics"]))
