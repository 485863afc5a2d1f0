// The prepared packed-weights file as XNNPACK holds it: one read-only mapping of the whole file, made when the
// first program loads, and every entry loaded from it stays mapped until the process ends (XNNWeightsCache keeps
// "from_load" entries when a program is unloaded). The core therefore reads each program's entries itself and,
// when memory is short, drops an evicted expert's pages: unmapped (out of the process's RSS) and out of the page
// cache. Without that, under a RAM cap the kernel's reclaim cannot tell an evicted expert's pages from a resident
// one's: on moe-1.2b at a 307 MB cap it reread 16 GB for 32 tokens (3.3 tok/s); with it, 2.5 GB (14 tok/s).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core.h"

namespace ce {

// The file's index as XNNWeightsCache writes it (backends/xnnpack/runtime/XNNWeightsCache.cpp, cache version 2):
// a 20-byte footer [index_start u64][entry_count u32][magic u32][version u32] and at index_start, per entry,
// [name_len u32][name][file_offset u64][data_size u64][seed u32]. A file of another layout is left unadvised.
static constexpr uint32_t kMagic = 0x58505743, kVersion = 2;

template <typename T>
static T le(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

PackedFile::PackedFile(const std::string& path, ce_evicted_pages evicted) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);  // kept: posix_fadvise on it drops evicted pages
  struct stat st;
  if (fd_ < 0 || ::fstat(fd_, &st) != 0 || st.st_size < 20) return;
  // keeping evicted pages is free while the whole file fits in memory; past that they crowd out resident ones
  drop_ = evicted == CE_EVICTED_DROP || (evicted == CE_EVICTED_AUTO && int64_t(st.st_size) > memory_available());
  dev_ = uint64_t(st.st_dev), ino_ = uint64_t(st.st_ino);
  uint64_t size = size_ = uint64_t(st.st_size);
  unsigned char footer[20];
  std::vector<unsigned char> index;
  bool ok = ::pread(fd_, footer, 20, off_t(size - 20)) == 20;
  uint64_t start = le<uint64_t>(footer);
  uint32_t count = le<uint32_t>(footer + 8);
  ok = ok && le<uint32_t>(footer + 12) == kMagic && le<uint32_t>(footer + 16) == kVersion && start < size - 20;
  if (ok) {
    index.resize(size - 20 - start);
    ok = ::pread(fd_, index.data(), index.size(), off_t(start)) == ssize_t(index.size());
  }
  if (!ok) return;
  const unsigned char *c = index.data(), *end = index.data() + index.size();
  for (uint32_t i = 0; i < count && c + 4 <= end; i++) {
    uint32_t n = le<uint32_t>(c);
    if (c + 4 + n + 20 > end) break;
    std::string name(reinterpret_cast<const char*>(c + 4), n);
    c += 4 + n;
    uint64_t offset = le<uint64_t>(c), bytes = le<uint64_t>(c + 8);
    c += 20;
    if (offset < start && bytes <= start - offset) entries_[name] = {offset, bytes};
  }
}

PackedFile::~PackedFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::vector<PackedFile::Range> PackedFile::ranges(const std::vector<std::string>& names) const {
  // an entry is named for its weight's data key, with its bias's key appended when it has one
  std::vector<Range> out;
  for (const auto& name : names)
    for (auto it = entries_.lower_bound(name); it != entries_.end() && it->first.compare(0, name.size(), name) == 0;
         ++it)
      out.push_back(it->second);
  return out;
}

// Where XNNPACK mapped the file in this process: the /proc/self/maps line of its device and inode at offset 0.
uintptr_t PackedFile::base() {
  std::lock_guard<std::mutex> g(mu_);
  if (base_) return base_;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long lo, hi, offset, inode;
    unsigned major, minor;
    char perms[8];
    if (std::sscanf(line.c_str(), "%lx-%lx %7s %lx %x:%x %lu", &lo, &hi, perms, &offset, &major, &minor, &inode) != 7)
      continue;
    if (inode == ino_ && offset == 0 && makedev(major, minor) == dev_ && hi - lo >= size_) {
      base_ = uintptr_t(lo);
      // no read-around on a fault: the core asks for each program's ranges itself (load), and a fault's window
      // (the device's read_ahead_kb, 8 MB here) would read other experts' bytes for every page it misses
      ::madvise(reinterpret_cast<void*>(base_), size_t(size_), MADV_RANDOM);
      break;
    }
  }
  return base_;
}

