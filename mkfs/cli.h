// What the erostream-mkfs subcommands share: option parsing helpers, error reporting with the
// run id, progress lines on stderr.
#pragma once

#include <getopt.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "registry/registry_client.h"
#include "result.h"

namespace erostream::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;

// A short random id, printed in every error line so that a failure in a build log can be matched
// with the lines around it.
const std::string& run_id();
void init_logging(bool verbose);

int report_error(const Error& e);  // prints "erostream-mkfs: error [run ID]: ..." and returns 1
int usage_error(std::string_view cmd, std::string_view msg);

// "1048576", "1M", "4k", "16MiB" -> bytes.
Result<uint64_t> parse_size(std::string_view s);

// Writes a progress line to stderr: redrawn in place on a terminal, at most once a second otherwise.
class ProgressLine {
public:
    explicit ProgressLine(bool enabled);
    ~ProgressLine();
    void update(const std::string& text, bool force = false);
    void finish();

private:
    bool enabled_;
    bool tty_;
    int64_t last_ms_ = 0;
    size_t last_len_ = 0;
};

// Options every command takes for docker:// references, in one place.
enum RegistryOptionId { kOptInsecure = 900, kOptHostsDir, kOptCaFile, kOptAadTokenFile };
// `own` (without the terminating zero entry) followed by the registry options and the terminator.
std::vector<option> with_registry_options(std::initializer_list<option> own);
// Applies registry option `c`; false when `c` is not one of them.
bool parse_registry_option(int c, const char* arg, RegistryOptions& opt);
// The help text for them, to append to each command's --help.
extern const char* const kRegistryHelp;
// The registry options with the environment's defaults (retries, credentials).
RegistryOptions default_registry_options();

int cmd_convert(int argc, char** argv);
int cmd_discover(int argc, char** argv);
int cmd_materialize(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_check(int argc, char** argv);

}  // namespace erostream::cli
