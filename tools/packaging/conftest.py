"""Command-line options of the wheel smoke tests (wheel_smoke.sh passes them)."""


def pytest_addoption(parser):
  for name in ("policy", "compiled", "actions"):
    parser.addoption("--" + name, default=None)
