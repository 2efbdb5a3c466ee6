"""The Python stacks the project builds and tests, as found by deps.bzl.

`PRIMARY` (Python 3.11, TF-Agents' pinned set) runs py_binary targets and the
plain test names; every stack in `STACKS` gets its own native extension
(named with its `EXT_SUFFIX`) and, beyond the primary, its own test variants.
A stack whose interpreter makes the same extension as an earlier one (one
interpreter serving every slot) is left out. `TFFREE` is the environment
without TensorFlow that `_tffree` tests run in.
"""

load("@policy_runtime_python//:defs.bzl", _py311 = "STACK")
load("@policy_runtime_python313//:defs.bzl", _py313 = "STACK")
load("@policy_runtime_python_tffree//:defs.bzl", _tffree = "ENVIRONMENT")

PRIMARY = _py311
STACKS = [_py311] + ([_py313] if _py313.ext_suffix != _py311.ext_suffix else [])

# Python 3.13 without TensorFlow (compiled policies); imports the py313 native build.
TFFREE = _tffree
