// Unix sockets for the control and holder sockets: listening on a path (replacing a stale socket
// file, refusing when something still answers there) and connecting to one.
#pragma once

#include <string>

#include "result.h"
#include "unique_fd.h"

namespace erostream {

// Binds and listens (non-blocking, close-on-exec) with the socket file's mode set to `mode`. A
// socket file nobody listens on is replaced; one that answers is an error (EADDRINUSE).
Result<UniqueFd> listen_unix(const std::string& path, int type, unsigned mode);
// Connects (blocking; the fd is close-on-exec). ENOENT / ECONNREFUSED when nobody listens.
Result<UniqueFd> connect_unix(const std::string& path, int type);

}  // namespace erostream
