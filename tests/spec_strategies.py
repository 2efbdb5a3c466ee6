"""Hypothesis strategies for nests of batched TensorSpecs, and the leaf layouts fuzzers feed."""

import collections
import os

import hypothesis
from hypothesis import strategies as st
import numpy as np
import tensorflow as tf

DTYPES = [tf.float32, tf.float64, tf.int32, tf.int64, tf.uint8, tf.bool, tf.float16, tf.int8]
Pair = collections.namedtuple("Pair", ["left", "right"])


def spec_nests(max_leaves: int = 12, min_dim: int = 1):
  """Lists, tuples, dicts and namedtuples of `TensorSpec([None, ...])` leaves."""
  leaf = st.builds(lambda dtype, shape: tf.TensorSpec([None] + shape, dtype),
                   st.sampled_from(DTYPES), st.lists(st.integers(min_dim, 3), max_size=3))
  keys = st.text("abcxyz", min_size=1, max_size=3)
  return st.recursive(
      leaf,
      lambda children: st.one_of(
          st.lists(children, min_size=1, max_size=3),
          st.lists(children, min_size=1, max_size=3).map(tuple),
          st.dictionaries(keys, children, min_size=1, max_size=3),
          st.builds(Pair, children, children)),
      max_leaves=max_leaves)


# Forms of a correct leaf value that the marshaler must accept.
VALID_LAYOUTS = ("good", "fortran", "strided", "readonly", "swapped", "unaligned", "python",
                 "eager", "fresh_copy")


def with_layout(good: np.ndarray, layout: str):
  """`good` (a correct array for its leaf) in one of the VALID_LAYOUTS; `good` is not changed."""
  if layout == "good":
    return good
  if layout == "fortran":
    return np.asfortranarray(good) if good.ndim else good  # asfortranarray makes 0-d 1-d
  if layout == "strided":
    return np.repeat(good, 2, axis=-1)[..., ::2] if good.ndim else good
  if layout == "readonly":
    good = good.copy()
    good.setflags(write=False)
    return good
  if layout == "swapped":
    return good.astype(good.dtype.newbyteorder())
  if layout == "unaligned":
    raw = np.zeros(good.nbytes + 8, np.uint8)
    view = raw[1:1 + good.nbytes].view(good.dtype).reshape(good.shape)
    view[...] = good
    return view
  if layout == "python":  # a list cannot say the shape or dtype of an empty array
    return good.tolist() if good.size else good
  if layout == "eager":
    return tf.constant(good)
  if layout == "fresh_copy":
    return good.copy()
  raise ValueError(f"unknown layout {layout!r}")


def fuzz_settings(default_examples: int) -> hypothesis.settings:
  """CI runs are reproducible (derandomized); FUZZ_EXAMPLES=N explores N new cases."""
  return hypothesis.settings(
      max_examples=int(os.environ.get("FUZZ_EXAMPLES", default_examples)), deadline=None,
      database=None, derandomize="FUZZ_EXAMPLES" not in os.environ,
      suppress_health_check=list(hypothesis.HealthCheck))
