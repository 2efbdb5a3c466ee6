"""Repository rules exposing a Python environment to Bazel (called from deps.bzl).

Each finds its interpreter as the first of `candidates` that runs:
  "path:/abs/python"   an interpreter given by the consumer,
  "env:NAME"           the interpreter named by an environment variable,
  "venv:DIR"           `DIR/bin/python` at this project's root (tools/setup.sh
                       makes them; an external copy of the project has none).

`python_configure` symlinks the interpreter's C headers plus the pybind11 and
numpy headers, and generates:
  * `:python_headers`, `:pybind11_headers`, `:numpy_headers` (cc_library),
  * `:python_toolchain`, a Python 3 toolchain running that interpreter, so
    every py_binary / py_test sees the packages installed beside it,
  * `defs.bzl` with `STACK`: the stack's name, repository, interpreter and
    extension-module suffix (`EXT_SUFFIX`, e.g. `.cpython-313-x86_64-linux-gnu.so`),
    read by stacks.bzl.
`venv_interpreter` generates only `defs.bzl` (`ENVIRONMENT`), for an
environment that tests run in but nothing is built for (the TF-free one).

When no candidate runs, the repository is still made, so `bazel query //...`
works on a fresh checkout: its targets fail at build time, naming the
candidates tried and tools/setup.sh.
"""

_QUERY = """
import sys, sysconfig, numpy, pybind11
print(sysconfig.get_paths()["include"])
print(pybind11.get_include())
print(numpy.get_include())
print(sysconfig.get_config_var("EXT_SUFFIX"))
print("%d.%d" % sys.version_info[:2])
"""

_EXT_SUFFIX = "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))"

_HEAD = """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

exports_files(["defs.bzl"])
"""

# `runtime` is the py_runtime's interpreter attribute.
_TOOLCHAIN = """
py_runtime(
    name = "py3_runtime",
    {runtime},
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

# Every target fails to build, with this message, where no interpreter was found.
_MISSING_BUILD = _HEAD + """
genrule(
    name = "missing_interpreter",
    outs = ["missing_interpreter.h"],
    cmd = "echo {message} >&2; exit 1",
)

[cc_library(
    name = name,
    hdrs = [":missing_interpreter"],
) for name in ["python_headers", "pybind11_headers", "numpy_headers"]]

filegroup(
    name = "interpreter",
    srcs = [":missing_interpreter"],
)
""" + _TOOLCHAIN.format(runtime = 'interpreter = ":missing_interpreter"')

_BUILD = _HEAD + """
# Nothing to build: a target that tests and extensions depend on, so that a
# missing interpreter fails at build time (see _MISSING_BUILD).
filegroup(name = "interpreter")

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
""" + _TOOLCHAIN.format(runtime = 'interpreter_path = "{interpreter}"')

_STACK_DEFS = """\"\"\"The `{name}` stack, as found by python_configure.\"\"\"

STACK = struct(
    name = "{name}",
    repository = "@{repository}",
    python = "{interpreter}",
    python_version = "{version}",
    ext_suffix = "{ext_suffix}",
    missing = {missing},
)
"""

_ENVIRONMENT_DEFS = """\"\"\"The `{name}` environment's interpreter, as found by venv_interpreter.\"\"\"

