"""What acts without TensorFlow: numpy, LiteRT and the native module only.

Compiled policies (`compiled.CompiledPolicy`, their directory format, checks
and follower), the LiteRT model runners (`lite_model`, `litert_library`), the
dynamic batcher's core (`batching`), the array specs and the native plan's
nest layout, TF-Agents' numpy time steps and the seeded episode loop.
Nothing here imports TensorFlow or TF-Agents at module level
(tests/tffree/compiled_tffree_test.py runs it where neither is installed).
"""
