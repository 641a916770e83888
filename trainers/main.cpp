// The `kiln` command line. (Grows into train / validate / eval / sample /
// tokenizer / data subcommands; see trainers/cli.h.)
#include <cstdio>

int main(int argc, char** argv) {
  std::fprintf(stderr, "kiln: no subcommands yet\n");
  return 2;
}
