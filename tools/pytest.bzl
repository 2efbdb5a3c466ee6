"""`pytest_test`: a py_test that runs one pytest file with the shared fixtures."""

def pytest_test(name, srcs = None, deps = [], data = [], **kwargs):
    """Runs `<name>.py` under pytest (tests/conftest.py fixtures included)."""
    srcs = srcs or [name + ".py"]
    native.py_test(
        name = name,
        srcs = srcs + ["conftest.py", "pytest_main.py", "spec_strategies.py"],
        main = srcs[0],
        python_version = "PY3",
        srcs_version = "PY3",
        deps = deps + [
            "//policies",
            "//tools:policy_zoo",
        ],
        data = data,
        **kwargs
    )
