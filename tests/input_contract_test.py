"""One input contract on every engine: what one accepts, all accept; what one refuses,
all refuse with the same message.

Leaves may be numpy arrays and scalars, Python numbers and lists, eager
tensors, and any object that gives an array through numpy's protocols
(`__array__`, `__array_interface__`, `__array_struct__`) or DLPack
(`__dlpack__`): JAX, PyTorch and the like, without this project importing
them. Such an array is then held to the same exact-dtype rule as a numpy one.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.trajectories import time_step as ts

from policy_runtime.policies import SavedModelPyTFEagerPolicy, compile_policy
from policy_runtime.policies import compiled
from tools.fixtures import policy_zoo


class ArrayMethod:
  def __init__(self, array):
    self._array = array

  def __array__(self, dtype=None, copy=None):
    return self._array if dtype is None else self._array.astype(dtype)


class ArrayInterface:
  def __init__(self, array):
    self._array = array
    self.__array_interface__ = array.__array_interface__


class DlpackOnly:
  def __init__(self, array):
    self._array = array

  def __dlpack__(self, **kwargs):
    return self._array.__dlpack__(**kwargs)

  def __dlpack_device__(self):
    return self._array.__dlpack_device__()


class RaisingArray:
  def __array__(self, dtype=None, copy=None):
    raise RuntimeError("device lost")


class NotAnArray:
  pass


WRAPPERS = {
    "numpy": lambda a: a,
    "eager tensor": tf.constant,
    "__array__": ArrayMethod,
    "__array_interface__": ArrayInterface,
    "__dlpack__": DlpackOnly,
}


def _every_engine(root, policy) -> dict:
  """`policy` exported under `root`, on each engine, and TF-Agents' class beside them."""
  from tf_agents.policies import py_tf_eager_policy  # pylint: disable=import-outside-toplevel
  path = str(root / "export")
  policy_zoo.save(policy, path)
  compile_policy(path, str(root / "compiled"))
  return {
      "tf_agents": py_tf_eager_policy.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True),
      "tf": SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="tf"),
      "lite": SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="lite"),
      "compiled": compiled.CompiledPolicy(str(root / "compiled")),
  }


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
  found = _every_engine(tmp_path_factory.mktemp("contract"), policy_zoo.q_mlp_policy())
  del found["tf_agents"]   # ours only: every one must refuse alike
  return found


def _step(observation):
  return ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), observation)


OBSERVATIONS = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)


@pytest.mark.parametrize("engine", ["tf", "lite", "compiled"])
@pytest.mark.parametrize("kind", sorted(WRAPPERS))
def test_every_array_provider_acts_like_the_numpy_array(engines, engine, kind):
  policy = engines[engine]
  for observation in OBSERVATIONS:
    expected = policy.action(_step(observation)).action
    got = policy.action(_step(WRAPPERS[kind](observation.copy()))).action
    np.testing.assert_array_equal(got, expected)


def _error(policy, leaf):
  with pytest.raises((TypeError, ValueError)) as info:
    policy.action(_step(leaf))
  return info.type, str(info.value).splitlines()[0]


@pytest.mark.parametrize("leaf, expected", [
    (NotAnArray(), r"time_step.observation: expected .*float32.*, got NotAnArray"),
    (ArrayMethod(np.zeros(4, np.float64)), r"time_step.observation: expected .*float32.*float64"),
    (RaisingArray(), r"time_step.observation: its __array__ raised: RuntimeError: device lost"),
    (DlpackOnly(np.zeros((2, 3), np.float32)), r"time_step.observation: expected float32\[4\], got float32\[2,3\]"),
])
def test_every_engine_refuses_alike(engines, leaf, expected):
  errors = {name: _error(policy, leaf) for name, policy in engines.items()}
  assert len(set(errors.values())) == 1, errors
  kind, message = errors["tf"]
  assert kind in (TypeError, ValueError)
  assert re.search(expected, message), message


class GetitemDict(dict):
  """A dict subclass whose __getitem__ differs from its storage (TF-Agents' class also calls it
  on the tensors it made from the storage, inside its functions)."""

  def __getitem__(self, key):
    value = super().__getitem__(key)
    return value + np.ones((), getattr(value.dtype, "as_numpy_dtype", value.dtype))


@pytest.fixture(scope="module")
def dict_engines(tmp_path_factory):
  return _every_engine(tmp_path_factory.mktemp("dict_contract"),
                       policy_zoo.lstm_actor_policy(greedy=True))


@pytest.mark.parametrize("engine", ["tf", "lite", "compiled"])
def test_dict_subclasses_are_read_through_getitem_as_tf_agents_reads_them(dict_engines, engine):
  policy, reference = dict_engines[engine], dict_engines["tf_agents"]
  spec = reference.time_step_spec.observation
  rng = np.random.default_rng(1)
  for _ in range(5):
    stored = {k: rng.normal(size=s.shape).astype(s.dtype) for k, s in spec.items()}
    subclass = GetitemDict(stored)
    read = {k: subclass[k] for k in stored}
    act = lambda p, obs: np.asarray(  # noqa: E731
        p.action(ts.restart(obs), p.get_initial_state(1)).action)
    got = act(policy, subclass)
    np.testing.assert_array_equal(got, act(policy, read))
    assert not np.array_equal(got, act(policy, stored))    # the storage is not what is read
    if engine == "tf":
      np.testing.assert_array_equal(got, act(reference, subclass))
