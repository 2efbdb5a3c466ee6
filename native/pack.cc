#include "native/pack.h"

#include <cstring>

namespace policy_runtime {

py::object OwnedCopy(const py::object& value, bool unbatch) {
  auto* view = reinterpret_cast<PyArrayObject*>(value.ptr());
  int ndim = PyArray_NDIM(view);
  int skip = 0;
  if (unbatch) {
    if (ndim < 1 || PyArray_DIM(view, 0) != 1)
      throw py::value_error("expected an output with a batch of 1 to unbatch");
    skip = 1;
  }
  PyArray_Descr* descr = PyArray_DESCR(view);
  Py_INCREF(descr);
  py::object result = Steal(PyArray_NewFromDescr(&PyArray_Type, descr, ndim - skip,
                                                 PyArray_DIMS(view) + skip, nullptr, nullptr,
                                                 0, nullptr));
  auto* out = reinterpret_cast<PyArrayObject*>(result.ptr());
  if (!PyDataType_REFCHK(descr) && PyArray_IS_C_CONTIGUOUS(view) && PyArray_ISNOTSWAPPED(view)) {
    std::memcpy(PyArray_DATA(out), PyArray_DATA(view), static_cast<size_t>(PyArray_NBYTES(view)));
    return result;
  }
  py::object source = value;
  if (skip) {
    PyArray_Dims shape{PyArray_DIMS(out), ndim - skip};
    source = Steal(PyArray_Newshape(view, &shape, NPY_ANYORDER));
  }
  if (PyArray_CopyInto(out, reinterpret_cast<PyArrayObject*>(source.ptr())) < 0)
    throw py::error_already_set();
  return result;
}

}  // namespace policy_runtime
