#include "titan/core/trace.h"

#include <filesystem>
#include <fstream>
#include <iomanip>

#include "titan/core/error.h"

namespace titan {

Tracer::Span::Span(Tracer* t, std::string name) : t_(t && t->recording_ ? t : nullptr) {
  if (t_) {
    name_ = std::move(name);
    start_us_ = t_->now_us();
  }
}

Tracer::Span::~Span() {
  if (t_) t_->events_.push_back({std::move(name_), start_us_, t_->now_us() - start_us_});
}

void Tracer::write_chrome_trace(const std::string& path) const {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  std::ofstream out(path);
  if (!out) throw UserError(concat("profiling: cannot write '", path, "'"));
  out << std::fixed << std::setprecision(3) << "{\"traceEvents\": [\n";
  for (size_t i = 0; i < events_.size(); ++i) {
    const auto& e = events_[i];
    std::string name;
    for (char c : e.name) name += (c == '"' || c == '\\') ? '_' : c;
    out << "  {\"name\": \"" << name << "\", \"ph\": \"X\", \"ts\": " << e.start_us << ", \"dur\": " << e.dur_us
        << ", \"pid\": " << rank_ << ", \"tid\": 0}" << (i + 1 < events_.size() ? ",\n" : "\n");
  }
  out << "], \"displayTimeUnit\": \"ms\"}\n";
}

}  // namespace titan
