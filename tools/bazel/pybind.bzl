"""`pybind_extension`: builds a pybind11 Python extension module for every stack.

Produces `<name><EXT_SUFFIX>` per stack in stacks.bzl (e.g.
`_marshal.cpython-311-x86_64-linux-gnu.so` beside
`_marshal.cpython-313-x86_64-linux-gnu.so`; each interpreter imports its own),
with C++17, hidden visibility and -O2 (the flags are the rule's, not a .bazelrc's), and a py_library `<name>_lib` carrying them
all as data, so the Python wrapper next to it can import it.
"""

load(":stacks.bzl", "STACKS")

def pybind_extension(name, srcs, deps = [], copts = [], numpy = False, visibility = None, **kwargs):
    """One extension per stack; `numpy = True` adds that stack's numpy headers."""
    modules = []
    for stack in STACKS:
        stack_deps = [
            stack.repository + "//:pybind11_headers",
            stack.repository + "//:python_headers",
        ]
        if numpy:
            stack_deps.append(stack.repository + "//:numpy_headers")
        native.cc_binary(
            name = name + stack.ext_suffix,
            srcs = srcs,
            copts = copts + [
                "-std=c++17",
                "-fvisibility=hidden",
                "-O2",
                "-fexceptions",
                "-Wall",
                "-Werror=return-type",
            ],
            linkshared = True,
            linkstatic = True,
            deps = deps + stack_deps,
            visibility = visibility,
            **kwargs
        )
        modules.append(":" + name + stack.ext_suffix)
    native.py_library(
        name = name + "_lib",
        data = modules,
        visibility = visibility,
    )
