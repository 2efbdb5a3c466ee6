"""Checks a LiteRT model against the TF function it was converted from.

Which outputs are sampled is decided statically (`graph_audit.sampled_outputs`:
does the output depend on a random op of the action graph?), never from how
two runs happen to agree.

* Deterministic outputs, on `DETERMINISTIC_CASES` sampled inputs: integers
  and bools exactly, floats within |lite - tf| <= FLOAT_RTOL * |tf| + FLOAT_ATOL.
* Sampled outputs: TF's dtype and shape on those same inputs; then, on
  `DISTRIBUTION_INPUTS` fixed inputs, `DRAWS` samples from each engine (a
  batch of copies of the input per call; exports with a fixed batch size draw
  over repeated calls) must follow the same distribution, element by element:
  - discrete (integer, bool) elements: the total variation distance between
    the two empirical distributions must stay below
    sqrt(m / n) + 2 * sqrt(ln(2 T / ALPHA) / (2 n)),
    m the number of categories (the spec's range, else those seen), n the
    draws per engine, T the number of elements tested in the load;
  - continuous elements: the two-sample Kolmogorov-Smirnov distance, each
    value allowed the deterministic tolerance (an output that mixes greedy
    values with random ones, as a bandit's predicted rewards), must stay
    below 2 * sqrt(ln(4 T / ALPHA) / (2 n));
  - samples leave the action spec's bounds never if TF's never do, else at
    TF's rate within 2 * sqrt(ln(4 T / SIDE_ALPHA) / (2 n)) (Hoeffding;
    PPO's collect policies sample unclipped, in TF too).
  Both distribution bounds hold for any distributions (McDiarmid's inequality
  with E[TV] <= sqrt(m / n) / 2 per sample; the Dvoretzky-Kiefer-Wolfowitz
  inequality). A difference of twice the threshold is detected with the same
  probability.
* Noise that TF draws once per call and shares across the batch (TD3's
  Gaussian exploration, DDPG's Ornstein-Uhlenbeck noise, which also flows
  through variables): every row of a call's batch equal on TF. Such outputs
  are drawn over `SHARED_NOISE_CALLS` consecutive calls of batch 1 instead,
  with the distribution threshold at the effective number of draws of TF's
  lag-1 autocorrelation, and the engines' autocorrelations compared
  (`compare_processes`).
Two engines that sample the same way fail a load with probability at most
TOTAL_ALPHA (1e-6) over all these checks, whatever the policy (for noise over
consecutive calls, exactly so for AR(1) processes such as OU noise).

Reduced precision (`precision="int8"`) cannot match TF to 1e-5, so its
deterministic outputs are checked on `AGREEMENT_ROWS` sampled rows instead
(`check_agreement`): integer and bool outputs must agree with TF on at least
`MIN_AGREEMENT` of the rows (every element of a row equal), float outputs must
stay within `REDUCED_FLOAT_BOUND` of the leaf's range (the action spec's for
bounded actions, else TF's values' over the rows). Sampled outputs go through
the distribution checks above unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from tensorflow.python.util import nest

# The statistics live without TF, for checks where TF is not.
from ..runtime.sample_statistics import (  # noqa: F401
    ALPHA, SIDE_ALPHA, TOTAL_ALPHA, OutputCheck, ValidationError, check_bounds_rate,
    compare_distributions,
    continuous_threshold,
    discrete_threshold, kolmogorov_smirnov, total_variation)

FLOAT_RTOL = 1e-5
FLOAT_ATOL = 1e-5
DETERMINISTIC_CASES = 64
DISTRIBUTION_INPUTS = 4
DRAWS = 20_000
MAX_DRAW_CALLS = 256       # fixed-batch exports: at most this many calls per engine and input
# Noise drawn once per call (shared across the batch): drawn over this many calls of batch 1.
SHARED_NOISE_CALLS = 10_000
SHARED_NOISE_MIN_BATCH = 64   # a batch this large with equal rows every call shares its noise
# Reduced precision (see the module docstring).
AGREEMENT_ROWS = 4096
AGREEMENT_BATCH = 512         # rows per call (exports with a fixed batch size use theirs)
MIN_AGREEMENT = 0.999
REDUCED_FLOAT_BOUND = 0.03


@dataclasses.dataclass
class ValidationReport:
  """What validation found, output by output."""
  outputs: List[OutputCheck]
  draws: int                # samples per engine and input (0: nothing sampled)
  precision: str = "fp32"
  # Reduced precision: per integer or bool output, the fraction of sampled rows
  # on which LiteRT agrees with TF.
  agreement: Dict[str, float] = dataclasses.field(default_factory=dict)
  # How many of the user's observations validation drew from (None: all sampled).
  observations: Optional[int] = None

  def to_json(self) -> dict:
    return {"precision": self.precision, "draws": self.draws,
            "agreement": dict(self.agreement), "observations": self.observations,
            "outputs": [o.to_json() for o in self.outputs]}


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
    # In the leaf's own dtype with an inclusive end: a bound at the dtype's limit
    # (uint8 pixels in [0, 255]) cannot overflow.
    low = np.broadcast_to(np.asarray(0 if low is None else low).astype(dtype), shape)
    high = np.broadcast_to(np.asarray(2 if high is None else high).astype(dtype), shape)
    return rng.integers(low, high, size=shape, dtype=dtype, endpoint=True)
  if np.issubdtype(dtype, np.floating):
    if low is not None and high is not None:
      low = np.broadcast_to(np.asarray(low, np.float64), shape)
      high = np.broadcast_to(np.asarray(high, np.float64), shape)
      # Within +-10 where the bounds reach there (finite intermediate values).
      inner_low, inner_high = np.maximum(low, -10.0), np.minimum(high, 10.0)
      empty = inner_low > inner_high
      inner_low = np.where(empty, low, inner_low)
      inner_high = np.where(empty, np.minimum(high, low + 20.0), inner_high)
      return rng.uniform(inner_low, inner_high, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)
  raise ValueError(f"no LiteRT validation input for dtype {dtype}")


def sample_inputs(time_step_spec, policy_state_spec, time_step_outer: tuple,
                  state_outer: tuple, rng: np.random.Generator,
                  observations: Optional["ObservationRows"] = None):
  """A (time_step, policy_state) of random values within the specs (floats within +-10).

  With `observations`, each time step's observation is the next of the
  user's rows instead (see `ObservationRows`); the other fields and the state
  are sampled.
  """
  fields = {}
  for field in time_step_spec._fields:
    if field == "observation" and observations is not None:
      fields[field] = observations.take(time_step_outer)
    else:
      fields[field] = tf.nest.map_structure(
          lambda s, f=field: _sample(s, time_step_outer, rng, f), getattr(time_step_spec, field))
  state = tf.nest.map_structure(lambda s: _sample(s, state_outer, rng, "state"),
                                policy_state_spec)
  return time_step_spec._replace(**fields), state


def _leaf_name(name: str, path: tuple) -> str:
  return name + "".join(f"[{k!r}]" if isinstance(k, str) else f"[{k}]" for k in path)


def _numpy_dtype(spec) -> np.dtype:
  return np.dtype(getattr(spec.dtype, "as_numpy_dtype", spec.dtype))


def _spec_text(spec, rows: str) -> str:
  dims = ",".join("?" if d is None else str(d) for d in tf.TensorShape(spec.shape).as_list())
  return f"{_numpy_dtype(spec).name}[{rows}{',' if dims else ''}{dims}]"


class ObservationRows:
  """The user's validation observations, checked against the observation spec.

  Keeps a copy of at most `limit` rows (drawn at random when there are more):
  validation never uses more rows than `AGREEMENT_ROWS`. `take` hands them out
  in a shuffled order, cycling, so that a validation drawing at least as many
  rows as are kept sees every one of them.
  """

  def __init__(self, observations, observation_spec, rng: np.random.Generator,
               limit: int = AGREEMENT_ROWS, name: str = "validation_observations"):
    specs = nest.flatten_with_tuple_paths(observation_spec)
    try:
      leaves = nest.flatten_up_to(observation_spec, observations)
    except (TypeError, ValueError) as e:
      raise TypeError(f"{name}: expected the observation spec's structure "
                      f"{tf.nest.map_structure(lambda _: '.', observation_spec)!r}, got "
                      f"{type(observations).__name__}: {str(e).splitlines()[0]}") from None
    arrays, count = [], None
    for (path, spec), leaf in zip(specs, leaves):
      field = _leaf_name(name, path)
      try:
        array = np.asarray(leaf)
      except ValueError as e:   # e.g. a ragged sequence
        raise TypeError(f"{field}: expected an array, got {type(leaf).__name__}: {e}") from None
      inner = tf.TensorShape(spec.shape)
      dtype = _numpy_dtype(spec)
      if (array.dtype != dtype or array.ndim != inner.rank + 1 or
          not inner.is_compatible_with(array.shape[1:])):
        got = f"{array.dtype.name}[{','.join(map(str, array.shape))}]"
        if not isinstance(leaf, (np.ndarray, np.generic)) and array.dtype.kind in "OUS":
          got = type(leaf).__name__   # a dict, a string: not an array at all
        error = TypeError if array.dtype != dtype else ValueError
        raise error(f"{field}: expected {_spec_text(spec, 'N')} (N >= 1 observations), "
                    f"got {got}")
      if count is not None and len(array) != count:
        raise ValueError(f"{field}: expected the same N as the other leaves ({count}), got "
                         f"{len(array)}")
      count = len(array)
      arrays.append(array)
    if not count:
      raise ValueError(f"{name}: expected N >= 1 observations, got none")
    keep = np.sort(rng.choice(count, limit, replace=False)) if count > limit else slice(None)
    self._leaves = [np.array(a[keep]) for a in arrays]   # copies: the caller's may change
    self._spec = observation_spec
    self.count = len(self._leaves[0])
    self._rng = rng
    self._order = np.empty(0, np.int64)

  def take(self, outer: tuple):
    """The next rows, shaped `outer` (() for one unbatched observation)."""
    size = int(np.prod(outer, dtype=np.int64))
    while len(self._order) < size:
      self._order = np.concatenate([self._order, self._rng.permutation(self.count)])
    rows, self._order = self._order[:size].reshape(outer), self._order[size:]
    return tf.nest.pack_sequence_as(self._spec, [leaf[rows] for leaf in self._leaves])


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


def _check_type(path: str, ref: np.ndarray, got: np.ndarray) -> None:
  if ref.dtype != got.dtype or ref.shape != got.shape:
    raise ValidationError(f"{path}: LiteRT gives {got.dtype}{list(got.shape)}, "
                          f"TF {ref.dtype}{list(ref.shape)}")


def check_leaf(path: str, ref, got, sampled: bool, bounds: dict) -> float:
  """The leaf's worst deviation (0 for sampled leaves); raises ValidationError on a mismatch."""
  ref, got = np.asarray(ref), np.asarray(got)
  _check_type(path, ref, got)
  if sampled:   # bounds and distribution: checked over many draws (_check_distributions)
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


