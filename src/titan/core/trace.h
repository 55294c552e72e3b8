// Phase timing for profiling steps: named, nested spans written as a Chrome trace (open it in
// Perfetto or chrome://tracing). A null Tracer or one not recording costs one branch per span.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace titan {

class Tracer {
 public:
  explicit Tracer(int rank = 0) : rank_(rank), origin_(std::chrono::steady_clock::now()) {}
  void set_recording(bool on) { recording_ = on; }
  bool recording() const { return recording_; }
  void clear() { events_.clear(); }
  // Writes {"traceEvents": [...]} to path; throws UserError when it cannot.
  void write_chrome_trace(const std::string& path) const;

  class Span {
   public:
    Span(Tracer* t, std::string name);
    ~Span();
    Span(const Span&) = delete;
    Span& operator=(const Span&) = delete;

   private:
    Tracer* t_;
    std::string name_;
    double start_us_ = 0;
  };

 private:
  double now_us() const {
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - origin_).count();
  }
  struct Event {
    std::string name;
    double start_us, dur_us;
  };
  int rank_;
  bool recording_ = false;
  std::chrono::steady_clock::time_point origin_;
  std::vector<Event> events_;
};

}  // namespace titan
