// The AddressSanitizer build has no race detector (ThreadSanitizer's instrumentation and ASan's
// cannot share a build); it poisons the __shared__ guards instead, so ASan reports an access
// past the end of a shared array.
#include "emu_controls.h"
#include "emu_internal.h"

namespace ff_emu {

bool race_detector_enabled() { return false; }
void race_begin_launch(const KernelBody&) { poison_shared_guards(); }
void race_begin_block(int) {}
void race_set_thread(int) {}
void race_block_barrier() {}
void race_warp_barrier(int) {}
void race_leave_kernel() {}
std::string race_first_report() { return std::string(); }
uint64_t race_checked_bytes() { return 0; }
void note_atomic(const volatile void*, size_t, bool) {}

}  // namespace ff_emu