// Page-aligned address ranges of a program's entries in the mapping; empty before XNNPACK has mapped the file.
template <typename F>
static void each_page_range(uintptr_t at, const std::vector<PackedFile::Range>& ranges, F&& f) {
  static const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  if (!at) return;
  for (const auto& r : ranges) {
    // entries start on a page and own their page-rounded tail (reserve_space maps page-rounded sizes)
    uintptr_t lo = at + uintptr_t(r.offset), hi = (lo + uintptr_t(r.bytes) + page - 1) & ~(page - 1);
    if (lo % page == 0) f(reinterpret_cast<void*>(lo), size_t(hi - lo));
  }
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

void PackedFile::load(const std::vector<Range>& ranges) {
  // a miss reads exactly the program's packed bytes, here (on the prefetch worker when it loads): the kernel
  // reads each range ahead, then its pages are mapped (Linux >= 5.14; before that they fault in on first use).
  // Ranges still mapped since an earlier load (kept, not dropped) are left alone: walking them again costs
  // 0.25 ms a miss on moe-1.2b.
  std::vector<Range> todo;
  {
    std::lock_guard<std::mutex> g(mu_);
    for (const auto& r : ranges)
      if (mapped_.insert(r.offset).second) todo.push_back(r);
  }
  each_page_range(base(), todo, [](void* p, size_t n) {
    ::madvise(p, n, MADV_WILLNEED);
    ::madvise(p, n, MADV_POPULATE_READ);
  });
}

void PackedFile::release(const std::vector<Range>& ranges) {
  if (!drop_) return;
  {
    std::lock_guard<std::mutex> g(mu_);
    for (const auto& r : ranges) mapped_.erase(r.offset);
  }
  // unmapped first: the page cache lets go only of pages no process maps
  each_page_range(base(), ranges, [](void* p, size_t n) { ::madvise(p, n, MADV_DONTNEED); });
  for (const auto& r : ranges) ::posix_fadvise(fd_, off_t(r.offset), off_t(r.bytes), POSIX_FADV_DONTNEED);
}

void drop_cached(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

static int64_t read_number(const std::string& path) {
  std::ifstream f(path);
  std::string word;
  if (!(f >> word) || word == "max") return -1;
  try {
    return std::stoll(word);
  } catch (...) {
    return -1;
  }
}

int64_t memory_available() {
  int64_t avail = -1;
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kb;
  while (meminfo >> key >> kb) {
    if (key == "MemAvailable:") avail = kb * 1024;
    meminfo.ignore(64, '\n');
  }
  // a memory cgroup's limit (v2 "0::/path", v1 "N:memory:/path"), as `edge-bench --ram-cap` and a phone's app
  // sandbox set one: its page cache counts against the limit
  std::ifstream groups("/proc/self/cgroup");
  std::string line;
  while (std::getline(groups, line)) {
    auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    int64_t limit = -1, usage = -1;
    if (controllers.empty()) {
      limit = read_number("/sys/fs/cgroup" + path + "/memory.max");
      usage = read_number("/sys/fs/cgroup" + path + "/memory.current");
    } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
      limit = read_number("/sys/fs/cgroup/memory" + path + "/memory.limit_in_bytes");
      usage = read_number("/sys/fs/cgroup/memory" + path + "/memory.usage_in_bytes");
    }
    if (limit > 0 && usage >= 0 && limit < (int64_t(1) << 60)) avail = avail < 0 ? limit - usage : std::min(avail, limit - usage);
  }
  return avail < 0 ? INT64_MAX : avail;
}

}  // namespace ce
