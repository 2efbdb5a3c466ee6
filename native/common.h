// Constants and small helpers shared by every part of the marshaler: owned
// references, raising Python errors, and the text that names arrays in errors.
#ifndef POLICY_RUNTIME_NATIVE_COMMON_H_
#define POLICY_RUNTIME_NATIVE_COMMON_H_

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "native/numpy.h"

namespace policy_runtime {

namespace py = pybind11;

constexpr size_t kAlignment = 64;        // What TF's DLPack import requires.
constexpr npy_intp kNoCallerBatch = -2;  // Leaf comes unbatched; add a batch of 1.
constexpr npy_intp kAnyBatch = -1;       // Leaf comes batched; any consistent size.

// A new reference as an owned object; a null one raises the pending Python error.
py::object Steal(PyObject* p);

[[noreturn]] void Raise(PyObject* type, const std::string& message);

inline bool IsAligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % kAlignment == 0;
}

std::string DtypeName(PyArray_Descr* descr);
std::string TypeName(PyObject* obj);
// "float32[2,3]"
std::string Describe(PyArrayObject* arr);

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_COMMON_H_
