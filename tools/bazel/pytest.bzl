"""`pytest_test`: a py_test per stack that runs one pytest file with the shared fixtures.

`tffree_test`: one that runs a pytest file in the environment without TensorFlow.
"""

load(":stacks.bzl", "PRIMARY", "STACKS", "TFFREE")

def pytest_test(name, srcs = None, deps = [], data = [], args = [], tags = [],
                primary_only = False, **kwargs):
    """Runs `<name>.py` (or `srcs[0]`) under pytest, tests/conftest.py fixtures included.

    `<name>` runs on the primary stack; `<name>_<stack>` (e.g. `_py313`, tagged
    with the stack's name) re-executes the same runfiles under that stack's
    interpreter, unless `primary_only` (a dependency with no wheel for the
    other stacks, such as dm-reverb). The entry point is always
    tests/pytest_main.py, so a test file needs no `__main__` block and cannot
    pass by never starting pytest.
    """
    srcs = srcs or [name + ".py"]
    for stack in STACKS:
        primary = stack.name == PRIMARY.name
        if primary_only and not primary:
            continue
        native.py_test(
            name = name if primary else name + "_" + stack.name,
            srcs = srcs + ["conftest.py", "pytest_main.py", "spec_strategies.py"],
            main = "pytest_main.py",
            args = ([] if primary else ["--python=" + stack.python]) +
                   ["%s/%s" % (native.package_name(), srcs[0])] + args,
            python_version = "PY3",
            srcs_version = "PY3",
            tags = tags + ([] if primary else [stack.name]),
            deps = deps + [
                "//policies",
                "//tools/fixtures:policy_zoo",
            ],
            data = data + [stack.repository + "//:interpreter"],
            **kwargs
        )


def tffree_test(name, srcs, deps = [], data = [], tags = [], **kwargs):
    """Runs `srcs[0]` under pytest in the TF-free environment (tagged "tffree").

    No conftest.py (it imports TensorFlow): the test's closure is `deps`, which
    must hold nothing that imports TensorFlow either.
    """
    native.py_test(
        name = name,
        srcs = srcs + ["pytest_main.py"],
        args = [
            "--python=" + TFFREE.python,
            "%s/%s" % (native.package_name(), srcs[0]),
        ],
        main = "pytest_main.py",
        python_version = "PY3",
        srcs_version = "PY3",
        tags = tags + ["tffree"],
        data = data + [TFFREE.repository + "//:interpreter"],
        deps = deps + ["//tools/fixtures:tf_agents_keras"],
        **kwargs
    )
