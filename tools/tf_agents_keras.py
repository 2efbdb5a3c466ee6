"""Selects Keras 2 for TF-Agents' networks in the project's own tests and tools.

TF-Agents builds its networks with Keras 2. TensorFlow 2.16 and later default
`tf.keras` to Keras 3 and route it to the `tf-keras` package (Keras 2) only if
TF_USE_LEGACY_KERAS=1 is set before `tf.keras` is first resolved, which
importing TF-Agents does. The library itself needs no Keras and never sets
this; only code that builds TF-Agents networks (fixtures, the trainer, the
benchmarks) calls `select_keras_2()` first thing.
"""

import importlib.util
import os


def select_keras_2() -> None:
  """Sets TF_USE_LEGACY_KERAS=1 where `tf-keras` is installed (TF >= 2.16), unless set."""
  if importlib.util.find_spec("tf_keras") is not None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
