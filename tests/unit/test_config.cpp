#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "titan/config/job_config.h"
#include "titan/core/error.h"

using namespace titan;
using titan::config::JobConfig;

namespace {
std::string write_toml(const std::string& body) {
  static int counter = 0;
  auto path = std::filesystem::temp_directory_path() /
              ("titan_cfg_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".toml");
  std::ofstream(path) << body;
  return path.string();
}

// The UserError message of loading `body`, or "" when it loads and validates.
std::string load_error(const std::string& body, const std::vector<std::string>& flags = {}) {
  JobConfig cfg;
  try {
    cfg.load_file(write_toml(body));
    cfg.apply_overrides(flags);
    cfg.validate();
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Config, DefaultsValidate) {
  JobConfig cfg;
  EXPECT_NO_THROW(cfg.validate());
  EXPECT_EQ(cfg.get_string("model.flavor"), "debugmodel");
  EXPECT_EQ(cfg.get_real("training.max_norm"), 1.0);
}

TEST(Config, ReadsTorchtitanKeys) {
  JobConfig cfg;
  cfg.load_file(write_toml("[training]\nbatch_size = 3\nseq_len = 64\n[optimizer]\nlr = 1\n"));
  EXPECT_EQ(cfg.get_int("training.batch_size"), 3);
  EXPECT_EQ(cfg.get_real("optimizer.lr"), 1.0);  // an integer where a number is expected
  EXPECT_NE(cfg.origin("training.seq_len").find(":3"), std::string::npos);
}

TEST(Config, UnknownKeyNamesFileLineAndKey) {
  auto err = load_error("[training]\nbatch_size = 3\nbatch_sise = 4\n");
  EXPECT_NE(err.find(".toml:3: unknown key 'training.batch_sise'"), std::string::npos) << err;
}

TEST(Config, UnknownSectionWrongTypeAndSyntax) {
  EXPECT_NE(load_error("[trainer]\nsteps = 1\n").find("unknown section [trainer]"), std::string::npos);
  auto err = load_error("[training]\nsteps = \"ten\"\n");
  EXPECT_NE(err.find(":2: training.steps: expected an integer"), std::string::npos) << err;
  EXPECT_NE(load_error("[training\nsteps = 1\n").find("TOML syntax error"), std::string::npos);
  EXPECT_NE(load_error("steps = 1\n").find("must be a key inside a [section] table"), std::string::npos);
}

TEST(Config, LaterTorchtitanNamesSetTheSameKeys) {
  JobConfig cfg;
  cfg.load_file(write_toml("[lr_scheduler]\nwarmup_steps = 7\ndecay_type = \"cosine\"\ndecay_ratio = 0.25\nlr_min = 0.1\n"
                           "[training]\nlocal_batch_size = 3\n[parallelism]\ntensor_parallel_degree = 2\n"
                           "data_parallel_shard_degree = 4\n[checkpoint]\nenable = true\n"
                           "[metrics]\ndisable_color_printing = false\n"));
  cfg.validate();
  EXPECT_EQ(cfg.get_int("training.warmup_steps"), 7);
  EXPECT_EQ(cfg.get_string("training.lr_decay"), "cosine");
  EXPECT_EQ(cfg.get_int("training.batch_size"), 3);
  EXPECT_EQ(cfg.get_int("training.tensor_parallel_degree"), 2);
  EXPECT_EQ(cfg.get_int("training.data_parallel_shard_degree"), 4);
  EXPECT_TRUE(cfg.get_bool("checkpoint.enable_checkpoint"));
  EXPECT_TRUE(cfg.get_bool("metrics.enable_color_printing"));  // disable = false, negated
  EXPECT_DOUBLE_EQ(cfg.get_real("lr_scheduler.lr_min"), 0.1);
  EXPECT_NE(cfg.origin("training.batch_size").find(".toml:7"), std::string::npos) << cfg.origin("training.batch_size");
  // A flag overrides the file under either name.
  cfg.apply_overrides({"--training.batch_size", "5", "--metrics.disable_color_printing"});
  EXPECT_EQ(cfg.get_int("training.batch_size"), 5);
  EXPECT_FALSE(cfg.get_bool("metrics.enable_color_printing"));
  // Both names in one file (or both as flags) with different values: refused, naming both.
  const std::string err = load_error("[training]\nbatch_size = 2\nlocal_batch_size = 3\n");
  EXPECT_NE(err.find("training.local_batch_size sets training.batch_size to 3, but"), std::string::npos) << err;
  EXPECT_NE(err.find("as training.batch_size to 2"), std::string::npos) << err;
  EXPECT_NE(load_error("", {"--checkpoint.enable", "--checkpoint.enable_checkpoint", "false"}).find("keep one"),
            std::string::npos);
  EXPECT_EQ(load_error("[training]\nbatch_size = 2\nlocal_batch_size = 2\n"), "");  // the same value is no conflict
  EXPECT_NE(load_error("[lr_scheduler]\nlr_min = 1.5\n").find("lr_scheduler.lr_min = 1.5"), std::string::npos);
  EXPECT_NE(load_error("[lr_scheduler]\ndecay_ratio = 2.0\n").find("expected -1"), std::string::npos);
  EXPECT_NE(load_error("[validation]\nsteps = -2\n").find("or -1 for the whole validation set"), std::string::npos);
  EXPECT_EQ(load_error("[validation]\nsteps = -1\n"), "");
  EXPECT_NE(config::help_text().find("--training.batch_size (integer, default 8): sequences per rank per step [also "
                             "training.local_batch_size]"),
            std::string::npos);
}

TEST(Config, ChangedLinesListOnlyNonDefaultsInShortestForm) {
  JobConfig cfg;
  cfg.load_file(write_toml("[optimizer]\nlr = 3e-4\n[training]\nsteps = 10\nbatch_size = 8\n"));
  cfg.apply_overrides({"--model.flavor", "debugmodel_gqa"});
  const auto lines = cfg.changed_lines();
  ASSERT_EQ(lines.size(), 3u);  // batch_size = 8 is the default: not listed
  EXPECT_EQ(lines[0], "  model.flavor = 'debugmodel_gqa'  (--model.flavor)");
  EXPECT_EQ(lines[1].substr(0, 23), "  optimizer.lr = 3e-04 ");
  EXPECT_NE(lines[2].find("training.steps = 10  ("), std::string::npos) << lines[2];
}

TEST(Config, RangesAndUnsupportedValues) {
  EXPECT_NE(load_error("[training]\nbatch_size = 0\n").find("training.batch_size = 0: expected a positive"), std::string::npos);
  EXPECT_NE(load_error("[optimizer]\nlr = -1.0\n").find("optimizer.lr"), std::string::npos);
  EXPECT_NE(load_error("[optimizer]\nbeta2 = 1.0\n").find("beta2"), std::string::npos);
  EXPECT_EQ(load_error("[training]\ntensor_parallel_degree = 2\n"), "");
  EXPECT_NE(load_error("[training]\ntensor_parallel_degree = 0\n").find("tensor_parallel_degree = 0: expected a positive"),
            std::string::npos);
  EXPECT_NE(load_error("[experimental]\nenable_async_tensor_parallel = true\n").find("not supported yet"), std::string::npos);
  EXPECT_NE(load_error("[training]\nenable_loss_parallel = true\ndisable_loss_parallel = true\n")
                .find("contradicts training.enable_loss_parallel = true"),
            std::string::npos);
  EXPECT_EQ(load_error("[training]\nenable_loss_parallel = false\ndisable_loss_parallel = true\n"), "");
  EXPECT_EQ(load_error("[float8]\nenable_float8_linear = true\n"), "");
  EXPECT_NE(load_error("[float8]\nenable_fsdp_float8_all_gather = true\n").find("needs float8.enable_float8_linear"),
            std::string::npos);
  EXPECT_EQ(load_error("[float8]\nenable_float8_linear = true\nenable_fsdp_float8_all_gather = true\n"
                       "precompute_float8_dynamic_scale_for_fsdp = true\n"), "");
  EXPECT_NE(load_error("[float8]\nenable_float8_linear = true\nrecipe_name = \"rowwise\"\nenable_fsdp_float8_all_gather = true\n")
                .find("needs the tensorwise recipe"),
            std::string::npos);
  EXPECT_NE(load_error("[float8]\nrecipe_name = \"blockwise\"\n").find("expected tensorwise, rowwise or rowwise_with_gw_hp"),
            std::string::npos);
  EXPECT_NE(load_error("[model]\nnorm_type = \"layernorm\"\n").find("expected rmsnorm"), std::string::npos);
  EXPECT_NE(load_error("[training]\nlr_decay = \"step\"\n").find("linear, sqrt or cosine"), std::string::npos);
  EXPECT_NE(load_error("[training]\ndata_parallel_shard_degree = 0\n").find("expected -1 or a positive"), std::string::npos);
  EXPECT_NE(load_error("[training]\ndata_parallel_replicate_degree = -1\n").find("at most one of it"), std::string::npos);
  EXPECT_NE(load_error("[training]\nfsdp_reshard_after_forward = \"sometimes\"\n").find("default, always or never"),
            std::string::npos);
  EXPECT_EQ(load_error("[training]\ndata_parallel_replicate_degree = 2\ndata_parallel_shard_degree = 4\n"), "");
  // Products that would overflow int64 token counts, and thread counts no machine has.
  EXPECT_NE(load_error("[training]\nseq_len = 4\nbatch_size = 4611686018427387904\n").find("2^40 tokens"),
            std::string::npos);
  EXPECT_NE(load_error("[training]\nseq_len = 4\nbatch_size = 1\nglobal_batch_size = 4611686018427387904\n")
                .find("training.global_batch_size"),
            std::string::npos);
  EXPECT_EQ(load_error("[training]\nseq_len = 8192\nbatch_size = 1024\n"), "");
  EXPECT_NE(load_error("[training]\nthreads = 70000\n").find("expected 0 (all cores) to 1024"), std::string::npos);
  EXPECT_EQ(load_error("[training]\nthreads = 1024\n"), "");
}

TEST(Config, MissingFileIsAUserError) {
  JobConfig cfg;
  try {
    cfg.load_file("/nonexistent/titan.toml");
    FAIL() << "expected an error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/titan.toml"), std::string::npos);
  }
  try {
    cfg.load_file("/tmp");
    FAIL() << "a directory was read as a config";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("it is a directory"), std::string::npos) << e.what();
  }
}

