"""What a workspace calls to build policy_runtime, as its root or as an external repository.

    load("@policy_runtime//tools/bazel:deps.bzl", "policy_runtime_dependencies")
    policy_runtime_dependencies()   # or python = "/path/to/venv/bin/python"

It declares the Python environments the project builds against, registers the
primary one's toolchain, and (where the workspace has not declared them) the
offline stand-ins for the repositories Bazel 4.2.3 would otherwise download.
"""

load(":python_configure.bzl", "python_configure", "venv_interpreter")

# Environment variables that name each slot's interpreter.
PYTHON_ENV = "PYTHON_BIN_PATH"
PYTHON313_ENV = "PYTHON313_BIN_PATH"
PYTHON_TFFREE_ENV = "PYTHON313_TFFREE_BIN_PATH"

def _copy_of_directory_impl(rctx):
    source = rctx.path(rctx.attr.marker).dirname if rctx.attr.marker else rctx.path(rctx.attr.path)
    if not source.exists:
        fail(("{}: {} does not exist (Debian's bazel-rules-java provides it). Install it, or " +
              "call policy_runtime_dependencies(offline_stand_ins = False) where Bazel can " +
              "download its own.").format(rctx.name, source))
    for child in source.readdir():
        rctx.symlink(child, child.basename)

# A repository made of another directory's files: one of this project's
# (`marker`, any file at its top) or an absolute `path`. A repository rule can
# find this project's directories where `local_repository(path = ...)` in a
# macro cannot (the path would be relative to the consumer's workspace).
_copy_of_directory = repository_rule(
    implementation = _copy_of_directory_impl,
    attrs = {
        "marker": attr.label(allow_single_file = True),
        "path": attr.string(),
    },
    local = True,
)

def _offline_stand_ins():
    """rules_cc, rules_java and remote_coverage_tools, unless already declared."""
    existing = native.existing_rules()
    if "rules_cc" not in existing:
        _copy_of_directory(name = "rules_cc", marker = Label("//tools/bazel/rules_cc:WORKSPACE"))
    if "remote_coverage_tools" not in existing:
        _copy_of_directory(
            name = "remote_coverage_tools",
            marker = Label("//tools/bazel/remote_coverage_tools:WORKSPACE"),
        )
    if "rules_java" not in existing:
        # Debian's bazel-rules-java package.
        _copy_of_directory(name = "rules_java", path = "/usr/share/bazel/rules/java")

def policy_runtime_dependencies(
        python = None,
        python313 = None,
        python_tffree = None,
        register_toolchain = True,
        offline_stand_ins = True,
        development = False):
    """Declares what building policy_runtime needs.

    Every slot's interpreter is, in order: its argument, its environment
    variable, then the primary one's (`python`, then `PYTHON_BIN_PATH`), so
    one interpreter (with requirements.txt installed) serves every slot and
    only its native extension is built. It needs numpy and pybind11; the code
    it runs needs the packages in requirements.txt.

    Args:
      python: the primary interpreter (runs every py_binary and py_test).
      python313: a second stack's interpreter; the project's own tests run
        their `_py313` variants under it.
      python_tffree: an environment without TensorFlow (the `_tffree` tests).
      register_toolchain: register the primary interpreter as the Python
        toolchain. Without it, the workspace's own toolchain must have the
        packages in requirements.txt.
      offline_stand_ins: declare rules_cc, rules_java and
        remote_coverage_tools from local copies when the workspace has not.
      development: this project's own WORKSPACE: each slot also looks for its
        venv from tools/setup.sh, and never falls back to another slot's.
    """
    primary = (["path:" + python] if python else []) + ["env:" + PYTHON_ENV]
    if development:
        py311 = primary + ["venv:.venv"]
        py313 = ["env:" + PYTHON313_ENV, "venv:.venv-py313"]
        tffree = ["env:" + PYTHON_TFFREE_ENV, "venv:.venv-tffree"]
    else:
        py311 = primary
        py313 = (["path:" + python313] if python313 else []) + ["env:" + PYTHON313_ENV] + primary
        tffree = ((["path:" + python_tffree] if python_tffree else []) +
                  ["env:" + PYTHON_TFFREE_ENV] + py313)
    if offline_stand_ins:
        _offline_stand_ins()

    python_configure(
        name = "policy_runtime_python",
        slot = "py311",
        candidates = py311,
        requirements = Label("//:requirements.txt"),
    )
    python_configure(
        name = "policy_runtime_python313",
        slot = "py313",
        candidates = py313,
        requirements = Label("//:requirements-py313.txt"),
    )

    # Python 3.13 with numpy and ai-edge-litert, no TensorFlow; it imports the
    # py313 stack's native build.
    venv_interpreter(
        name = "policy_runtime_python_tffree",
        slot = "tffree",
        candidates = tffree,
        requirements = Label("//:requirements-tffree.txt"),
    )
    if register_toolchain:
        native.register_toolchains("@policy_runtime_python//:python_toolchain")
