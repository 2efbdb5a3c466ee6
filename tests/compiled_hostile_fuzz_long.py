"""100,000 compiled-directory fuzz cases (`compiled_hostile_test`'s fuzz, longer); manual."""

import os

os.environ.setdefault("COMPILED_FUZZ_CASES", "100000")

# pylint: disable=wrong-import-position,unused-import
from compiled_hostile_test import test_fuzzed_directories_load_or_raise_our_errors  # noqa: E402,F401
