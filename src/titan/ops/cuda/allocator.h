// A caching device allocator: freed blocks are kept by size and handed out again, so a run
// that plans its memory once never calls cudaMalloc inside a step. Its statistics feed the
// memory metrics (torchtitan's memory/* tags).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <unordered_map>
#include <utility>
#include <vector>

namespace titan::cuda {

struct AllocatorStats {
  size_t active = 0, peak_active = 0;      // bytes handed out
  size_t reserved = 0, peak_reserved = 0;  // bytes held from the driver (active + cached)
  int64_t alloc_retries = 0;               // cudaMalloc failed, the cache was freed, it was retried
  int64_t ooms = 0;                        // it failed again
};

class DeviceAllocator {
 public:
  DeviceAllocator() = default;
  ~DeviceAllocator();
  DeviceAllocator(const DeviceAllocator&) = delete;
  DeviceAllocator& operator=(const DeviceAllocator&) = delete;

  // Throws UserError (naming the bytes asked for and the statistics) when the device is full.
  void* allocate(size_t bytes);
  void release(void* p);
  void empty_cache();  // returns every cached block to the driver
  const AllocatorStats& stats() const { return stats_; }

 private:
  static size_t round_up(size_t bytes);
  std::multimap<size_t, void*> cached_;        // free blocks by size
  std::unordered_map<void*, size_t> in_use_;   // live blocks and their sizes
  AllocatorStats stats_;
};

// One allocation owned by a DeviceAllocator, released when the buffer goes.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceAllocator& alloc, size_t bytes) : alloc_(&alloc), ptr_(alloc.allocate(bytes)), bytes_(bytes) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      alloc_ = o.alloc_;
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      o.ptr_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  void reset() {
    if (ptr_) alloc_->release(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  DeviceAllocator* alloc_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace titan::cuda
