#include "native/common.h"

#include <sstream>

namespace policy_runtime {

py::object Steal(PyObject* p) {
  if (p == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(p);
}

void Raise(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw py::error_already_set();
}

std::string DtypeName(PyArray_Descr* descr) {
  py::object str = Steal(PyObject_Str(reinterpret_cast<PyObject*>(descr)));
  return py::cast<std::string>(str);
}

std::string TypeName(PyObject* obj) {
  if (obj == Py_None) return "None";
  return Py_TYPE(obj)->tp_name;
}

std::string Describe(PyArrayObject* arr) {
  std::ostringstream out;
  out << DtypeName(PyArray_DESCR(arr)) << "[";
  for (int i = 0; i < PyArray_NDIM(arr); ++i) {
    if (i) out << ",";
    out << PyArray_DIM(arr, i);
  }
  out << "]";
  return out.str();
}

}  // namespace policy_runtime
