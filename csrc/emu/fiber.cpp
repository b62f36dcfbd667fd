// Cooperative fibers for the emulated threads of a block: a hand-written x86-64 context switch
// (swapcontext would make a sigprocmask system call on every barrier of every thread), stacks
// from mmap with a guard page, and the AddressSanitizer fiber annotations so ASan follows the
// switches.
#include <sys/mman.h>

#include <cstdlib>
#include <stdexcept>

#include "emu_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FF_EMU_ASAN 1
#endif

#if !defined(__x86_64__)
#error "the flowfast SIMT emulation's context switch is written for x86-64"
#endif

extern "C" void ff_emu_switch(void** save_sp, void* load_sp);
extern "C" void ff_emu_fiber_start();

// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save_sp and resumes the context whose stack pointer is load_sp.
asm(R"(
  .text
  .globl ff_emu_switch
  .hidden ff_emu_switch
  .type ff_emu_switch, @function
ff_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ff_emu_switch, .-ff_emu_switch

  .globl ff_emu_fiber_start
  .hidden ff_emu_fiber_start
  .type ff_emu_fiber_start, @function
ff_emu_fiber_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size ff_emu_fiber_start, .-ff_emu_fiber_start
)");

namespace ff_emu {

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;  // lowest usable address (a guard page lies below)
  FiberMain main = nullptr;
  void* user = nullptr;
  void* fake_stack = nullptr;
};

namespace {

// ASan frames are large and kernels are shallow: 256 KiB each, reserved lazily.
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kPage = 4096;

Fiber g_fibers[kMaxBlockThreads];
char* g_arena = nullptr;
void* g_scheduler_sp = nullptr;
#if defined(FF_EMU_ASAN)
const void* g_scheduler_stack_bottom = nullptr;
size_t g_scheduler_stack_size = 0;
#endif

char* arena() {
  if (!g_arena) {
    const size_t bytes = (kStackBytes + kPage) * kMaxBlockThreads;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("flowfast emulation: cannot reserve fiber stacks");
    g_arena = static_cast<char*>(p);
    for (int i = 0; i < kMaxBlockThreads; ++i) mprotect(g_arena + i * (kStackBytes + kPage), kPage, PROT_NONE);
  }
  return g_arena;
}

void fiber_entry(Fiber* f) {
#if defined(FF_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &g_scheduler_stack_bottom, &g_scheduler_stack_size);
#endif
  f->main(f);
  yield_to_scheduler(f, true);
}

}  // namespace

Fiber* fiber_at(int index, FiberMain main, void* user) {
  Fiber* f = &g_fibers[index];
  f->stack = arena() + index * (kStackBytes + kPage) + kPage;
  f->main = main;
  f->user = user;
  f->fake_stack = nullptr;
#if defined(FF_EMU_ASAN)
  // A fiber abandoned mid-kernel (deadlock report) leaves poisoned frames behind.
  ASAN_UNPOISON_MEMORY_REGION(f->stack, kStackBytes);
#endif
  // Initial frame popped by ff_emu_switch: control words, r15..r12 (r13 = entry, r12 = fiber),
  // rbx, rbp, then the return address ff_emu_fiber_start; the stack is 16-byte aligned after it.
  uintptr_t top = reinterpret_cast<uintptr_t>(f->stack + kStackBytes) & ~uintptr_t{15};
  uint64_t* frame = reinterpret_cast<uint64_t*>(top) - 9;
  frame[0] = 0x037F;  // x87 control word: default
  frame[1] = 0x1F80;  // MXCSR: round to nearest, exceptions masked, no flush-to-zero
  frame[2] = 0;                                            // r15
  frame[3] = 0;                                            // r14
  frame[4] = reinterpret_cast<uint64_t>(&fiber_entry);     // r13
  frame[5] = reinterpret_cast<uint64_t>(f);                // r12
  frame[6] = 0;                                            // rbx
  frame[7] = 0;                                            // rbp
  frame[8] = reinterpret_cast<uint64_t>(&ff_emu_fiber_start);
  f->sp = frame;
  return f;
}

void* fiber_user(Fiber* f) { return f->user; }

void resume(Fiber* f) {
#if defined(FF_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack, kStackBytes);
  ff_emu_switch(&g_scheduler_sp, f->sp);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  ff_emu_switch(&g_scheduler_sp, f->sp);
#endif
}

void yield_to_scheduler(Fiber* f, bool finished) {
#if defined(FF_EMU_ASAN)
  __sanitizer_start_switch_fiber(finished ? nullptr : &f->fake_stack, g_scheduler_stack_bottom,
                                 g_scheduler_stack_size);
  ff_emu_switch(&f->sp, g_scheduler_sp);
  __sanitizer_finish_switch_fiber(f->fake_stack, &g_scheduler_stack_bottom, &g_scheduler_stack_size);
#else
  (void)finished;
  ff_emu_switch(&f->sp, g_scheduler_sp);
#endif
}

bool in_fiber_stacks(uintptr_t addr) {
  const uintptr_t lo = reinterpret_cast<uintptr_t>(g_arena);
  return g_arena && addr >= lo && addr < lo + (kStackBytes + kPage) * kMaxBlockThreads;
}

}  // namespace ff_emu
