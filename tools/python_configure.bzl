"""Repository rule exposing one of the project's Python environments to Bazel.

Finds the interpreter (the `interpreter_env` variable, else `<venv>/bin/python`
at the workspace root), symlinks its C headers plus the pybind11 and numpy
headers, and generates:
  * `:python_headers`, `:pybind11_headers`, `:numpy_headers` (cc_library),
  * `:python_toolchain`, a Python 3 toolchain running that interpreter, so
    every py_binary / py_test sees the packages installed in that venv
    (WORKSPACE registers the primary stack's),
  * `defs.bzl` with `STACK`: the stack's name, repository, interpreter and
    extension-module suffix (`EXT_SUFFIX`, e.g. `.cpython-313-x86_64-linux-gnu.so`),
    read by tools/stacks.bzl.
"""

_QUERY = """
import sys, sysconfig, numpy, pybind11
print(sysconfig.get_paths()["include"])
print(pybind11.get_include())
print(numpy.get_include())
print(sysconfig.get_config_var("EXT_SUFFIX"))
print("%d.%d" % sys.version_info[:2])
"""

_BUILD = """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

exports_files(["defs.bzl"])

cc_library(
    name = "python_headers",
    hdrs = glob(["python_include/**/*.h"]),
    includes = ["python_include"],
)

cc_library(
    name = "pybind11_headers",
    hdrs = glob(["pybind11_include/**/*.h"]),
    includes = ["pybind11_include"],
    deps = [":python_headers"],
)

cc_library(
    name = "numpy_headers",
    hdrs = glob(["numpy_include/**/*.h"]),
    includes = ["numpy_include"],
    deps = [":python_headers"],
)

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "python_toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

_DEFS = """\"\"\"The `{name}` stack, as found by python_configure.\"\"\"

STACK = struct(
    name = "{name}",
    repository = "@{repository}",
    python = "{interpreter}",
    python_version = "{version}",
    ext_suffix = "{ext_suffix}",
)
"""

def _run_interpreter(rctx, rule, name, query):
    """(interpreter, its output of `query`): `interpreter_env`, else the venv's python."""
    workspace_root = rctx.path(Label("//:WORKSPACE")).dirname
    interpreter = rctx.os.environ.get(rctx.attr.interpreter_env, "")
    if not interpreter:
        interpreter = "{}/{}/bin/python".format(workspace_root, rctx.attr.venv)

    # Re-run when the pinned package set changes.
    rctx.path(rctx.attr.requirements)

    result = rctx.execute([interpreter, "-c", query])
    if result.return_code != 0:
        fail(("{}: the {} environment cannot run {} ({}). Run tools/setup.sh " +
              "first or set {}.").format(rule, name, interpreter, result.stderr.strip(),
                                         rctx.attr.interpreter_env))
    return interpreter, result.stdout.strip()

def _python_configure_impl(rctx):
    interpreter, stdout = _run_interpreter(rctx, "python_configure", rctx.attr.stack, _QUERY)
    python_include, pybind11_include, numpy_include, ext_suffix, version = (
        stdout.splitlines()
    )
    rctx.symlink(python_include, "python_include")
    rctx.symlink(pybind11_include, "pybind11_include")
    rctx.symlink(numpy_include, "numpy_include")
    rctx.file("BUILD", _BUILD.format(interpreter = interpreter))
    rctx.file("defs.bzl", _DEFS.format(
        name = rctx.attr.stack,
        repository = rctx.name,
        interpreter = interpreter,
        version = version,
        ext_suffix = ext_suffix,
    ))

python_configure = repository_rule(
    implementation = _python_configure_impl,
    attrs = {
        "stack": attr.string(mandatory = True, doc = "short name, e.g. py311"),
        "venv": attr.string(mandatory = True, doc = "venv directory at the workspace root"),
        "interpreter_env": attr.string(mandatory = True, doc = "variable that overrides the venv"),
        "requirements": attr.label(mandatory = True, allow_single_file = True),
    },
    environ = ["PYTHON_BIN_PATH", "PYTHON313_BIN_PATH"],
    local = True,
)

_INTERPRETER_DEFS = """\"\"\"The `{name}` environment's interpreter, as found by venv_interpreter.\"\"\"

ENVIRONMENT = struct(
    name = "{name}",
    python = "{interpreter}",
    ext_suffix = "{ext_suffix}",
)
"""

_EXT_SUFFIX = "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))"

def _venv_interpreter_impl(rctx):
    interpreter, ext_suffix = _run_interpreter(rctx, "venv_interpreter", rctx.attr.environment,
                                               _EXT_SUFFIX)
    rctx.file("BUILD", "")
    rctx.file("defs.bzl", _INTERPRETER_DEFS.format(
        name = rctx.attr.environment,
        interpreter = interpreter,
        ext_suffix = ext_suffix,
    ))

# An environment tests run in (re-executed by tests/pytest_main.py) that builds
# nothing of its own: e.g. the TF-free one, which imports the py313 stack's
# native module.
venv_interpreter = repository_rule(
    implementation = _venv_interpreter_impl,
    attrs = {
        "environment": attr.string(mandatory = True, doc = "short name, e.g. tffree"),
        "venv": attr.string(mandatory = True, doc = "venv directory at the workspace root"),
        "interpreter_env": attr.string(mandatory = True, doc = "variable that overrides the venv"),
        "requirements": attr.label(mandatory = True, allow_single_file = True),
    },
    environ = ["PYTHON313_TFFREE_BIN_PATH"],
    local = True,
)
