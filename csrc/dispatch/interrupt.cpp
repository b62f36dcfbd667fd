// The process-wide interrupt request every family's long loops poll (flowfast/common.h,
// check_interrupt); raised by the bindings' watcher thread on Ctrl-C.
#include <atomic>

#include "flowfast/common.h"

namespace ff {
namespace {
std::atomic<bool> requested{false};
}  // namespace

bool interrupt_requested() { return requested.load(std::memory_order_relaxed); }

void set_interrupt_requested(bool value) { requested.store(value, std::memory_order_relaxed); }

}  // namespace ff
