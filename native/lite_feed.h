// The LiteRT feed: engines that compute on fixed buffers (LiteRT
// interpreters, policies/runtime/lite_model.py). Each validated leaf is copied
// into the engine's input buffer, the engine runs, and its output buffers are
// copied out and packed. No TensorFlow: compiled policies use this half.
//
// A lease is `lease(batch) -> (inputs, invoke, outputs, ...)`: writable
// arrays over the engine's input buffers in argument-slot order, a callable
// that runs the engine, and arrays over its output buffers in output order;
// `release(lease)` gets it back however the call ends. A LiteRtEngine's
// handle (native/litert_engine.h) in place of `lease` runs the call natively,
// on one of its runners; `release` is then not called.
#ifndef POLICY_RUNTIME_NATIVE_LITE_FEED_H_
#define POLICY_RUNTIME_NATIVE_LITE_FEED_H_

#include <pybind11/pybind11.h>

#include "native/nest.h"
#include "native/validate.h"

namespace policy_runtime {

class LiteFeed {
 public:
  LiteFeed(const Layout& layout, const Validator& validator);

  // One validated call on a leased engine.
  py::object Call(py::handle time_step, py::handle policy_state, py::handle lease,
                  py::handle release) const;

  // `TfFeed::CallRows` on a leased engine: row r of every input buffer of
  // `lease(batch)` is caller r's leaf, rows from len(rows) to `pad_to` are
  // zeros; the outputs as owned arrays, for PackRow.
  py::list CallRows(py::list rows, npy_intp pad_to, py::handle lease, py::handle release) const;

 private:
  const Layout& layout_;
  const Validator& validator_;
  npy_intp fixed_batch_ = -1;  // the plan's fixed batch size, if it has one
};

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_LITE_FEED_H_
