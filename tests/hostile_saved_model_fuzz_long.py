"""10,000 saved_model.pb fuzz cases (`hostile_saved_model_test`'s fuzz, longer); manual."""

import os

os.environ.setdefault("HOSTILE_FUZZ_CASES", "10000")

# pylint: disable=wrong-import-position,unused-import
from hostile_saved_model_test import test_fuzzed_saved_model_pb_loads_or_raises_our_errors  # noqa: E402,F401
