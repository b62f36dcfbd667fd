// The SIMT execution model on one CPU thread: a launch runs its blocks one after another (in a
// seed-shuffled order), a block runs its threads as fibers. Between two rendezvous the ready
// threads run in a seed-shuffled order; a thread runs until it reaches __syncthreads (block
// barrier) or a warp intrinsic (warp rendezvous: every lane of the mask must arrive at the same
// kind of op with the same mask, then the values are exchanged). A rendezvous that can never
// complete (exited lanes in a mask, lanes waiting at a block barrier, disagreeing masks) is
// reported instead of hanging, like the hazards compute-sanitizer's synccheck reports.
#include <algorithm>
#include <mutex>
#include <random>
#include <sstream>
#include <string>

#include "emu_internal.h"
#include "emu_controls.h"
#include "flowfast/common.h"

namespace ff_emu {
namespace {

enum class State { Ready, AtBlockBarrier, AtWarpOp, Done };

struct Thread {
  Fiber* fiber = nullptr;
  State state = State::Ready;
  uint3 index{0, 0, 0};
  WarpOp op = WarpOp::Sync;
  unsigned mask = 0;
  uint64_t bits = 0, result = 0;
  int param = 0, width = 32;
};

struct Launch {
  const LaunchConfig* config = nullptr;
  KernelBody* body = nullptr;
  uint3 block{0, 0, 0};
  int n_threads = 0;
  Thread threads[kMaxBlockThreads];
  Thread* current = nullptr;
  std::string error;
  std::mt19937_64 rng;
};

Launch g_launch;
std::mutex g_launch_mutex;  // one emulated launch at a time per process
uint64_t g_seed = 0;
uint64_t g_launch_counter = 0;
Stats g_stats;

void fail(const std::string& what) {
  if (g_launch.error.empty()) g_launch.error = what;
}

std::string where(int thread) {
  const Thread& t = g_launch.threads[thread];
  std::ostringstream os;
  os << "thread (" << t.index.x << "," << t.index.y << "," << t.index.z << ") [warp " << thread / kWarp << " lane "
     << thread % kWarp << "] of block (" << g_launch.block.x << "," << g_launch.block.y << "," << g_launch.block.z
     << ")";
  return os.str();
}

int current_thread() { return static_cast<int>(g_launch.current - g_launch.threads); }

void thread_main(Fiber* f) {
  Thread* t = static_cast<Thread*>(fiber_user(f));
  try {
    g_launch.body->run();
  } catch (const std::exception& e) {
    fail(std::string("exception in device code: ") + e.what());
  }
  t->state = State::Done;
}

// Blocks the calling thread until the scheduler resolves its rendezvous.
void wait_here(State state) {
  Thread* t = g_launch.current;
  t->state = state;
  yield_to_scheduler(t->fiber, false);
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::Sync: return "__syncwarp";
    case WarpOp::Index: return "__shfl_sync";
    case WarpOp::Xor: return "__shfl_xor_sync";
    case WarpOp::Down: return "__shfl_down_sync";
    case WarpOp::Up: return "__shfl_up_sync";
    case WarpOp::Ballot: return "__ballot_sync";
  }
  return "?";
}

// The lane whose value `lane` reads, or -1 for its own value (CUDA's rules for width segments).
int source_lane(const Thread& t, int lane) {
  const int width = t.width, segment = lane / width * width;
  switch (t.op) {
    case WarpOp::Index: return segment + ((t.param % width) + width) % width;
    case WarpOp::Xor: {
      const int src = lane ^ t.param;
      return src / width > lane / width || src >= kWarp ? -1 : src;
    }
    case WarpOp::Down: {
      const int src = lane + t.param;
      return src >= segment + width ? -1 : src;
    }
    case WarpOp::Up: {
      const int src = lane - t.param;
      return src < segment ? -1 : src;
    }
    default: return -1;
  }
}

// Completes every warp rendezvous whose lanes have all arrived. Returns whether any did;
// records an error (and returns false) when one can never complete.
bool resolve_warp_ops(std::string* blocked_reason) {
  bool progressed = false;
  const int n = g_launch.n_threads;
  for (int w0 = 0; w0 < n; w0 += kWarp) {
    const int lanes = std::min(kWarp, n - w0);
    unsigned handled = 0;
    for (int l = 0; l < lanes; ++l) {
      Thread& lead = g_launch.threads[w0 + l];
      if (lead.state != State::AtWarpOp || (handled >> l & 1u)) continue;
      const unsigned mask = lead.mask;
      if (!(mask >> l & 1u)) {
        fail(std::string(op_name(lead.op)) + " called by " + where(w0 + l) + " whose lane is not in its mask");
        return false;
      }
      bool complete = true;
      for (int k = 0; k < kWarp && complete; ++k) {
        if (!(mask >> k & 1u)) continue;
        if (k >= lanes) {
          std::ostringstream os;
          os << op_name(lead.op) << " by " << where(w0 + l) << ": mask 0x" << std::hex << mask << std::dec
             << " names lane " << k << ", which does not exist in this block";
          fail(os.str());
          return false;
        }
        const Thread& o = g_launch.threads[w0 + k];
        if (o.state == State::Done) {
          std::ostringstream os;
          os << op_name(lead.op) << " by " << where(w0 + l) << ": lane " << k << " of mask 0x" << std::hex << mask
             << std::dec << " has exited";
          fail(os.str());
          return false;
        }
        if (o.state == State::AtBlockBarrier) {
          *blocked_reason = std::string(op_name(lead.op)) + " by " + where(w0 + l) + " waits for lane " +
                            std::to_string(k) + ", which waits at __syncthreads";
          complete = false;
        } else if (o.state == State::AtWarpOp && (o.mask != mask || o.op != lead.op)) {
          std::ostringstream os;
          os << "divergent warp op: " << where(w0 + l) << " is in " << op_name(lead.op) << " with mask 0x" << std::hex
             << mask << " but lane " << std::dec << k << " is in " << op_name(o.op) << " with mask 0x" << std::hex
             << o.mask;
          fail(os.str());
          return false;
        } else if (o.state == State::Ready) {
          complete = false;
        }
      }
      handled |= mask;
      if (!complete) continue;
      if (lead.op == WarpOp::Sync) race_warp_barrier(w0 / kWarp);
      uint64_t ballot = 0;
      for (int k = 0; k < kWarp; ++k) {
        if ((mask >> k & 1u) && g_launch.threads[w0 + k].bits) ballot |= uint64_t{1} << k;
      }
      for (int k = 0; k < kWarp; ++k) {
        if (!(mask >> k & 1u)) continue;
        Thread& t = g_launch.threads[w0 + k];
        if (t.op == WarpOp::Ballot) {
          t.result = ballot;
        } else if (t.op == WarpOp::Sync) {
          t.result = 0;
        } else {
          const int src = source_lane(t, k);
          if (src >= 0 && !(mask >> src & 1u)) {
            std::ostringstream os;
            os << op_name(t.op) << " by " << where(w0 + k) << " reads lane " << src << ", which is not in mask 0x"
               << std::hex << mask << " (undefined value on a GPU)";
            fail(os.str());
            return false;
          }
          t.result = src < 0 ? t.bits : g_launch.threads[w0 + src].bits;
        }
        t.state = State::Ready;
      }
      ++g_stats.warp_ops;
      progressed = true;
    }
  }
  return progressed;
}

void run_block(const uint3& block, int linear_block) {
  const dim3 bd = g_launch.config->block;
  g_launch.block = block;
  race_begin_block(linear_block);
  for (int t = 0; t < g_launch.n_threads; ++t) {
    Thread& th = g_launch.threads[t];
    th = Thread{};
    th.index = uint3{t % bd.x, t / bd.x % bd.y, t / (bd.x * bd.y)};
    th.fiber = fiber_at(t, &thread_main, &th);
  }
  std::vector<int> order(g_launch.n_threads);
  while (true) {
    order.clear();
    for (int t = 0; t < g_launch.n_threads; ++t) {
      if (g_launch.threads[t].state == State::Ready) order.push_back(t);
    }
    if (g_seed != 0) std::shuffle(order.begin(), order.end(), g_launch.rng);
    for (int t : order) {
      g_launch.current = &g_launch.threads[t];
      race_set_thread(t);
      resume(g_launch.threads[t].fiber);
      ++g_stats.switches;
    }
    g_launch.current = nullptr;
    if (!g_launch.error.empty()) return;  // the remaining fibers are abandoned
    int live = 0, at_barrier = 0;
    for (int t = 0; t < g_launch.n_threads; ++t) {
      const State s = g_launch.threads[t].state;
      live += s != State::Done;
      at_barrier += s == State::AtBlockBarrier;
    }
    if (live == 0) return;
    std::string blocked;
    if (resolve_warp_ops(&blocked)) continue;
    if (!g_launch.error.empty()) return;
    if (at_barrier == live) {
      for (int t = 0; t < g_launch.n_threads; ++t) {
        if (g_launch.threads[t].state == State::AtBlockBarrier) g_launch.threads[t].state = State::Ready;
      }
      race_block_barrier();
      ++g_stats.barriers;
      continue;
    }
    fail("deadlock: " + (blocked.empty() ? std::string("threads wait at different rendezvous") : blocked));
    return;
  }
}

}  // namespace

