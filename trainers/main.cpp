// The `kiln` command line.
//
//   kiln train CONFIG [key.sub=value ...]     train per a YAML config
//   kiln validate CONFIG [key.sub=value ...]  check a config, print it resolved
//   kiln eval RUN_OR_CHECKPOINT_DIR [--split val|test] [key=value ...]
//   kiln plot RUN_DIR [--out FILE.svg]
//   kiln tokenizer train|encode|decode ...
//   kiln data prepare ...
//   kiln sample CHECKPOINT_OR_RUN_DIR [--prompt TEXT] [--tokens N] ...
//   kiln export CHECKPOINT_OR_RUN_DIR --out FILE.safetensors
//   kiln keys                                 every config key, its default and doc
//
// Exit status: 0 success, 2 bad input (config, files, arguments: the message
// names what and where), 1 any other failure.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "runtime/process_info.h"
#include "trainers/cmd_data.h"
#include "trainers/cmd_export.h"
#include "trainers/cmd_sample.h"
#include "trainers/cmd_tokenizer.h"
#include "trainers/config.h"
#include "trainers/plot.h"
#include "trainers/trainer.h"

namespace {

void usage(FILE* f) {
  std::fprintf(f,
               "usage: kiln <command> [args]\n"
               "  train CONFIG [key.sub=value ...]      train per a YAML config\n"
               "  validate CONFIG [key.sub=value ...]   check a config and print it resolved\n"
               "  eval DIR|CONFIG [--split val|test] [key=value ...]  evaluate a checkpoint (a run's newest, or\n"
               "                                        the model a config starts from)\n"
               "  plot RUN_DIR [--out FILE.svg]         draw loss/accuracy curves\n"
               "  tokenizer train|encode|decode ...     BPE tokenizer tools\n"
               "  data prepare|cmudict|inspect ...      token shards, CMU dictionary SFT splits, SFT windows\n"
               "  sample DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K]  text from a GPT\n"
               "  export DIR --out FILE.safetensors     a GPT as Hugging Face GPT-2 weights\n"
               "  keys                                  list every config key\n");
}

std::vector<std::string> rest(int argc, char** argv, int from) {
  std::vector<std::string> v;
  for (int i = from; i < argc; ++i) v.emplace_back(argv[i]);
  return v;
}

int cmd_train(int argc, char** argv, bool validate_only) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: kiln %s CONFIG [key.sub=value ...]\n", validate_only ? "validate" : "train");
    return 2;
  }
  kiln::TrainConfig cfg = kiln::load_config(argv[2], rest(argc, argv, 3));
  if (validate_only) {
    std::printf("%s", kiln::to_yaml(cfg).c_str());
    std::fprintf(stderr, "kiln: %s is valid\n", argv[2]);
    return 0;
  }
  const bool root = kiln::process_info().is_root();  // under mpirun only rank 0 talks
  if (root) std::fprintf(stderr, "kiln: resolved config:\n%s", kiln::to_yaml(cfg, /*docs=*/false).c_str());
  kiln::TrainResult r = kiln::train(cfg);
  if (!root) return 0;
  std::fprintf(stderr, "kiln: done: %lld steps in %.1f s (%.0f examples/s)", static_cast<long long>(r.steps),
               r.wall_s, r.examples_per_s);
  if (r.has_accuracy) std::fprintf(stderr, ", test loss %.4f, test accuracy %.4f", r.test_loss, r.test_accuracy);
  else if (r.val_loss > 0) std::fprintf(stderr, ", val loss %.4f", r.val_loss);
  std::fprintf(stderr, "; run dir %s\n", r.run_dir.c_str());
  return 0;
}

int cmd_eval(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: kiln eval DIR [--split val|test] [key=value ...]\n");
    return 2;
  }
  kiln::Split split = kiln::Split::test;
  std::vector<std::string> overrides;
  for (int i = 3; i < argc; ++i) {
    if (std::strcmp(argv[i], "--split") == 0 && i + 1 < argc) {
      const std::string s = argv[++i];
      if (s == "val") split = kiln::Split::val;
      else if (s == "test") split = kiln::Split::test;
      else if (s == "train") split = kiln::Split::train;
      else throw kiln::InputError("--split: expected train, val or test, got '" + s + "'");
    } else {
      overrides.emplace_back(argv[i]);
    }
  }
  const kiln::CheckpointEval ev = kiln::evaluate_checkpoint(argv[2], split, overrides);
  const kiln::TaskStats& st = ev.stats;
  std::printf("{\"split\": \"%s\", \"loss\": %.6f", kiln::split_name(split), st.mean_loss());
  if (ev.has_accuracy) std::printf(", \"accuracy\": %.6f", st.accuracy());
  if (st.exact_match_total > 0)
    std::printf(", \"exact_match\": %.6f, \"answered\": %lld", st.exact_match(),
                static_cast<long long>(st.exact_match_total));
  std::printf(", \"examples\": %lld}\n", static_cast<long long>(st.samples));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "train") return cmd_train(argc, argv, false);
    if (cmd == "validate") return cmd_train(argc, argv, true);
    if (cmd == "eval") return cmd_eval(argc, argv);
    if (cmd == "plot") return kiln::cmd_plot(argc - 1, argv + 1);  // argv[0] = "plot"
    if (cmd == "tokenizer") return kiln::cmd_tokenizer(argc - 2, argv + 2);
    if (cmd == "data") return kiln::cmd_data(argc - 2, argv + 2);
    if (cmd == "sample") return kiln::cmd_sample(argc - 2, argv + 2);
    if (cmd == "export") return kiln::cmd_export(argc - 2, argv + 2);
    if (cmd == "keys") {
      std::printf("%s", kiln::config_reference().c_str());
      return 0;
    }
    std::fprintf(stderr, "kiln: unknown command '%s'\n", cmd.c_str());
    usage(stderr);
    return 2;
  } catch (const kiln::InputError& e) {
    std::fprintf(stderr, "kiln: error: %s\n", e.what());
    return 2;
  } catch (const kiln::OutOfMemory& e) {
    std::fprintf(stderr, "kiln: out of memory: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln: error: %s\n", e.what());
    return 1;
  }
}
