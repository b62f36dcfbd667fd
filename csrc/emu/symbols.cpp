// Names the kernels' __shared__ arrays: reads this module's ELF symbol table (local symbols
// included) once and keeps the `ff_emu_shared_guard_N` objects (see include/cuda_runtime.h) and
// every other static of the functions that have them.
#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <cstdlib>
#include <cstring>

#include "emu_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace ff_emu {
namespace {

std::string demangle(const char* name) {
  int status = 0;
  char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = (status == 0 && out) ? out : name;
  std::free(out);
  return s;
}

std::string scope_of(const std::string& name) {
  const size_t cut = name.rfind("::");
  return cut == std::string::npos ? std::string() : name.substr(0, cut);
}

std::vector<StaticSymbol> read_symbols() {
  std::vector<StaticSymbol> objects;
  Dl_info info{};
  if (!dladdr(reinterpret_cast<void*>(&read_symbols), &info) || !info.dli_fname) return objects;
  const uintptr_t base = reinterpret_cast<uintptr_t>(info.dli_fbase);
  const int fd = open(info.dli_fname, O_RDONLY);
  if (fd < 0) return objects;
  struct stat st {};
  fstat(fd, &st);
  void* map = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return objects;
  const char* file = static_cast<const char*>(map);
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(file);
  const auto* sections = reinterpret_cast<const Elf64_Shdr*>(file + eh->e_shoff);
  for (int s = 0; s < eh->e_shnum; ++s) {
    if (sections[s].sh_type != SHT_SYMTAB) continue;
    const auto* syms = reinterpret_cast<const Elf64_Sym*>(file + sections[s].sh_offset);
    const char* strtab = file + sections[sections[s].sh_link].sh_offset;
    const size_t count = sections[s].sh_size / sizeof(Elf64_Sym);
    for (size_t k = 0; k < count; ++k) {
      if (ELF64_ST_TYPE(syms[k].st_info) != STT_OBJECT || syms[k].st_size == 0) continue;
      const char* raw = strtab + syms[k].st_name;
      if (std::strncmp(raw, "_ZZ", 3) != 0) continue;  // function-local statics only
      const uintptr_t begin = base + syms[k].st_value;
      std::string name = demangle(raw);
      const bool guard = name.find("ff_emu_shared_guard_") != std::string::npos;
      objects.push_back(StaticSymbol{begin, begin + syms[k].st_size, std::move(name), guard});
    }
  }
  munmap(map, static_cast<size_t>(st.st_size));
  std::sort(objects.begin(), objects.end(),
            [](const StaticSymbol& a, const StaticSymbol& b) { return a.begin < b.begin; });
  // Device code has no function-local statics but __shared__ ones, so every static of a function
  // that declares a guard is shared memory (a declaration with several arrays has one guard).
  std::set<std::string> kernel_scopes;
  for (const StaticSymbol& o : objects) {
    if (o.guard) kernel_scopes.insert(scope_of(o.name));
  }
  std::vector<StaticSymbol> shared;
  for (const StaticSymbol& o : objects) {
    if (kernel_scopes.count(scope_of(o.name))) shared.push_back(o);
  }
  return shared;
}

}  // namespace

const std::vector<StaticSymbol>& shared_symbols() {
  static const std::vector<StaticSymbol> symbols = read_symbols();
  return symbols;
}

const StaticSymbol* find_shared_symbol(uintptr_t addr) {
  const auto& syms = shared_symbols();
  auto it = std::upper_bound(syms.begin(), syms.end(), addr,
                             [](uintptr_t a, const StaticSymbol& s) { return a < s.begin; });
  if (it == syms.begin()) return nullptr;
  --it;
  return addr < it->end ? &*it : nullptr;
}

void poison_shared_guards() {
#if defined(__SANITIZE_ADDRESS__)
  static bool done = false;
  if (done) return;
  done = true;
  for (const StaticSymbol& s : shared_symbols()) {
    if (s.guard) ASAN_POISON_MEMORY_REGION(reinterpret_cast<void*>(s.begin), s.end - s.begin);
  }
#endif
}

}  // namespace ff_emu
