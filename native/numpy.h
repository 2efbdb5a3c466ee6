// numpy's C API for every file of the extension: one API table, imported by
// module.cc (which defines POLICY_RUNTIME_IMPORT_NUMPY before including this).
#ifndef POLICY_RUNTIME_NATIVE_NUMPY_H_
#define POLICY_RUNTIME_NATIVE_NUMPY_H_

#define PY_ARRAY_UNIQUE_SYMBOL policy_runtime_numpy_api
#ifndef POLICY_RUNTIME_IMPORT_NUMPY
#define NO_IMPORT_ARRAY
#endif
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#if NPY_ABI_VERSION < 0x02000000
// numpy 1.x headers: the descriptor's fields are public, and numpy 2's accessor
// (numpy/npy_2_compat.h) does not exist yet. The axis that means "all axes"
// was NPY_MAXDIMS; numpy 2 names it NPY_RAVEL_AXIS (NPY_MAXDIMS is a real axis there).
static inline npy_intp PyDataType_ELSIZE(const PyArray_Descr* descr) { return descr->elsize; }
#define NPY_RAVEL_AXIS NPY_MAXDIMS
#endif

#endif  // POLICY_RUNTIME_NATIVE_NUMPY_H_
