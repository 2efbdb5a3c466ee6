"""Builds the wheel: policies/ and native/ as policy_runtime.policies and policy_runtime.native.

The native module is the same sources and flags as //native:_marshal
(tools/bazel/pybind.bzl): C++17, hidden visibility, -O2, `#include "native/..."`
from the project root; LiteRT is loaded at run time (-ldl).
"""

import glob
import os

import numpy
from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ParallelCompile("NPY_NUM_BUILD_JOBS", default=2).install()

setup(
    package_dir={
        "policy_runtime.policies": "policies",
        "policy_runtime.native": "native",
    },
    packages=["policy_runtime.native"] + [
        "policy_runtime." + os.path.dirname(init).replace(os.sep, ".")
        for init in sorted(glob.glob("policies/**/__init__.py", recursive=True))
    ],
    ext_modules=[
        Pybind11Extension(
            "policy_runtime.native._marshal",
            sorted(glob.glob("native/*.cc")),
            include_dirs=[".", numpy.get_include()],
            cxx_std=17,
            extra_compile_args=["-fvisibility=hidden", "-O2", "-fexceptions"],
            libraries=["dl"],
        ),
    ],
    cmdclass={"build_ext": build_ext},
)
