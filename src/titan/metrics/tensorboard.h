// TensorBoard event files: TFRecord framing (length, masked CRC-32C of the length, an Event
// protobuf, masked CRC-32C of it) in dump_folder/save_tb_folder/events.out.tfevents.*.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>

namespace titan::metrics {

class TensorBoardWriter {
 public:
  // Creates the folder and the event file; throws UserError when it cannot.
  TensorBoardWriter(const std::string& folder, int rank);
  void scalar(const std::string& tag, double value, int64_t step);
  // Appends the records since the last flush, whole or not at all; UserError naming the file and
  // the reason when they cannot be written (they are then dropped).
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& bytes);
  std::string path_;
  std::string pending_;  // records since the last flush, appended whole
};

}  // namespace titan::metrics
