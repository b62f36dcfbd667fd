// Data-race and shared-memory bounds detector of the race build (FF_EMU_RACE): the kernels are
// compiled with -fsanitize=thread, but instead of ThreadSanitizer's runtime the __tsan_* hooks
// below receive every load and store. Each byte touched during a launch gets a shadow cell with
// its last plain write, up to two concurrent plain reads and up to two atomic accesses, each
// stamped (thread, block, barrier epoch). Two accesses by different threads conflict when at
// least one is a plain write (or one is plain and the other atomic) and nothing orders them:
// same block and no __syncthreads between them, or different blocks of the same launch (global
// memory only: shared memory is per block). Atomics, __ldcg and volatile accesses count as
// atomic. Fiber stacks (thread-local variables) are ignored; launches reset the shadow.
#include <sstream>

#include "emu_controls.h"
#include "emu_internal.h"

namespace ff_emu {
namespace {

struct Stamp {
  int32_t thread = -1;  // -1: no access
  int32_t block = 0;
  uint32_t epoch = 0;   // block barriers completed before the access
  uint32_t warp_epoch = 0;
  bool atomic = false;  // reads: an atomic / volatile / __ldcg load
};

struct Cell {
  uintptr_t addr = 0;
  uint32_t generation = 0;
  Stamp write, reads[2], atomics[2];
};

struct Detector {
  std::vector<Cell> cells = std::vector<Cell>(1u << 16);
  size_t used = 0;
  uint32_t generation = 1;
  bool in_kernel = false;
  const KernelBody* body = nullptr;
  int block = 0, thread = 0;
  uint32_t epoch = 0;
  uint32_t warp_epochs[kMaxBlockThreads / kWarp] = {};
  std::string report;
  uint64_t races = 0, checked = 0;
};

Detector g;

enum class Kind { Read, Write, AtomicRead, AtomicWrite };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Read: return "read";
    case Kind::Write: return "write";
    case Kind::AtomicRead: return "atomic/volatile read";
    case Kind::AtomicWrite: return "atomic write";
  }
  return "?";
}

uint64_t mix(uintptr_t a) {
  uint64_t x = a * 0x9E3779B97F4A7C15ull;
  return x ^ (x >> 29);
}

void grow();

Cell& cell_for(uintptr_t addr) {
  if (2 * (g.used + 1) > g.cells.size()) grow();
  const size_t mask = g.cells.size() - 1;
  for (size_t i = mix(addr) & mask;; i = (i + 1) & mask) {
    Cell& c = g.cells[i];
    if (c.generation != g.generation) {
      c = Cell{};
      c.addr = addr;
      c.generation = g.generation;
      ++g.used;
      return c;
    }
    if (c.addr == addr) return c;
  }
}

void grow() {
  std::vector<Cell> old;
  old.swap(g.cells);
  g.cells.assign(old.size() * 2, Cell{});
  g.used = 0;
  for (const Cell& c : old) {
    if (c.generation != g.generation) continue;
    Cell& n = cell_for(c.addr);
    n = c;
  }
}

bool concurrent(const Stamp& s, const Stamp& now, bool shared) {
  if (s.thread < 0) return false;
  if (s.block != now.block) return !shared;  // shared memory of another block is another array
  if (s.epoch != now.epoch || s.thread == now.thread) return false;
  return !(s.thread / kWarp == now.thread / kWarp && s.warp_epoch != now.warp_epoch);
}

std::string describe_address(uintptr_t addr, const StaticSymbol* sym) {
  std::ostringstream os;
  if (sym) {
    os << "shared array '" << sym->name << "' byte " << (addr - sym->begin);
    return os.str();
  }
  // Global memory: name it relative to the closest pointer argument below it.
  int best = -1;
  uintptr_t best_base = 0;
  for (int k = 0; k < g.body->n_pointer_args; ++k) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(g.body->pointer_args[k]);
    if (p && p <= addr && (best < 0 || p > best_base)) best = k, best_base = p;
  }
  if (best >= 0) {
    os << "global memory at pointer argument #" << best << " + " << (addr - best_base) << " bytes";
  } else {
    os << "global memory at 0x" << std::hex << addr;
  }
  return os.str();
}

std::string thread_name(const Stamp& s) {
  if (s.block == g.block) return describe_thread(s.thread);
  std::ostringstream os;
  os << "thread " << s.thread << " of another block (linear block " << s.block << ")";
  return os.str();
}

void report(uintptr_t addr, const StaticSymbol* sym, const Stamp& other, Kind other_kind, const Stamp& now,
            Kind now_kind) {
  ++g.races;
  if (!g.report.empty()) return;
  std::ostringstream os;
  os << "data race on " << describe_address(addr, sym) << ": " << kind_name(now_kind) << " by " << thread_name(now)
     << " conflicts with " << kind_name(other_kind) << " by " << thread_name(other)
     << (other.block == now.block ? " with no __syncthreads between them" : " in the same launch");
  g.report = os.str();
}

