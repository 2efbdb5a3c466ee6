// CopySwitch: calls lease the active copy of a policy; an update swaps in
// another copy and waits until nothing still runs on the old one.
//
// The lease is taken and returned in C++ (RAII), never in Python code, so an
// exception at any point -- KeyboardInterrupt included -- cannot leave a
// copy counted as busy. Counts change under both the GIL and `mu_`; a waiter
// holds only `mu_` (the GIL released), so the two never deadlock.
//
// Weights pushed into the policy's variables mark the switch stale (from any
// thread); the next call or lease first runs the policy's `follow` callback,
// which brings a copy up to date and activates it. A clean switch costs each
// call one relaxed atomic load.

#include "native/copy_switch.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace py = pybind11;

namespace policy_runtime {
namespace {

struct Slot {
  py::object copy;       // The Python object standing for one loaded copy.
  py::tuple call_args;   // copy.call_args, appended to the arguments of `call`.
  int64_t in_flight = 0;
};

class CopySwitch {
 public:
  explicit CopySwitch(py::object copy) { Activate(std::move(copy)); }

  py::object Active() const { return active_->copy; }

  // fn(*args, *active.call_args), holding the active copy for the call.
  py::object Call(py::args args) {
    if (args.size() < 1) throw py::type_error("call(fn, *args): fn is missing");
    FollowIfStale();
    Lease lease(this, active_);
    const Slot& slot = *lease.slot;
    size_t n = args.size() - 1, extra = slot.call_args.size();
    PyObject* small[8];
    std::vector<PyObject*> large;
    PyObject** argv = small;
    if (n + extra + 1 > 8) {
      large.resize(n + extra + 1);
      argv = large.data();
    }
    for (size_t i = 0; i < n; ++i) argv[i + 1] = args[i + 1].ptr();
    for (size_t i = 0; i < extra; ++i) argv[n + i + 1] = slot.call_args[i].ptr();
    PyObject* result = PyObject_Vectorcall(args[0].ptr(), argv + 1,
                                           (n + extra) | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
    if (result == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(result);
  }

  // fn(active_copy, *args), holding the active copy for the call.
  py::object WithActive(py::function fn, py::args args) {
    FollowIfStale();
    Lease lease(this, active_);
    py::tuple full(args.size() + 1);
    full[0] = lease.slot->copy;
    for (size_t i = 0; i < args.size(); ++i) full[i + 1] = args[i];
    return fn(*full);
  }

  // Makes `copy` the one new calls run on (reading its `call_args` once, here).
  void Activate(py::object copy) {
    py::tuple call_args = copy.attr("call_args");
    Slot* slot = Find(copy);
    if (slot == nullptr) {
      slots_.push_back(std::make_unique<Slot>());
      slot = slots_.back().get();
      slot->copy = std::move(copy);
    }
    slot->call_args = std::move(call_args);
    active_ = slot;
  }

  // Waits until no call holds `copy`; false on timeout.
  bool WaitIdle(py::handle copy, double timeout_s) {
    Slot* slot = Find(copy);
    if (slot == nullptr) return true;
    py::gil_scoped_release release;
    std::unique_lock<std::mutex> lock(mu_);
    return idle_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                          [slot] { return slot->in_flight == 0; });
  }

  // `follow()` runs before the next call once `MarkStale()` was called.
  void SetFollow(py::object follow) { follow_ = std::move(follow); }
  void MarkStale() { stale_.store(true, std::memory_order_release); }
  // Clears the mark; true if it was set (a `follow` in progress calls this
  // before reading the weights, so a push landing later marks it again).
  bool ClearStale() { return stale_.exchange(false, std::memory_order_acq_rel); }
  bool Stale() const { return stale_.load(std::memory_order_acquire); }

  int64_t InFlight(py::handle copy) {
    Slot* slot = Find(copy);
    if (slot == nullptr) return 0;
    std::lock_guard<std::mutex> lock(mu_);
    return slot->in_flight;
  }

 private:
  struct Lease {
    CopySwitch* owner;
    Slot* slot;
    Lease(CopySwitch* o, Slot* s) : owner(o), slot(s) {
      std::lock_guard<std::mutex> lock(owner->mu_);
      ++slot->in_flight;
    }
    ~Lease() {
      std::lock_guard<std::mutex> lock(owner->mu_);
      if (--slot->in_flight == 0) owner->idle_.notify_all();
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
  };

  void FollowIfStale() {
    if (!stale_.load(std::memory_order_relaxed) || follow_.is_none()) return;
    try {
      follow_();
    } catch (py::error_already_set&) {
      // Interrupted or failed wherever it was: the next call follows again.
      stale_.store(true, std::memory_order_release);
      throw;
    }
  }

  Slot* Find(py::handle copy) const {
    for (const auto& slot : slots_)
      if (slot->copy.ptr() == copy.ptr()) return slot.get();
    return nullptr;
  }

  std::vector<std::unique_ptr<Slot>> slots_;  // GIL-guarded; never shrinks.
  Slot* active_ = nullptr;                     // GIL-guarded.
  std::mutex mu_;                              // Guards every in_flight.
  std::condition_variable idle_;
  py::object follow_ = py::none();             // GIL-guarded.
  std::atomic<bool> stale_{false};
};

}  // namespace

void RegisterCopySwitch(py::module_& m) {
  py::class_<CopySwitch>(m, "CopySwitch",
                         "Calls lease the active copy; updates swap copies and wait for idle ones.")
      .def(py::init<py::object>(), py::arg("copy"))
      .def_property_readonly("active", &CopySwitch::Active)
      .def("call", &CopySwitch::Call, "call(fn, *args): fn(*args, *active call_args), leased")
      .def("with_active", &CopySwitch::WithActive, py::arg("fn"),
           "with_active(fn, *args): fn(active copy, *args), leased")
      .def("activate", &CopySwitch::Activate, py::arg("copy"))
      .def("wait_idle", &CopySwitch::WaitIdle, py::arg("copy"), py::arg("timeout_s"))
      .def("in_flight", &CopySwitch::InFlight, py::arg("copy"))
      .def("set_follow", &CopySwitch::SetFollow, py::arg("follow"),
           "set_follow(fn): fn() runs before the next call or lease after mark_stale()")
      .def("mark_stale", &CopySwitch::MarkStale)
      .def("clear_stale", &CopySwitch::ClearStale, "Clears the stale mark; True if it was set")
      .def_property_readonly("stale", &CopySwitch::Stale);
}

}  // namespace policy_runtime
