// Internals shared by the emulation runtime's files (fibers, scheduler, race detector, symbols).
// Nothing here is seen by the kernels; they see include/cuda_runtime.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_runtime.h"

namespace ff_emu {

constexpr int kWarp = 32;
constexpr int kMaxBlockThreads = 1024;

// ---- fibers (fiber.cpp) ----
struct Fiber;
using FiberMain = void (*)(Fiber*);
// Starts or resumes `f` from the scheduler; returns when it yields or finishes.
void resume(Fiber* f);
// Called on the fiber: hands control back to the scheduler (finished: never resumed again).
void yield_to_scheduler(Fiber* f, bool finished);
Fiber* fiber_at(int index, FiberMain main, void* user);  // (re)initialized fiber on stack slot `index`
void* fiber_user(Fiber* f);
bool in_fiber_stacks(uintptr_t addr);

// ---- scheduler (scheduler.cpp) ----
std::string describe_thread(int thread);  // "thread (x,y,z) [warp w lane l] of block (...)"

// ---- race detector (race_detector.cpp) ----
void race_begin_launch(const KernelBody& body);
void race_begin_block(int block);
void race_set_thread(int thread);
void race_block_barrier();
void race_warp_barrier(int warp);
void race_leave_kernel();
std::string race_first_report();  // "" when the launch was clean
uint64_t race_checked_bytes();

// ---- shared-memory symbols (symbols.cpp) ----
struct StaticSymbol {
  uintptr_t begin, end;
  std::string name;
  bool guard;
};
// The kernels' __shared__ arrays and their guards, sorted by address (read from this module's
// ELF symbol table once).
const std::vector<StaticSymbol>& shared_symbols();
const StaticSymbol* find_shared_symbol(uintptr_t addr);
void poison_shared_guards();  // ASan build: guards become poisoned memory

}  // namespace ff_emu