void on_byte(uintptr_t addr, Kind kind, const StaticSymbol* sym) {
  const bool shared = sym != nullptr;
  const Stamp now{g.thread, g.block, g.epoch, g.warp_epochs[g.thread / kWarp], kind == Kind::AtomicRead};
  Cell& c = cell_for(addr);
  ++g.checked;
  // Every access conflicts with a concurrent plain write.
  if (concurrent(c.write, now, shared)) return report(addr, sym, c.write, Kind::Write, now, kind);
  if (kind == Kind::Write || kind == Kind::AtomicWrite) {
    for (const Stamp& r : c.reads) {
      // Atomic writes race with plain reads only; plain writes with any read.
      if ((kind == Kind::Write || !r.atomic) && concurrent(r, now, shared)) {
        return report(addr, sym, r, r.atomic ? Kind::AtomicRead : Kind::Read, now, kind);
      }
    }
  }
  if (kind == Kind::Write || kind == Kind::Read) {
    for (const Stamp& a : c.atomics) {
      if (concurrent(a, now, shared)) return report(addr, sym, a, Kind::AtomicWrite, now, kind);
    }
  }
  // Remember this access, keeping up to two stamps of different concurrent threads.
  auto remember = [&](Stamp (&slots)[2]) {
    for (Stamp& s : slots) {
      if (s.thread < 0 || s.thread == now.thread || !concurrent(s, now, shared)) {
        s = now;
        return;
      }
    }
    for (Stamp& s : slots) {  // full: a plain read outranks an atomic one (it races with more)
      if (s.atomic && !now.atomic) {
        s = now;
        return;
      }
    }
  };
  switch (kind) {
    case Kind::Write:
      c.write = now;
      c.reads[0] = c.reads[1] = c.atomics[0] = c.atomics[1] = Stamp{};
      break;
    case Kind::Read:
    case Kind::AtomicRead: remember(c.reads); break;
    case Kind::AtomicWrite: remember(c.atomics); break;
  }
}

void on_access(const volatile void* p, size_t size, Kind kind) {
  if (!g.in_kernel) return;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  if (in_fiber_stacks(addr)) return;
  const StaticSymbol* sym = find_shared_symbol(addr);
  if (sym && sym->guard) {
    ++g.races;
    if (g.report.empty()) {
      const StaticSymbol* below = find_shared_symbol(sym->begin - 1);
      std::ostringstream os;
      os << "out-of-bounds shared-memory " << kind_name(kind) << " of " << size << " bytes by "
         << describe_thread(g.thread) << ": " << (addr - sym->begin) << " bytes past the end of '"
         << (below && !below->guard ? below->name : std::string("?")) << "'";
      g.report = os.str();
    }
    return;
  }
  for (size_t k = 0; k < size; ++k) on_byte(addr + k, kind, sym);
}

}  // namespace

bool race_detector_enabled() { return true; }

void race_begin_launch(const KernelBody& body) {
  ++g.generation;
  g.used = 0;
  g.body = &body;
  g.report.clear();
  g.races = 0;
  shared_symbols();
}
void race_begin_block(int block) {
  g.block = block;
  g.epoch = 0;
  for (uint32_t& e : g.warp_epochs) e = 0;
  g.in_kernel = true;
}
void race_set_thread(int thread) { g.thread = thread; }
void race_block_barrier() { ++g.epoch; }
void race_warp_barrier(int warp) { ++g.warp_epochs[warp]; }
void race_leave_kernel() { g.in_kernel = false; }
std::string race_first_report() {
  if (g.report.empty()) return g.report;
  std::ostringstream os;
  os << g.report << " (" << g.races << " conflicting accesses in this launch)";
  return os.str();
}
uint64_t race_checked_bytes() { return g.checked; }

void note_atomic(const volatile void* addr, size_t size, bool write) {
  on_access(addr, size, write ? Kind::AtomicWrite : Kind::AtomicRead);
}

}  // namespace ff_emu

// ThreadSanitizer's instrumentation ABI, answered by the detector above.
#define FF_EMU_HOOKS(N)                                                                              \
  extern "C" void __tsan_read##N(void* p) { ff_emu::on_access(p, N, ff_emu::Kind::Read); }           \
  extern "C" void __tsan_write##N(void* p) { ff_emu::on_access(p, N, ff_emu::Kind::Write); }         \
  extern "C" void __tsan_unaligned_read##N(void* p) { ff_emu::on_access(p, N, ff_emu::Kind::Read); } \
  extern "C" void __tsan_unaligned_write##N(void* p) { ff_emu::on_access(p, N, ff_emu::Kind::Write); } \
  extern "C" void __tsan_volatile_read##N(void* p) { ff_emu::on_access(p, N, ff_emu::Kind::AtomicRead); } \
  extern "C" void __tsan_volatile_write##N(void* p) { ff_emu::on_access(p, N, ff_emu::Kind::AtomicWrite); }
FF_EMU_HOOKS(1)
FF_EMU_HOOKS(2)
FF_EMU_HOOKS(4)
FF_EMU_HOOKS(8)
FF_EMU_HOOKS(16)
extern "C" void __tsan_read_range(void* p, unsigned long n) { ff_emu::on_access(p, n, ff_emu::Kind::Read); }
extern "C" void __tsan_write_range(void* p, unsigned long n) { ff_emu::on_access(p, n, ff_emu::Kind::Write); }
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void**, void*) {}
extern "C" void __tsan_vptr_read(void**) {}
