"""Repository rule exposing the project's Python interpreter to Bazel.

Finds the interpreter (`PYTHON_BIN_PATH`, else `.venv/bin/python` at the
workspace root), symlinks its C headers plus the pybind11 and numpy headers,
and generates:
  * `:python_headers`, `:pybind11_headers`, `:numpy_headers` (cc_library),
  * `:python_toolchain`, a Python 3 toolchain running that interpreter, so
    every py_binary / py_test sees the packages installed in the venv.
"""

_QUERY = """
import sysconfig, numpy, pybind11
print(sysconfig.get_paths()["include"])
print(pybind11.get_include())
print(numpy.get_include())
"""

_BUILD = """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

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

def _python_configure_impl(rctx):
    workspace_root = rctx.path(Label("//:WORKSPACE")).dirname
    interpreter = rctx.os.environ.get("PYTHON_BIN_PATH", "")
    if not interpreter:
        interpreter = str(workspace_root) + "/.venv/bin/python"

    # Re-run when the pinned package set changes.
    rctx.path(Label("//:requirements.txt"))

    result = rctx.execute([interpreter, "-c", _QUERY])
    if result.return_code != 0:
        fail(("python_configure: cannot run {} ({}). Run tools/setup.sh first " +
              "or set PYTHON_BIN_PATH.").format(interpreter, result.stderr.strip()))
    python_include, pybind11_include, numpy_include = result.stdout.strip().splitlines()
    rctx.symlink(python_include, "python_include")
    rctx.symlink(pybind11_include, "pybind11_include")
    rctx.symlink(numpy_include, "numpy_include")
    rctx.file("BUILD", _BUILD.format(interpreter = interpreter))

python_configure = repository_rule(
    implementation = _python_configure_impl,
    environ = ["PYTHON_BIN_PATH"],
    local = True,
)
