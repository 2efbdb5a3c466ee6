"""`pytest_test`: a py_test that runs one pytest file with the shared fixtures."""

def pytest_test(name, srcs = None, deps = [], data = [], args = [], **kwargs):
    """Runs `<name>.py` (or `srcs[0]`) under pytest, tests/conftest.py fixtures included.

    The entry point is always tests/pytest_main.py, so a test file needs no
    `__main__` block and cannot pass by never starting pytest.
    """
    srcs = srcs or [name + ".py"]
    native.py_test(
        name = name,
        srcs = srcs + ["conftest.py", "pytest_main.py", "spec_strategies.py"],
        main = "pytest_main.py",
        args = ["%s/%s" % (native.package_name(), srcs[0])] + args,
        python_version = "PY3",
        srcs_version = "PY3",
        deps = deps + [
            "//policies",
            "//tools:policy_zoo",
        ],
        data = data,
        **kwargs
    )
