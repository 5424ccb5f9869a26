// Small blocking file helpers for the daemon's worker threads and start-up (never the loop).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "result.h"

namespace erostream {

// The whole file, refused when larger than max_size. ENOENT is kept in the error's errno.
Result<std::string> read_small_file(const std::string& path, size_t max_size);
// Writes bytes to path.tmp, fsyncs, renames over path, fsyncs the directory.
Result<void> replace_file(const std::string& path, std::string_view bytes, unsigned mode = 0600);
Result<void> pwrite_all(int fd, const void* data, size_t n, uint64_t off);
// mkdir -p with `mode` for the directories it creates.
Result<void> make_dirs(const std::string& path, unsigned mode = 0700);

}  // namespace erostream
