"""Hypothesis strategies for nests of batched TensorSpecs (as a saved signature has them)."""

import collections

from hypothesis import strategies as st
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
