"""Whether two engines sample from the same distribution, without TensorFlow.

The statistics and thresholds of the LiteRT engine's distribution check
(`policies.engines.lite_validation` explains them), usable where TensorFlow
is not (e.g. to compare a compiled policy's draws with stored ones):

  - discrete (integer, bool) elements: total variation distance below
    sqrt(m / n) + 2 * sqrt(ln(2 T / ALPHA) / (2 n));
  - continuous elements: two-sample Kolmogorov-Smirnov distance below
    2 * sqrt(ln(4 T / ALPHA) / (2 n)),

m the number of categories, n the draws per engine, T the number of elements
tested, ALPHA the false-alarm probability of the whole check.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List

import numpy as np

ALPHA = 1e-6               # false-alarm probability per load


@dataclasses.dataclass(frozen=True)
class OutputCheck:
  """One output leaf's validation: its kind and its worst figure."""
  path: str
  kind: str                 # "deterministic" or "sampled"
  figure: float             # worst |lite - tf| (deterministic) or worst distance (sampled)
  threshold: float          # what the figure had to stay within (0: exact)
  statistic: str            # "max abs difference", "total variation", "Kolmogorov-Smirnov"

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


class ValidationError(ValueError):
  """The LiteRT model does not behave like the TF function (the message says where)."""


# -- Inputs ---------------------------------------------------------------------------


def categories(spec, tf_draws: np.ndarray, lite_draws: np.ndarray) -> int:
  """The support size of a discrete element: the spec's range if bounded, else values seen."""
  if spec is not None and hasattr(spec, "minimum") and tf_draws.dtype != np.bool_:
    size = int(np.max(spec.maximum)) - int(np.min(spec.minimum)) + 1
    if 0 < size <= 1 << 20:
      return size
  if tf_draws.dtype == np.bool_:
    return 2
  return len(np.union1d(tf_draws, lite_draws))


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
  """Total variation distance between the empirical distributions of two 1-D samples."""
  values, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
  count_a = np.bincount(inverse[:len(a)], minlength=len(values)) / len(a)
  count_b = np.bincount(inverse[len(a):], minlength=len(values)) / len(b)
  return 0.5 * float(np.abs(count_a - count_b).sum())


def kolmogorov_smirnov(a: np.ndarray, b: np.ndarray) -> float:
  """The two-sample Kolmogorov-Smirnov distance sup |F_a - F_b|."""
  a, b = np.sort(a.astype(np.float64)), np.sort(b.astype(np.float64))
  points = np.concatenate([a, b])
  return float(np.max(np.abs(np.searchsorted(a, points, side="right") / len(a) -
                             np.searchsorted(b, points, side="right") / len(b))))


def discrete_threshold(num_categories: int, draws: int, tests: int) -> float:
  return (math.sqrt(num_categories / draws) +
          2 * math.sqrt(math.log(2 * tests / ALPHA) / (2 * draws)))


def continuous_threshold(draws: int, tests: int) -> float:
  return 2 * math.sqrt(math.log(4 * tests / ALPHA) / (2 * draws))


def compare_distributions(path: str, tf_draws: List[np.ndarray], lite_draws: List[np.ndarray],
                          spec, tests: int) -> OutputCheck:
  """Element by element, over every fixed input: the worst distance against its threshold.

  `tf_draws[k]`, `lite_draws[k]`: the draws on input k, shape [draws, ...].
  """
  worst, worst_threshold, statistic = 0.0, 0.0, "total variation"
  for ref, got in zip(tf_draws, lite_draws):
    ref = ref.reshape(len(ref), -1)
    got = got.reshape(len(got), -1)
    discrete = not np.issubdtype(ref.dtype, np.floating)
    statistic = "total variation" if discrete else "Kolmogorov-Smirnov"
    for e in range(ref.shape[1]):
      if discrete:
        distance = total_variation(ref[:, e], got[:, e])
        threshold = discrete_threshold(categories(spec, ref[:, e], got[:, e]), len(ref), tests)
      else:
        distance = kolmogorov_smirnov(ref[:, e], got[:, e])
        threshold = continuous_threshold(len(ref), tests)
      if distance > threshold:
        element = f"[{e}]" if ref.shape[1] > 1 else ""
        raise ValidationError(
            f"{path}{element}: LiteRT samples from another distribution than TF: "
            f"{statistic} distance {distance:.3f} over {len(ref)} draws, above {threshold:.3f}")
      if distance / threshold >= (worst / worst_threshold if worst_threshold else 0.0):
        worst, worst_threshold = distance, threshold
  return OutputCheck(path, "sampled", worst, worst_threshold, statistic)
