#include "titan/metrics/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <chrono>
#include <filesystem>

#include "metrics/tensorboard_event.pb.h"
#include "titan/core/error.h"
#include "titan/metrics/append_file.h"
#include "titan/metrics/crc32c.h"

namespace titan::metrics {

namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& folder, int rank) {
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec) throw UserError(concat("metrics.save_tb_folder: cannot create '", folder, "': ", ec.message()));
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  path_ = concat(folder, "/events.out.tfevents.", static_cast<int64_t>(now_seconds()), ".", host, ".",
                 static_cast<int64_t>(getpid()), ".", rank);
  const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw UserError(concat("metrics.save_tb_folder: cannot write '", path_, "': ", std::strerror(errno)));
  ::close(fd);
  tensorboard::Event first;
  first.set_wall_time(now_seconds());
  first.set_file_version("brain.Event:2");
  write_record(first.SerializeAsString());
  flush();
}

void TensorBoardWriter::scalar(const std::string& tag, double value, int64_t step) {
  tensorboard::Event e;
  e.set_wall_time(now_seconds());
  e.set_step(step);
  auto* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  write_record(e.SerializeAsString());
}

void TensorBoardWriter::write_record(const std::string& bytes) {
  const uint64_t len = bytes.size();
  const uint32_t len_crc = masked_crc32c(&len, sizeof len), data_crc = masked_crc32c(bytes.data(), bytes.size());
  pending_.append(reinterpret_cast<const char*>(&len), sizeof len);  // little-endian on every host titan builds for
  pending_.append(reinterpret_cast<const char*>(&len_crc), sizeof len_crc);
  pending_.append(bytes);
  pending_.append(reinterpret_cast<const char*>(&data_crc), sizeof data_crc);
}

void TensorBoardWriter::flush() {
  const std::string why = append_whole(path_, pending_);
  pending_.clear();  // a failed batch of records is dropped whole, so the file stays readable
  if (!why.empty()) throw UserError(concat(path_, ": write failed: ", why));
}

}  // namespace titan::metrics
