// A minimal parallel-for over independent tasks for the pybind11 path (ONNX Runtime brings its
// own intra-op pool). Threads are started per call and pull task indices from a shared
// counter, so uneven tasks balance themselves; for the millisecond-scale warps this serves,
// the ~tens of microseconds to start threads do not matter, and no pool outlives the call.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace megaportraits {

// Resolve a user's thread count: 0 means all hardware threads.
inline size_t resolve_thread_count(size_t requested) {
  if (requested > 0) return requested;
  return std::max<size_t>(1, std::thread::hardware_concurrency());
}

// Run task(i) for i in [0, count) on up to num_threads threads (the caller's included).
// The first exception thrown by any task is rethrown in the caller after all threads join.
template <typename Task>
void parallel_for(size_t count, size_t num_threads, const Task& task) {
  const size_t workers = std::min(resolve_thread_count(num_threads), count);
  if (workers <= 1) {
    for (size_t i = 0; i < count; ++i) task(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto drain = [&]() {
    try {
      for (size_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) task(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      next.store(count);
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (size_t t = 1; t < workers; ++t) threads.emplace_back(drain);
  drain();
  for (auto& thread : threads) thread.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace megaportraits