uint3 thread_idx() { return g_launch.current->index; }
uint3 block_idx() { return g_launch.block; }
dim3 block_dim() { return g_launch.config->block; }
dim3 grid_dim() { return g_launch.config->grid; }

void sync_threads() { wait_here(State::AtBlockBarrier); }

uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t bits, int param, int width) {
  Thread* t = g_launch.current;
  const bool valid_width = width > 0 && width <= kWarp && !(width & (width - 1));
  if (!valid_width) {
    fail(std::string(op_name(op)) + " by " + where(current_thread()) + ": width must be a power of 2 <= 32");
  }
  t->op = op;
  t->mask = mask;
  t->bits = bits;
  t->param = param;
  t->width = valid_width ? width : kWarp;
  wait_here(State::AtWarpOp);
  return t->result;
}

void run_launch(const LaunchConfig& config, KernelBody& body) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  const uint64_t threads = uint64_t{config.block.x} * config.block.y * config.block.z;
  const uint64_t blocks = uint64_t{config.grid.x} * config.grid.y * config.grid.z;
  FF_CHECK(threads >= 1 && threads <= kMaxBlockThreads, "emulated launch of ", config.kernel_name, ": ", threads,
           " threads per block (CUDA allows 1..1024)");
  FF_CHECK(blocks >= 1 && config.grid.y <= 65535 && config.grid.z <= 65535, "emulated launch of ",
           config.kernel_name, ": invalid grid (", config.grid.x, ", ", config.grid.y, ", ", config.grid.z, ")");
  FF_CHECK(config.shared_bytes == 0, "emulated launch of ", config.kernel_name,
           ": dynamic shared memory is not emulated");
  g_launch.config = &config;
  g_launch.body = &body;
  g_launch.n_threads = static_cast<int>(threads);
  g_launch.error.clear();
  g_launch.rng.seed(g_seed * 0x9E3779B97F4A7C15ull + (++g_launch_counter));
  ++g_stats.launches;
  race_begin_launch(body);

  std::vector<uint64_t> block_order(blocks);
  for (uint64_t b = 0; b < blocks; ++b) block_order[b] = b;
  if (g_seed != 0) std::shuffle(block_order.begin(), block_order.end(), g_launch.rng);
  for (uint64_t b : block_order) {
    const uint3 index{static_cast<unsigned>(b % config.grid.x), static_cast<unsigned>(b / config.grid.x % config.grid.y),
                      static_cast<unsigned>(b / (uint64_t{config.grid.x} * config.grid.y))};
    run_block(index, static_cast<int>(b));
    ++g_stats.blocks;
    g_stats.threads += threads;
    if (!g_launch.error.empty()) break;
  }
  race_leave_kernel();
  std::string error = g_launch.error;
  if (error.empty()) error = race_first_report();
  g_launch.config = nullptr;
  g_launch.body = nullptr;
  if (!error.empty()) {
    ++g_stats.failed_launches;
    FF_CHECK(false, "SIMT emulation: kernel ", config.kernel_name, ": ", error);
  }
}

void set_schedule_seed(uint64_t seed) { g_seed = seed; }
Stats stats() {
  Stats s = g_stats;
  s.checked_bytes = race_checked_bytes();
  return s;
}
void reset_stats() { g_stats = Stats{}; }

std::string describe_thread(int thread) { return where(thread); }

}  // namespace ff_emu
