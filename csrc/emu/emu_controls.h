// What tests control and observe of the SIMT emulation (exposed by the emulation module).
#pragma once

#include <cstdint>
#include <string>

namespace ff_emu {

struct Stats {
  uint64_t launches = 0, failed_launches = 0, blocks = 0, threads = 0, barriers = 0, warp_ops = 0, switches = 0;
  uint64_t checked_bytes = 0;  // byte accesses the race detector examined
};

/// 0 runs blocks and threads in index order; any other seed shuffles both, per launch.
void set_schedule_seed(uint64_t seed);
Stats stats();
void reset_stats();
bool race_detector_enabled();
/// Runs a deliberately broken kernel of csrc/emu/selftest_kernels.cpp; throws ff::Error with the
/// emulation's report (tests assert the report).
void run_selftest(const std::string& name);

}  // namespace ff_emu