def check_agreement(path: str, ref: np.ndarray, got: np.ndarray, sampled: bool, bounds: dict,
                    precision: str) -> tuple:
  """One output leaf of a reduced-precision model over many rows: (OutputCheck, agreement).

  `agreement` is the fraction of rows equal to TF's for integer and bool
  leaves, None for others. Raises ValidationError naming the figure when the
  leaf misses the criterion (see the module docstring).
  """
  _check_type(path, ref, got)
  if sampled:   # replaced by the distribution checks
    return OutputCheck(path, "sampled", 0.0, 1.0, "checked over draws"), None
  rows = len(ref)
  if not np.issubdtype(ref.dtype, np.floating):
    equal = np.all((got == ref).reshape(rows, -1), axis=1)
    agreement = float(equal.mean()) if rows else 1.0
    if agreement < MIN_AGREEMENT:
      raise ValidationError(
          f"{path}: {precision} LiteRT agrees with TF on {agreement:.2%} of {rows} sampled rows "
          f"(at least {MIN_AGREEMENT:.1%} needed)")
    return OutputCheck(path, "deterministic", 1.0 - agreement, 1.0 - MIN_AGREEMENT,
                       f"fraction of rows that differ from TF ({precision})"), agreement
  ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
  if not np.all(np.isfinite(got64) == np.isfinite(ref64)):
    raise ValidationError(f"{path}: {precision} LiteRT gives non-finite values where TF "
                          f"does not, or the reverse")
  finite = np.isfinite(ref64)
  scale = _range(path, ref64[finite], bounds)
  worst = float(np.max(np.abs(got64[finite] - ref64[finite]))) / scale if finite.any() else 0.0
  if worst > REDUCED_FLOAT_BOUND:
    raise ValidationError(f"{path}: {precision} LiteRT differs from TF by up to {worst:.2%} of "
                          f"the output's range (at most {REDUCED_FLOAT_BOUND:.0%} allowed)")
  return OutputCheck(path, "deterministic", worst, REDUCED_FLOAT_BOUND,
                     f"max abs difference / the output's range ({precision})"), None


