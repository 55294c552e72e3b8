// titan: one binary for training and its tools.
#include <csignal>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "titan/cli/args.h"
#include "titan/cli/checkpoint_commands.h"
#include "titan/cli/data_command.h"
#include "titan/cli/tokenizer_command.h"
#include "titan/core/build_info.h"
#include "titan/core/error.h"
#include "titan/ops/cpu/blas_kernels.h"
#include "titan/train/memory_estimate.h"
#include "titan/train/trainer.h"

namespace {

const char* kUsage =
    "usage: titan <command> [options]\n"
    "commands:\n"
    "  train      train a model: titan train --config FILE [--section.key VALUE ...]\n"
    "  tokenizer  encode, decode, train tokenizers\n"
    "  data       pre-tokenize datasets\n"
    "  convert    import Hugging Face weights into a checkpoint\n"
    "  generate   sample from a checkpoint\n"
    "  inspect    show what a checkpoint holds\n"
    "  estimate   per-device memory of a run: titan estimate --config FILE [--ngpu N] [--device cuda|cpu]\n"
    "  --version  titan's commit and build (and on a CUDA build the NCCL and cuDNN it finds)\n"
    "run 'titan train --help' for every config key, and 'titan COMMAND --help' for each command.\n";

int dispatch(int argc, char** argv) {
  if (argc >= 2 && (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "version"))) {
    std::cout << titan::version_text();
    return 0;
  }
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "train") return titan::train::train_main(args);
  if (command == "tokenizer") return titan::cli::tokenizer_main(args);
  if (command == "data") return titan::cli::data_main(args);
  if (command == "inspect") return titan::cli::inspect_main(args);
  if (command == "convert") return titan::cli::convert_main(args);
  if (command == "generate") return titan::cli::generate_main(args);
  if (command == "estimate") return titan::train::estimate_main(args);
  throw titan::UserError("unknown command '" + command + "' (run 'titan --help')");
}

// Errors stay one line of readable length whatever they quote (a file's bytes, a huge value).
std::string one_line(const char* what) {
  constexpr size_t kMax = 1000;
  const std::string in(what);
  std::string out;
  size_t i = 0;
  for (; i < in.size() && out.size() < kMax; ++i) {
    const unsigned char c = static_cast<unsigned char>(in[i]);
    if (c == '\n') out += "\\n";
    else if (c < 0x20 || c == 0x7f) out += "\\x" + std::string(1, "0123456789abcdef"[c >> 4]) + "0123456789abcdef"[c & 15];
    else out += static_cast<char>(c);
  }
  while (i < in.size() && (static_cast<unsigned char>(in[i]) & 0xc0) == 0x80) out += in[i++];  // finish a UTF-8 character
  if (i < in.size()) out += "... (" + std::to_string(in.size()) + " bytes in all)";
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  titan::cpu::reexec_with_known_blas_kernels(argv);  // before any thread, file or MPI exists
  // Past a file-size limit (ulimit -f) a write then fails with EFBIG, which titan reports, instead
  // of the signal killing the process in the middle of whatever it was writing.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    return dispatch(argc, argv);
  } catch (const titan::UserError& e) {
    std::cerr << "titan: error: " << one_line(e.what()) << "\n";
    return 2;
  } catch (const std::filesystem::filesystem_error& e) {  // a path the user gave: too long, a link loop
    std::cerr << "titan: error: " << one_line(e.what()) << "\n";
    return 2;
  } catch (const titan::InternalError& e) {
    std::cerr << "titan: internal error (please report): " << one_line(e.what()) << "\n";
    return 3;
  } catch (const std::bad_alloc&) {
    std::cerr << "titan: error: out of memory (try a smaller training.batch_size or training.seq_len)\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "titan: error: " << one_line(e.what()) << "\n";
    return 1;
  }
}
