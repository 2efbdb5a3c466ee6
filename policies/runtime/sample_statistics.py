"""Whether two engines sample from the same distribution, without TensorFlow.

The statistics and thresholds of the LiteRT engine's distribution check
(`policies.engines.lite_validation` explains them), usable where TensorFlow
is not (e.g. to compare a compiled policy's draws with stored ones):

  - discrete (integer, bool) elements: total variation distance below
    sqrt(m / n) + 2 * sqrt(ln(2 T / ALPHA) / (2 n));
  - continuous elements: two-sample Kolmogorov-Smirnov distance below
    2 * sqrt(ln(4 T / ALPHA) / (2 n)), where the distance allows each value
    the deterministic tolerance (`kolmogorov_smirnov(a, b, rtol, atol)`): an
    output that mixes a deterministic part with random draws (a bandit's
    predicted rewards, greedy in most rows and random in exploring ones)
    differs between the engines by float rounding in its deterministic part,
    which must not count as another distribution;
  - how often samples leave the action spec's bounds: never, if TF's never
    do; else within 2 * sqrt(ln(4 T / ALPHA) / (2 n)) of TF's rate (policies
    that sample unclipped, like PPO's collect policies, leave them in TF too),

m the number of categories, n the draws per engine, T the number of elements
tested, ALPHA the false-alarm probability of the distribution check. A load's
false alarms stay below TOTAL_ALPHA = 1e-6 in all: the distribution check has
ALPHA = TOTAL_ALPHA - 2 SIDE_ALPHA, and the bounds-rate check and (for noise
drawn over consecutive calls) the autocorrelation check SIDE_ALPHA = 1e-8
each.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional

import numpy as np

TOTAL_ALPHA = 1e-6         # false-alarm probability per load, every check together
SIDE_ALPHA = 1e-8          # the bounds-rate check's, and the autocorrelation check's
ALPHA = TOTAL_ALPHA - 2 * SIDE_ALPHA   # the distribution check's


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


def kolmogorov_smirnov(a: np.ndarray, b: np.ndarray, rtol: float = 0.0,
                       atol: float = 0.0) -> float:
  """The two-sample Kolmogorov-Smirnov distance sup |F_a - F_b|, each value x allowed to move
  by t(x) = atol + rtol |x|: sup_x max(F_a(x) - F_b(x + t(x)), F_b(x) - F_a(x + t(x))).

  If b's values are a's distribution, each moved by at most that, this is at most the
  plain distance between two samples of one distribution, so the threshold holds.
  """
  a, b = np.sort(a.astype(np.float64)), np.sort(b.astype(np.float64))
  points = np.concatenate([a, b])
  moved = points + atol + rtol * np.abs(points) * (1 + rtol)
  cdf = lambda sample, x: np.searchsorted(sample, x, side="right") / len(sample)  # noqa: E731
  return float(max(0.0, np.max(cdf(a, points) - cdf(b, moved)),
                   np.max(cdf(b, points) - cdf(a, moved))))


def discrete_threshold(num_categories: int, draws: int, tests: int) -> float:
  return (math.sqrt(num_categories / draws) +
          2 * math.sqrt(math.log(2 * tests / ALPHA) / (2 * draws)))


def continuous_threshold(draws: int, tests: int, alpha: float = ALPHA) -> float:
  return 2 * math.sqrt(math.log(4 * tests / alpha) / (2 * draws))


def bounds_rate(draws: List[np.ndarray], spec) -> float:
  """The fraction of sampled elements outside `spec`'s bounds."""
  outside = [np.mean((d < spec.minimum) | (d > spec.maximum)) for d in draws if d.size]
  return float(np.mean(outside)) if outside else 0.0


def check_bounds_rate(path: str, tf_draws: List[np.ndarray], lite_draws: List[np.ndarray],
                      spec, tests: int) -> None:
  """LiteRT's samples leave `spec`'s bounds never if TF's never do, else about as often."""
  if spec is None or not hasattr(spec, "minimum"):
    return
  tf_rate, lite_rate = bounds_rate(tf_draws, spec), bounds_rate(lite_draws, spec)
  if tf_rate == 0.0:
    if lite_rate > 0.0:
      raise ValidationError(f"{path}: LiteRT sampled a value outside "
                            f"[{spec.minimum}, {spec.maximum}]")
    return
  draws = min(len(d) for d in tf_draws)
  allowed = continuous_threshold(draws, tests, SIDE_ALPHA)   # Hoeffding, as the KS bound
  if abs(lite_rate - tf_rate) > allowed:
    raise ValidationError(f"{path}: LiteRT samples outside [{spec.minimum}, {spec.maximum}] "
                          f"at a rate of {lite_rate:.4f}, TF at {tf_rate:.4f} (allowed "
                          f"difference {allowed:.4f} over {draws} draws)")


def compare_distributions(path: str, tf_draws: List[np.ndarray], lite_draws: List[np.ndarray],
                          spec, tests: int, rtol: float = 0.0, atol: float = 0.0,
                          draws: Optional[int] = None) -> OutputCheck:
  """Element by element, over every fixed input: the worst distance against its threshold.

  `tf_draws[k]`, `lite_draws[k]`: the draws on input k, shape [draws, ...]. Continuous
  values may differ by `atol + rtol * |value|` (the deterministic tolerance).
  `draws`: the effective number of draws the thresholds use (default: all of them).
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
        threshold = discrete_threshold(categories(spec, ref[:, e], got[:, e]), draws or len(ref),
                                       tests)
      else:
        distance = kolmogorov_smirnov(ref[:, e], got[:, e], rtol, atol)
        threshold = continuous_threshold(draws or len(ref), tests)
      if distance > threshold:
        element = f"[{e}]" if ref.shape[1] > 1 else ""
        raise ValidationError(
            f"{path}{element}: LiteRT samples from another distribution than TF: "
            f"{statistic} distance {distance:.3f} over {len(ref)} draws, above {threshold:.3f}")
      if distance / threshold >= (worst / worst_threshold if worst_threshold else 0.0):
        worst, worst_threshold = distance, threshold
  return OutputCheck(path, "sampled", worst, worst_threshold, statistic)