def _range(path: str, values: np.ndarray, bounds: dict) -> float:
  """The action spec's range for a bounded action leaf, else the values' (at least 1e-6)."""
  spec = bounds.get(path)
  if spec is not None and hasattr(spec, "minimum"):
    spread = np.max(np.asarray(spec.maximum, np.float64) - np.asarray(spec.minimum, np.float64))
    if np.isfinite(spread) and spread > 0:
      return float(spread)
  spread = float(values.max() - values.min()) if values.size else 0.0
  return max(spread, 1e-6)


def compare_processes(path: str, tf_draws: np.ndarray, lite_draws: np.ndarray, spec,
                      tests: int, rtol: float, atol: float) -> OutputCheck:
  """One output drawn over consecutive calls on each engine: distribution and lag-1
  autocorrelation, element by element, allowing for the correlation between draws.

  With TF's lag-1 autocorrelation r (0 if negative), the distribution check
  uses n (1 - r) / (1 + r) effective draws (an AR(1) process's), and each
  engine's autocorrelation must be within z sqrt(2 (1 - r^2) / n) of the
  other's, z the normal quantile of SIDE_ALPHA / (2 T) (Bonferroni over the T
  elements); an OU noise with another damping fails the second. Both
  corrections are exact for an AR(1) process (OU noise; independent draws
  are r = 0) and approximate for others.
  """
  ref = tf_draws.reshape(len(tf_draws), -1).astype(np.float64)
  got = lite_draws.reshape(len(lite_draws), -1).astype(np.float64)
  worst = OutputCheck(path, "sampled", 0.0, 1.0, "Kolmogorov-Smirnov")
  for e in range(ref.shape[1]):
    element = f"[{e}]" if ref.shape[1] > 1 else ""
    r_tf, r_lite = _lag1(ref[:, e]), _lag1(got[:, e])
    effective = max(2, int(len(ref) * (1 - max(r_tf, 0.0)) / (1 + max(r_tf, 0.0))))
    allowed = _normal_quantile(SIDE_ALPHA / (2 * tests)) * math.sqrt(
        2 * (1 - min(r_tf, 0.999) ** 2) / len(ref))
    if abs(r_tf - r_lite) > allowed:
      raise ValidationError(f"{path}{element}: LiteRT's draws over consecutive calls are "
                            f"correlated unlike TF's: lag-1 autocorrelation {r_lite:.3f}, TF "
                            f"{r_tf:.3f} (allowed difference {allowed:.3f})")
    check_bounds_rate(f"{path}{element}", [ref[:, e:e + 1]], [got[:, e:e + 1]], _element(spec, e),
                      tests)
    check = compare_distributions(f"{path}{element}", [ref[:, e]],
                                  [got[:, e]], spec, tests, rtol, atol, draws=effective)
    if check.figure / check.threshold >= worst.figure / worst.threshold:
      worst = dataclasses.replace(check, path=path)
  return worst


