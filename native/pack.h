// Output packing: the plan's output nest built around leaf arrays, each an
// owned C-ordered copy (an engine's result may share its buffer with a
// variable, a constant, an input or the engine's next call).
#ifndef POLICY_RUNTIME_NATIVE_PACK_H_
#define POLICY_RUNTIME_NATIVE_PACK_H_

#include <pybind11/pybind11.h>

#include <utility>

#include "native/nest.h"

namespace policy_runtime {

// A C-ordered copy of the array `value` that the caller owns, without its
// leading dimension of 1 when `unbatch`.
py::object OwnedCopy(const py::object& value, bool unbatch);

// The output nest, with `leaf(node)` at every leaf.
template <typename Leaf>
py::object PackTree(const OutNode& node, const Leaf& leaf) {
  switch (node.kind) {
    case OutKind::kLeaf:
      return leaf(node);
    case OutKind::kDict: {
      py::dict result;
      for (size_t i = 0; i < node.children.size(); ++i)
        result[node.keys[i]] = PackTree(node.children[i], leaf);
      return std::move(result);
    }
    case OutKind::kList: {
      py::list result(node.children.size());
      for (size_t i = 0; i < node.children.size(); ++i)
        result[i] = PackTree(node.children[i], leaf);
      return std::move(result);
    }
    case OutKind::kTuple:
    case OutKind::kNamedTuple: {
      py::tuple items(node.children.size());
      for (size_t i = 0; i < node.children.size(); ++i)
        items[i] = PackTree(node.children[i], leaf);
      if (node.kind == OutKind::kTuple) return std::move(items);
      // tuple.__new__(cls, items): builds the namedtuple without its Python __new__.
      py::tuple args = py::make_tuple(items);
      return Steal(PyTuple_Type.tp_new(reinterpret_cast<PyTypeObject*>(node.type.ptr()),
                                       args.ptr(), nullptr));
    }
  }
  throw py::value_error("bad output node");
}

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_PACK_H_
