"""Checks a LiteRT model against the TF function it was converted from.

Which outputs are sampled is decided statically (`graph_audit.sampled_outputs`:
does the output depend on a random op of the action graph?), never from how
two runs happen to agree.

* Deterministic outputs, on `DETERMINISTIC_CASES` sampled inputs: integers
  and bools exactly, floats within |lite - tf| <= FLOAT_RTOL * |tf| + FLOAT_ATOL.
* Sampled outputs: TF's dtype and shape and the action spec's bounds on those
  same inputs; then, on `DISTRIBUTION_INPUTS` fixed inputs, `DRAWS` samples
  from each engine (a batch of copies of the input per call; exports with a
  fixed batch size draw over repeated calls) must follow the same
  distribution, element by element:
  - discrete (integer, bool) elements: the total variation distance between
    the two empirical distributions must stay below
    sqrt(m / n) + 2 * sqrt(ln(2 T / ALPHA) / (2 n)),
    m the number of categories (the spec's range, else those seen), n the
    draws per engine, T the number of elements tested in the load;
  - continuous elements: the two-sample Kolmogorov-Smirnov distance must stay
    below 2 * sqrt(ln(4 T / ALPHA) / (2 n)).
  Both bounds hold for any distributions (McDiarmid's inequality with
  E[TV] <= sqrt(m / n) / 2 per sample; the Dvoretzky-Kiefer-Wolfowitz
  inequality), so two engines that sample the same distribution fail a load
  with probability at most ALPHA (1e-6) whatever the policy. A difference of
  twice the threshold is detected with the same probability.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.python.util import nest

FLOAT_RTOL = 1e-5
FLOAT_ATOL = 1e-5
DETERMINISTIC_CASES = 64
DISTRIBUTION_INPUTS = 4
DRAWS = 20_000
MAX_DRAW_CALLS = 256       # fixed-batch exports: at most this many calls per engine and input
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


@dataclasses.dataclass
class ValidationReport:
  """What validation found, output by output."""
  outputs: List[OutputCheck]
  draws: int                # samples per engine and input (0: nothing sampled)

  def to_json(self) -> dict:
    return {"draws": self.draws, "outputs": [o.to_json() for o in self.outputs]}


class ValidationError(ValueError):
  """The LiteRT model does not behave like the TF function (the message says where)."""


# -- Inputs ---------------------------------------------------------------------------


def _sample(spec, outer: tuple, rng: np.random.Generator, field: str) -> np.ndarray:
  shape = outer + tuple(spec.shape)
  dtype = np.dtype(spec.dtype)
  if field == "step_type":
    return rng.integers(0, 3, size=shape).astype(dtype)
  if dtype == np.bool_:
    return rng.integers(0, 2, size=shape).astype(bool)
  low = getattr(spec, "minimum", None)
  high = getattr(spec, "maximum", None)
  if np.issubdtype(dtype, np.integer):
    low = 0 if low is None else low
    high = 2 if high is None else high
    return rng.integers(np.broadcast_to(low, shape), np.broadcast_to(high, shape) + 1,
                        size=shape).astype(dtype)
  if np.issubdtype(dtype, np.floating):
    if low is not None and high is not None:
      low = np.maximum(np.broadcast_to(low, shape), -10.0)
      high = np.minimum(np.broadcast_to(high, shape), 10.0)
      return rng.uniform(low, high, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)
  raise ValueError(f"no LiteRT validation input for dtype {dtype}")


def sample_inputs(time_step_spec, policy_state_spec, time_step_outer: tuple,
                  state_outer: tuple, rng: np.random.Generator):
  """A (time_step, policy_state) of random values within the specs (floats within +-10)."""
  time_step = time_step_spec._replace(**{
      field: tf.nest.map_structure(
          lambda s, f=field: _sample(s, time_step_outer, rng, f), getattr(time_step_spec, field))
      for field in time_step_spec._fields})
  state = tf.nest.map_structure(lambda s: _sample(s, state_outer, rng, "state"),
                                policy_state_spec)
  return time_step, state


def copies(time_step, policy_state, batch: int):
  """`batch` copies of one unbatched time step and its state (a batch of 1)."""
  return (tf.nest.map_structure(lambda x: np.repeat(np.asarray(x)[None], batch, axis=0),
                                time_step),
          tf.nest.map_structure(lambda x: np.repeat(np.asarray(x), batch, axis=0),
                                policy_state))


# -- Checks ---------------------------------------------------------------------------


def leaf_paths(structure) -> List[str]:
  return [p for p, _ in nest.flatten_with_joined_string_paths(structure)]


def action_bounds(action_spec) -> dict:
  return {("action/" + p if p else "action"): spec
          for p, spec in nest.flatten_with_joined_string_paths(action_spec)}


def check_bounds(path: str, got: np.ndarray, bounds: dict) -> None:
  """Raises ValidationError if a sampled leaf leaves its action spec's bounds."""
  spec = bounds.get(path)
  if spec is not None and hasattr(spec, "minimum"):
    if np.any(got < spec.minimum) or np.any(got > spec.maximum):
      raise ValidationError(f"{path}: LiteRT sampled a value outside "
                            f"[{spec.minimum}, {spec.maximum}]")


def check_leaf(path: str, ref, got, sampled: bool, bounds: dict) -> float:
  """The leaf's worst deviation (0 for sampled leaves); raises ValidationError on a mismatch."""
  ref, got = np.asarray(ref), np.asarray(got)
  if ref.dtype != got.dtype or ref.shape != got.shape:
    raise ValidationError(f"{path}: LiteRT gives {got.dtype}{list(got.shape)}, "
                          f"TF {ref.dtype}{list(ref.shape)}")
  if sampled:
    check_bounds(path, got, bounds)
    return 0.0
  if np.issubdtype(ref.dtype, np.floating):
    close = np.isclose(got, ref, rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True)
    diff = np.abs(got.astype(np.float64) - ref)
    if not close.all():
      if np.isnan(diff[~close]).any():
        first = np.argwhere(~close & np.isnan(diff))[0]
        raise ValidationError(f"{path}: LiteRT gives {got[tuple(first)]} where TF gives "
                              f"{ref[tuple(first)]} (non-finite intermediate values?)")
      raise ValidationError(f"{path}: LiteRT differs from TF by up to {np.max(diff[~close]):.3g} "
                            f"(tolerance {FLOAT_RTOL:g} * |tf| + {FLOAT_ATOL:g})")
    finite = diff[np.isfinite(diff)]
    return float(finite.max()) if finite.size else 0.0
  if not np.array_equal(got, ref):
    raise ValidationError(f"{path}: LiteRT gives {got.ravel()[:4]}..., TF {ref.ravel()[:4]}...")
  return 0.0


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


def draw_plan(fixed_batch: Optional[int]) -> tuple:
  """(batch per call, calls) for the draws of one input on one engine."""
  if fixed_batch is None:
    return DRAWS, 1
  return fixed_batch, max(1, min(MAX_DRAW_CALLS, math.ceil(DRAWS / fixed_batch)))
