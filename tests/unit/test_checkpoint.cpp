// Checkpoint format: resharding reads, crash leftovers, damaged files, safetensors and the HF
// mapping, and the KV-cache decoder against the full forward.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "titan/checkpoint/checkpoint.h"
#include "titan/checkpoint/hf_llama.h"
#include "titan/checkpoint/safetensors.h"
#include "titan/core/error.h"
#include "titan/core/rng.h"
#include "titan/models/llama3/decoder.h"
#include "titan/models/llama3/init.h"

using namespace titan;
using namespace titan::checkpoint;
namespace fs = std::filesystem;

namespace {
struct TempDir {
  fs::path path;
  TempDir() : path(fs::temp_directory_path() / ("titan_ckpt_" + std::to_string(::getpid()) + "_" + std::to_string(n()++))) {
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static int& n() {
    static int c = 0;
    return c;
  }
};

llama3::ModelArgs tiny() {
  llama3::ModelArgs a;
  a.dim = 24;
  a.n_layers = 2;
  a.n_heads = 6;
  a.n_kv_heads = 2;
  a.vocab_size = 37;  // odd: uneven dim-0 shards
  a.multiple_of = 16;
  return a;
}

// Moments get values of their own so the test tells them apart from the weights.
void fill_moments(std::deque<Parameter>& ps) {
  for (auto& p : ps)
    for (int64_t i = 0; i < p.master.numel(); ++i) {
      p.exp_avg.f32()[i] = static_cast<float>(p.global_index(i)) * 0.5f;
      p.exp_avg_sq.f32()[i] = static_cast<float>(p.global_index(i)) * 0.25f;
    }
}

std::string save_sharded(const fs::path& folder, int world, int64_t step) {
  const std::string final_dir = (folder / step_dir_name(step)).string(), tmp = final_dir + ".tmp";
  Metadata meta;
  meta.world = world;
  meta.state = {step, "", "{}", ""};
  for (int r = 0; r < world; ++r) {
    llama3::Transformer shard(tiny(), r, world);
    shard.init_weights(5);
    fill_moments(shard.parameters());
    auto entries = write_rank_file(tmp, r, shard.parameters(), true);
    meta.shards.insert(meta.shards.end(), entries.begin(), entries.end());
  }
  commit(tmp, final_dir, meta);
  return final_dir;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Checkpoint, SavedAtOneRankCountLoadsAtAnyOther) {
  TempDir d;
  llama3::Transformer whole(tiny());
  whole.init_weights(5);
  fill_moments(whole.parameters());
  for (int saved : {1, 3}) {
    std::string name = "w";
    name += std::to_string(saved);
    const auto dir = save_sharded(d.path / name, saved, 7);
    const auto meta = read_metadata(dir);
    EXPECT_EQ(meta.world, saved);
    for (int world : {1, 2, 4}) {
      for (int r = 0; r < world; ++r) {
        llama3::Transformer shard(tiny(), r, world);
        load_parameters(dir, meta, shard.parameters(), true);
        for (auto& p : shard.parameters()) {
          const Parameter& w = whole.parameter(p.name);
          const int64_t off = p.rows.begin * p.row_elems();
          for (int64_t i = 0; i < p.master.numel(); ++i) {
            ASSERT_EQ(p.master.f32()[i], w.master.f32()[off + i]) << p.name << " saved " << saved << " loaded " << r << "/" << world;
            ASSERT_EQ(p.exp_avg.f32()[i], w.exp_avg.f32()[off + i]) << p.name << " exp_avg";
            ASSERT_EQ(p.exp_avg_sq.f32()[i], w.exp_avg_sq.f32()[off + i]) << p.name << " exp_avg_sq";
          }
        }
      }
    }
  }
}

TEST(Checkpoint, StepFolderNamesAreStepAndDigits) {
  EXPECT_EQ(checkpoint::step_of_dir_name("step-0"), 0);
  EXPECT_EQ(checkpoint::step_of_dir_name("step-0100"), 100);
  for (const char* other : {"step-", "step-3.tmp", "step--4", "step-+5", "export-step-3", "step-12345678901234567890"})
    EXPECT_FALSE(checkpoint::step_of_dir_name(other)) << other;
}

TEST(Checkpoint, IncompleteSavesAreNotCheckpoints) {
  TempDir d;
  save_sharded(d.path, 1, 3);
  fs::create_directories(d.path / "step-9.tmp");  // a crash mid-save
  fs::create_directories(d.path / "step-12");     // no metadata.json
  EXPECT_EQ(list_steps(d.path.string()), std::vector<int64_t>{3});
}

TEST(Checkpoint, DamagedFilesNameTheTensorOrFile) {
  TempDir d;
  llama3::Transformer model(tiny());
  auto load = [&](const std::string& dir) { load_parameters(dir, read_metadata(dir), model.parameters(), true); };
  {  // checksum
    const auto dir = save_sharded(d.path / "a", 1, 1);
    std::fstream f(fs::path(dir) / rank_file_name(0), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x55');
    f.close();
    EXPECT_NE(error_of([&] { load(dir); }).find("checksum mismatch in tensor model/"), std::string::npos);
  }
  {  // truncated
    const auto dir = save_sharded(d.path / "b", 1, 1);
    fs::resize_file(fs::path(dir) / rank_file_name(0), 1000);
    EXPECT_NE(error_of([&] { load(dir); }).find("truncated"), std::string::npos);
  }
  {  // missing rank file
    const auto dir = save_sharded(d.path / "c", 3, 1);
    fs::remove(fs::path(dir) / rank_file_name(2));
    EXPECT_NE(error_of([&] { load(dir); }).find("missing rank file"), std::string::npos);
  }
  {  // a different model shape
    const auto dir = save_sharded(d.path / "d", 1, 1);
    auto other = tiny();
    other.vocab_size = 40;
    llama3::Transformer bigger(other);
    const auto err = error_of([&] { load_parameters(dir, read_metadata(dir), bigger.parameters(), true); });
    EXPECT_NE(err.find("tok_embeddings.weight has shape [37, 24], the model expects [40, 24]"), std::string::npos) << err;
  }
  {  // foreign and missing metadata
    fs::create_directories(d.path / "e");
    EXPECT_NE(error_of([&] { read_metadata((d.path / "e").string()); }).find("missing"), std::string::npos);
    std::ofstream(d.path / "e" / "metadata.json") << "{\"format\": \"something-else\"}";
    EXPECT_NE(error_of([&] { read_metadata((d.path / "e").string()); }).find("not a titan checkpoint"), std::string::npos);
    std::ofstream(d.path / "e" / "metadata.json") << "garbage";
    EXPECT_NE(error_of([&] { read_metadata((d.path / "e").string()); }).find("malformed"), std::string::npos);
  }
}

TEST(HfLlama, RopePermutationRoundTripsAndMatchesHfLayout) {
  const int64_t heads = 2, hd = 6, cols = 3;
  std::vector<float> meta(heads * hd * cols), hf(meta.size()), back(meta.size());
  for (size_t i = 0; i < meta.size(); ++i) meta[i] = static_cast<float>(i);
  permute_rope_rows(meta.data(), hf.data(), heads, hd, cols, true);
  permute_rope_rows(hf.data(), back.data(), heads, hd, cols, false);
  EXPECT_EQ(back, meta);
  // HF row 1 of head 0 is Meta row 2 (the first element of pair 1); HF row 3 is Meta row 1.
  EXPECT_EQ(hf[1 * cols], meta[2 * cols]);
  EXPECT_EQ(hf[3 * cols], meta[1 * cols]);
  EXPECT_EQ(hf_name("layers.4.feed_forward.w1.weight"), "model.layers.4.mlp.gate_proj.weight");
  EXPECT_EQ(hf_name("output.weight"), "lm_head.weight");
}

TEST(HfLlama, ExportImportRoundTripAndRefusals) {
  TempDir d;
  auto args = llama3::flavor("debugmodel");
  args.n_layers = 6;
  llama3::Transformer model(args);
  model.init_weights(9);
  export_hf(model.parameters(), args, d.path.string(), false, 1, 2);
  const auto m = import_hf(d.path.string());
  EXPECT_EQ(m.flavor, "debugmodel");
  for (auto& p : model.parameters())
    ASSERT_EQ(0, std::memcmp(m.weights.at(p.name).data(), p.master.f32(), p.master.bytes())) << p.name;
  std::ifstream in(d.path / "config.json");
  const auto original = nlohmann::json::parse(in);
  auto refuse = [&](const std::string& key, const std::string& value) {
    auto c = original;
    c[key] = nlohmann::json::parse(value);
    std::ofstream(d.path / "config.json") << c.dump();
    const auto err = error_of([&] { import_hf(d.path.string()); });
    std::ofstream(d.path / "config.json") << original.dump();
    return err;
  };
  // Llama 3.1's scaling imports whole; an incomplete one, or another type, is refused by name.
  EXPECT_NE(refuse("rope_scaling", R"({"rope_type": "llama3", "factor": 8.0})").find("rope_scaling: expected factor"),
            std::string::npos);
  EXPECT_NE(refuse("rope_scaling", R"({"rope_type": "yarn", "factor": 8.0})").find("rope_type yarn is not supported"),
            std::string::npos);
  EXPECT_NE(refuse("rope_scaling", R"({"rope_type": "llama3", "factor": 0.5, "low_freq_factor": 1, "high_freq_factor": 4,
                                      "original_max_position_embeddings": 8192})")
                .find("must be 0 (none) or at least 1"),
            std::string::npos);
  EXPECT_EQ(refuse("rope_scaling", R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"),
            "");
  EXPECT_NE(refuse("tie_word_embeddings", "true").find("tie_word_embeddings"), std::string::npos);
  EXPECT_NE(refuse("hidden_size", "300").find("no titan flavor has this shape"), std::string::npos);
  fs::resize_file(d.path / "model.safetensors", 4000);
  EXPECT_NE(error_of([&] { import_hf(d.path.string()); }).find("model.safetensors"), std::string::npos);
}

TEST(Decoder, KvCacheLogitsEqualTheFullForward) {
  auto a = tiny();
  llama3::Transformer model(a);
  model.init_weights(3);
  const int64_t T = 9;
  std::vector<int32_t> tokens(T);
  for (int64_t i = 0; i < T; ++i) tokens[i] = static_cast<int32_t>((i * 7 + 3) % a.vocab_size);
  std::vector<float> full(T * a.vocab_size);
  model.forward_logits(tokens.data(), {1, T}, full.data());
  llama3::KvCacheDecoder dec(model, T);
  for (int64_t t = 0; t < T; ++t) {
    const auto& z = dec.step(tokens[t]);
    for (int64_t v = 0; v < a.vocab_size; ++v) ASSERT_NEAR(z[v], full[t * a.vocab_size + v], 1e-4) << "position " << t;
  }
}

// Issue 17: a saved step is replaced only when asked (a resume from an earlier load_step), and
// then whole; never by a save that merely found the folder there.
TEST(CheckpointReliability, CommitReplacesASavedStepOnlyWhenAsked) {
  TempDir d;
  const auto dir = save_sharded(d.path, 1, 4);
  const auto meta_before = read_metadata(dir);
  llama3::Transformer other(tiny());
  other.init_weights(9);
  Metadata meta;
  meta.state = {4, "", "{\"other\": 1}", ""};
  meta.shards = write_rank_file(dir + ".tmp", 0, other.parameters(), true);
  EXPECT_NE(error_of([&] { commit(dir + ".tmp", dir, meta); }).find("already holds a saved checkpoint"), std::string::npos);
  EXPECT_EQ(read_metadata(dir).state.model_signature, meta_before.state.model_signature);
  commit(dir + ".tmp", dir, meta, true);
  EXPECT_EQ(read_metadata(dir).state.model_signature, "{\"other\": 1}");
  EXPECT_FALSE(fs::exists(dir + ".tmp"));
  EXPECT_EQ(list_steps(d.path.string()), std::vector<int64_t>{4});
  // A step folder without metadata.json is no checkpoint: a save may take its place unasked.
  fs::create_directories(d.path / "step-5" / "junk");
  meta.state.step = 5;
  meta.shards = write_rank_file((d.path / "step-5.tmp").string(), 0, other.parameters(), true);
  commit((d.path / "step-5.tmp").string(), (d.path / "step-5").string(), meta);
  EXPECT_EQ(list_steps(d.path.string()), (std::vector<int64_t>{4, 5}));
  EXPECT_FALSE(fs::exists(d.path / "step-5" / "junk"));
}

TEST(CheckpointReliability, NonFiniteStateIsNeverWritten) {
  TempDir d;
  for (const char* which : {"master", "exp_avg", "exp_avg_sq"}) {
    llama3::Transformer model(tiny());
    model.init_weights(5);
    Parameter& p = model.parameters().back();
    Tensor& t = std::string(which) == "master" ? p.master : std::string(which) == "exp_avg" ? p.exp_avg : p.exp_avg_sq;
    t.f32()[3] = std::string(which) == "exp_avg" ? INFINITY : NAN;
    const std::string err = error_of([&] { write_rank_file((d.path / which).string(), 0, model.parameters(), true); });
    EXPECT_NE(err.find(p.name), std::string::npos) << which << ": " << err;
    EXPECT_NE(err.find("not finite"), std::string::npos) << err;
  }
}

TEST(CheckpointReliability, MetadataChecksumCoversEveryValue) {
  TempDir d;
  const auto dir = save_sharded(d.path, 1, 6);
  const fs::path path = fs::path(dir) / "metadata.json";
  auto j = nlohmann::json::parse(std::ifstream(path));
  ASSERT_TRUE(j.contains("metadata_xxh3"));
  j["shards"][0]["offset"] = j["shards"][0]["offset"].get<int64_t>();  // unchanged: still accepted
  std::ofstream(path) << j.dump(2);
  EXPECT_EQ(read_metadata(dir).state.step, 6);
  j["state"]["data"] = "{\"windows\": 1}";
  std::ofstream(path) << j.dump(2);
  EXPECT_NE(error_of([&] { read_metadata(dir); }).find("checksum mismatch"), std::string::npos);
}

TEST(CheckpointReliability, ListingErrorsAndOddNamesAreErrorsNotAnEmptyFolder) {
  TempDir d;
  EXPECT_TRUE(list_steps((d.path / "not-yet").string()).empty());  // nothing saved yet
  std::ofstream(d.path / "a-file") << "x";
  EXPECT_NE(error_of([&] { list_steps((d.path / "a-file").string()); }).find("not a directory"), std::string::npos);
  const auto dir = save_sharded(d.path / "ck", 1, 3);
  fs::rename(dir, d.path / "ck" / "step-03");
  EXPECT_NE(error_of([&] { list_steps((d.path / "ck").string()); }).find("step-03"), std::string::npos);
}
