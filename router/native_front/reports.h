// Reports to the Python router on stdout (what the front answered, what it handed over),
// written in batches by one thread so that a call never waits on the pipe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>

namespace meshserve {

class Reports {
 public:
  void Add(std::string line) {
    std::lock_guard<std::mutex> lock(mu_);
    buffer_ += line;
    if (buffer_.size() > (64 << 10)) ready_.notify_one();
  }

  void Run(const std::atomic<bool>& stopping) {
    std::string out;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        ready_.wait_for(lock, std::chrono::milliseconds(20));
        out.swap(buffer_);
      }
      if (!out.empty()) {
        std::fwrite(out.data(), 1, out.size(), stdout);
        std::fflush(stdout);
        out.clear();
      }
      if (stopping.load()) return;
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable ready_;
  std::string buffer_;
};

}  // namespace meshserve