TEST(Config, OverridesInAllThreeForms) {
  JobConfig cfg;
  cfg.apply_overrides({"--training.steps", "7", "--optimizer.lr=0.5", "--training.compile", "--metrics.log_freq", "3"});
  EXPECT_EQ(cfg.get_int("training.steps"), 7);
  EXPECT_EQ(cfg.get_real("optimizer.lr"), 0.5);
  EXPECT_TRUE(cfg.get_bool("training.compile"));
  EXPECT_EQ(cfg.get_int("metrics.log_freq"), 3);
  EXPECT_EQ(cfg.origin("training.steps"), "--training.steps");
  cfg.apply_overrides({"--training.compile", "false"});
  EXPECT_FALSE(cfg.get_bool("training.compile"));
}

TEST(Config, BadOverrides) {
  JobConfig cfg;
  EXPECT_THROW(cfg.apply_overrides({"--training.stepz", "7"}), UserError);
  EXPECT_THROW(cfg.apply_overrides({"--training.steps", "seven"}), UserError);
  EXPECT_THROW(cfg.apply_overrides({"--training.steps"}), UserError);
  EXPECT_THROW(cfg.apply_overrides({"training.steps", "7"}), UserError);
  EXPECT_THROW(cfg.apply_overrides({"--optimizer.lr", "nan"}), UserError);
}