def _lag1(x: np.ndarray) -> float:
  x = x - x.mean()
  denominator = float(np.dot(x, x))
  return float(np.dot(x[:-1], x[1:]) / denominator) if denominator > 0 else 0.0


def _normal_quantile(upper_tail: float) -> float:
  """z with P(Z > z) = upper_tail (bisection on erfc; no SciPy)."""
  low, high = 0.0, 40.0
  for _ in range(200):
    middle = (low + high) / 2
    if 0.5 * math.erfc(middle / math.sqrt(2)) > upper_tail:
      low = middle
    else:
      high = middle
  return high


def _element(spec, e: int):
  """The bounds of element `e` of a flattened leaf, as a spec-like object (or None)."""
  if spec is None or not hasattr(spec, "minimum"):
    return None
  shape = tuple(spec.shape) or (1,)
  low = np.broadcast_to(spec.minimum, shape).reshape(-1)[e]
  high = np.broadcast_to(spec.maximum, shape).reshape(-1)[e]
  return types.SimpleNamespace(minimum=low, maximum=high)


def draw_plan(fixed_batch: Optional[int]) -> tuple:
  """(batch per call, calls) for the draws of one input on one engine."""
  if fixed_batch is None:
    return DRAWS, 1
  return fixed_batch, max(1, min(MAX_DRAW_CALLS, math.ceil(DRAWS / fixed_batch)))
