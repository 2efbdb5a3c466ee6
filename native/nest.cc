#include "native/nest.h"

#include <algorithm>
#include <sstream>

namespace policy_runtime {
namespace {

Node ParseNode(py::handle node);

Node ParseLeaf(const py::tuple& t) {
  // ("leaf", path, slot, numpy_dtype, inner_dims, batch, tf_dtype_enum)
  Node node;
  node.kind = Kind::kLeaf;
  node.path = py::cast<std::string>(t[1]);
  node.leaf.slot = py::cast<int>(t[2]);
  PyArray_Descr* descr = nullptr;
  if (!PyArray_DescrConverter(t[3].ptr(), &descr)) throw py::error_already_set();
  node.leaf.descr = Steal(reinterpret_cast<PyObject*>(descr));
  for (auto d : py::cast<py::tuple>(t[4])) node.leaf.dims.push_back(py::cast<npy_intp>(d));
  if (node.leaf.dims.size() > NPY_MAXDIMS - 1) throw py::value_error(node.path + ": too many dimensions");
  node.leaf.batch = py::cast<npy_intp>(t[5]);
  for (npy_intp d : node.leaf.dims) node.leaf.fixed_inner = node.leaf.fixed_inner && d >= 0;
  node.leaf.tf_dtype = py::reinterpret_borrow<py::object>(t[6]);
  node.leaf.dlpack = descr->byteorder != '>' &&
                     DlpackType(descr->type_num, PyDataType_ELSIZE(descr), &node.leaf.dl_type);
  const char* info = PyTypeNum_ISINTEGER(descr->type_num) ? "iinfo"
                     : PyTypeNum_ISFLOAT(descr->type_num) ? "finfo" : nullptr;
  if (info != nullptr) {
    py::object limits = py::module_::import("numpy").attr(info)(node.leaf.descr);
    node.leaf.min_value = limits.attr("min");
    node.leaf.max_value = limits.attr("max");
  }
  return node;
}

Node ParseNode(py::handle handle) {
  py::tuple t = py::cast<py::tuple>(handle);
  std::string kind = py::cast<std::string>(t[0]);
  if (kind == "leaf") return ParseLeaf(t);
  Node node;
  node.path = py::cast<std::string>(t[1]);
  for (auto child : py::cast<py::tuple>(t[2])) node.children.push_back(ParseNode(child));
  if (kind == "namedtuple") {
    // ("namedtuple", path, children, fields, type_name)
    node.kind = Kind::kNamedTuple;
    node.fields = py::reinterpret_borrow<py::object>(t[3]);
    node.type_name = py::cast<std::string>(t[4]);
  } else if (kind == "dict") {
    // ("dict", path, children, sorted_keys)
    node.kind = Kind::kDict;
    std::ostringstream text;
    for (auto key : py::cast<py::tuple>(t[3])) {
      if (!node.keys.empty()) text << ", ";
      text << py::cast<std::string>(py::repr(key));
      node.keys.push_back(py::reinterpret_borrow<py::object>(key));
    }
    node.keys_text = text.str();
  } else if (kind == "sequence") {
    // ("sequence", path, children)
    node.kind = Kind::kSequence;
  } else {
    throw py::value_error("unknown plan node kind: " + kind);
  }
  return node;
}

// ("leaf", index, unbatch) | ("namedtuple", type, children) |
// ("dict", keys, children) | ("list", children) | ("tuple", children).
OutNode ParseOutNode(py::handle handle) {
  py::tuple t = py::cast<py::tuple>(handle);
  std::string kind = py::cast<std::string>(t[0]);
  OutNode node;
  if (kind == "leaf") {
    node.kind = OutKind::kLeaf;
    node.index = py::cast<int>(t[1]);
    node.unbatch = py::cast<bool>(t[2]);
    return node;
  }
  py::tuple children;
  if (kind == "namedtuple") {
    node.kind = OutKind::kNamedTuple;
    node.type = py::reinterpret_borrow<py::object>(t[1]);
    children = py::cast<py::tuple>(t[2]);
  } else if (kind == "dict") {
    node.kind = OutKind::kDict;
    for (auto key : py::cast<py::tuple>(t[1])) node.keys.push_back(py::reinterpret_borrow<py::object>(key));
    children = py::cast<py::tuple>(t[2]);
  } else if (kind == "list" || kind == "tuple") {
    node.kind = kind == "list" ? OutKind::kList : OutKind::kTuple;
    children = py::cast<py::tuple>(t[1]);
  } else {
    throw py::value_error("unknown output node kind: " + kind);
  }
  for (auto child : children) node.children.push_back(ParseOutNode(child));
  if (node.kind == OutKind::kDict && node.keys.size() != node.children.size())
    throw py::value_error("dict output node: keys and children differ in length");
  return node;
}

Py_ssize_t MaxOutputIndex(const OutNode& node) {
  if (node.kind == OutKind::kLeaf) {
    if (node.index < 0) throw py::value_error("output index out of range");
    return node.index;
  }
  Py_ssize_t most = -1;
  for (const OutNode& child : node.children) most = std::max(most, MaxOutputIndex(child));
  return most;
}

void CollectSlots(const Node& node, std::vector<const LeafSpec*>* slots) {
  if (node.kind == Kind::kLeaf) {
    if (node.leaf.slot < 0 || node.leaf.slot >= static_cast<int>(slots->size()))
      throw py::value_error(node.path + ": argument slot out of range");
    (*slots)[node.leaf.slot] = &node.leaf;
    return;
  }
  for (const Node& child : node.children) CollectSlots(child, slots);
}

}  // namespace

Layout::Layout(py::tuple time_step_tree, py::tuple state_tree, py::tuple output_tree,
               int num_args)
    : time_step(ParseNode(time_step_tree)),
      state(ParseNode(state_tree)),
      output(ParseOutNode(output_tree)),
      num_args(num_args) {
  if (num_args < 0) throw py::value_error("num_args must not be negative");
  slot_specs.assign(num_args, nullptr);
  CollectSlots(time_step, &slot_specs);
  CollectSlots(state, &slot_specs);
  for (int slot = 0; slot < num_args; ++slot) {
    if (slot_specs[slot] == nullptr)
      throw py::value_error("argument slot " + std::to_string(slot) + " has no leaf");
  }
  min_outputs = MaxOutputIndex(output) + 1;
}

std::string ExpectedLeaf(const LeafSpec& spec, npy_intp batch_hint) {
  std::ostringstream out;
  out << DtypeName(spec.Descr()) << "[";
  bool first = true;
  if (spec.batch != kNoCallerBatch) {
    if (spec.batch >= 0) out << spec.batch;
    else if (batch_hint >= 0) out << batch_hint;
    else out << "B";
    first = false;
  }
  for (npy_intp d : spec.dims) {
    if (!first) out << ",";
    first = false;
    if (d < 0) out << "?"; else out << d;
  }
  out << "]";
  return out.str();
}

}  // namespace policy_runtime