// torchtitan's list keys (float8.filter_fqns): a TOML array of strings, or comma-separated on
// the command line; anything else names the key.
TEST(Config, StringLists) {
  JobConfig cfg;
  EXPECT_TRUE(cfg.get_strings("float8.filter_fqns").empty());
  cfg.load_file(write_toml("[float8]\nfilter_fqns = [\"output\", \"layers.0.\"]\n"));
  EXPECT_EQ(cfg.get_strings("float8.filter_fqns"), (std::vector<std::string>{"output", "layers.0."}));
  cfg.apply_overrides({"--float8.filter_fqns", "output, w2"});
  EXPECT_EQ(cfg.get_strings("float8.filter_fqns"), (std::vector<std::string>{"output", "w2"}));
  cfg.apply_overrides({"--float8.filter_fqns="});
  EXPECT_TRUE(cfg.get_strings("float8.filter_fqns").empty());
  EXPECT_NE(load_error("[float8]\nfilter_fqns = \"output\"\n").find(":2: float8.filter_fqns: expected a list of strings"),
            std::string::npos);
  EXPECT_NE(load_error("[float8]\nfilter_fqns = [\"output\", 3]\n").find("expected a list of strings"), std::string::npos);
  EXPECT_NE(load_error("", {"--float8.filter_fqns", "output,,w2"}).find("expected a list of strings"), std::string::npos);
  JobConfig again;
  cfg.apply_overrides({"--float8.filter_fqns", "output,layers.1"});
  again.load_file(write_toml(cfg.to_toml()));
  EXPECT_EQ(again.get_strings("float8.filter_fqns"), cfg.get_strings("float8.filter_fqns"));
}

TEST(Config, ResolvedTomlLoadsBackToTheSameValues) {
  JobConfig cfg;
  cfg.apply_overrides({"--training.steps", "7", "--optimizer.lr", "3e-4", "--job.description", "a \"quoted\" run"});
  JobConfig again;
  again.load_file(write_toml(cfg.to_toml()));
  EXPECT_EQ(again.get_int("training.steps"), 7);
  EXPECT_EQ(again.get_real("optimizer.lr"), 3e-4);
  EXPECT_EQ(again.get_string("job.description"), "a \"quoted\" run");
  EXPECT_EQ(again.to_toml(), cfg.to_toml());
}

TEST(Config, HelpListsEveryKey) {
  const std::string help = config::help_text();
  for (const auto& spec : config::schema()) EXPECT_NE(help.find("--" + spec.full()), std::string::npos) << spec.full();
}
