"""`pybind_extension`: builds a pybind11 Python extension module.

Produces `<name>.so` (hidden visibility, -O2) and a py_library `<name>_lib`
carrying it as data, so the Python wrapper next to it can import it.
"""

def pybind_extension(name, srcs, deps = [], copts = [], visibility = None, **kwargs):
    native.cc_binary(
        name = name + ".so",
        srcs = srcs,
        copts = copts + [
            "-fvisibility=hidden",
            "-O2",
            "-fexceptions",
            "-Wall",
            "-Werror=return-type",
        ],
        linkshared = True,
        linkstatic = True,
        deps = deps + [
            "@local_python//:pybind11_headers",
            "@local_python//:python_headers",
        ],
        visibility = visibility,
        **kwargs
    )
    native.py_library(
        name = name + "_lib",
        data = [":" + name + ".so"],
        visibility = visibility,
    )