ENVIRONMENT = struct(
    name = "{name}",
    repository = "@{repository}",
    python = "{interpreter}",
    ext_suffix = "{ext_suffix}",
    missing = {missing},
)
"""

def _candidate_interpreter(rctx, candidate):
    """The interpreter path a candidate names, or None."""
    kind, _, value = candidate.partition(":")
    if kind == "path":
        return value
    if kind == "env":
        return rctx.os.environ.get(value, "") or None
    if kind == "venv":
        root = rctx.path(Label("//:WORKSPACE")).dirname
        path = rctx.path("{}/{}/bin/python".format(root, value))
        return str(path) if path.exists else None
    fail("unknown interpreter candidate {!r} (path:, env: or venv:)".format(candidate))

def _find_interpreter(rctx, query):
    """(interpreter, its output of `query`), or (None, why none ran)."""
    tried = []
    for candidate in rctx.attr.candidates:
        interpreter = _candidate_interpreter(rctx, candidate)
        if not interpreter:
            tried.append(candidate + (" (no such venv)" if candidate.startswith("venv:") else " (not set)"))
            continue
        result = rctx.execute([interpreter, "-c", query])
        if result.return_code == 0:
            return interpreter, result.stdout.strip()
        tried.append("{} = {} ({})".format(candidate, interpreter,
                                           "".join(result.stderr.strip().splitlines()[-1:])))
    return None, ("{}: no Python environment for the {} slot. Pass its interpreter to " +
                  "policy_runtime_dependencies(python = ...) or set PYTHON_BIN_PATH (with " +
                  "requirements.txt installed); in a checkout of policy_runtime, run " +
                  "tools/setup.sh. Tried: {}").format(
        rctx.name,
        rctx.attr.slot,
        "; ".join(tried) or "nothing",
    )

def _echo_argument(text):
    """`text` as one shell word inside a BUILD string literal of a genrule's cmd."""
    quoted = "'" + text.replace("'", "'\\''") + "'"
    return quoted.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")

def _write_missing(rctx, defs, message):
    rctx.file("BUILD", _MISSING_BUILD.format(message = _echo_argument(message)))
    rctx.file("defs.bzl", defs.format(
        name = rctx.attr.slot,
        repository = rctx.name,
        interpreter = "",
        version = "",
        ext_suffix = ".{}-missing.so".format(rctx.attr.slot),
        missing = repr(message),
    ))

def _python_configure_impl(rctx):
    rctx.path(rctx.attr.requirements)   # re-run when the pinned package set changes
    interpreter, stdout = _find_interpreter(rctx, _QUERY)
    if not interpreter:
        _write_missing(rctx, _STACK_DEFS, stdout)
        return
    python_include, pybind11_include, numpy_include, ext_suffix, version = stdout.splitlines()
    rctx.symlink(python_include, "python_include")
    rctx.symlink(pybind11_include, "pybind11_include")
    rctx.symlink(numpy_include, "numpy_include")
    rctx.file("BUILD", _BUILD.format(interpreter = interpreter))
    rctx.file("defs.bzl", _STACK_DEFS.format(
        name = rctx.attr.slot,
        repository = rctx.name,
        interpreter = interpreter,
        version = version,
        ext_suffix = ext_suffix,
        missing = "None",
    ))

_ATTRS = {
    "slot": attr.string(mandatory = True, doc = "short name, e.g. py311"),
    "candidates": attr.string_list(mandatory = True, doc = "path:, env: or venv: entries"),
    "requirements": attr.label(mandatory = True, allow_single_file = True),
}

# Environment variables the candidates may name (a change re-runs the rules).
_ENVIRON = ["PYTHON_BIN_PATH", "PYTHON313_BIN_PATH", "PYTHON313_TFFREE_BIN_PATH"]

python_configure = repository_rule(
    implementation = _python_configure_impl,
    attrs = _ATTRS,
    environ = _ENVIRON,
    local = True,
)

def _venv_interpreter_impl(rctx):
    rctx.path(rctx.attr.requirements)
    interpreter, ext_suffix = _find_interpreter(rctx, _EXT_SUFFIX)
    if not interpreter:
        _write_missing(rctx, _ENVIRONMENT_DEFS, ext_suffix)
        return
    rctx.file("BUILD", 'package(default_visibility = ["//visibility:public"])\n\n' +
                       'filegroup(name = "interpreter")\n')
    rctx.file("defs.bzl", _ENVIRONMENT_DEFS.format(
        name = rctx.attr.slot,
        repository = rctx.name,
        interpreter = interpreter,
        ext_suffix = ext_suffix,
        missing = "None",
    ))

# An environment tests run in (re-executed by tests/pytest_main.py) that builds
# nothing of its own: e.g. the TF-free one, which imports the py313 stack's
# native module.
venv_interpreter = repository_rule(
    implementation = _venv_interpreter_impl,
    attrs = _ATTRS,
    environ = _ENVIRON,
    local = True,
)
