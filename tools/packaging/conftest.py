"""Options and inputs shared by the wheel smoke tests (wheel_smoke.sh passes the options)."""

import numpy as np
import pytest

_OPTIONS = ("policy", "compiled", "actions")


def pytest_addoption(parser):
  for name in _OPTIONS:
    parser.addoption("--" + name, default=None)


@pytest.fixture(scope="session")
def options(request):
  return {name: request.config.getoption(name) for name in _OPTIONS}


@pytest.fixture(scope="session")
def observations():
  """A batch of CartPole first observations (the embedded policy's)."""
  return np.random.default_rng(0).uniform(-0.2, 0.2, (16, 4)).astype(np.float32)
