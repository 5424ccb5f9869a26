// Where chunk bytes come from, as seen by the event loop: a range of a blob, asked for without
// blocking, answered on the loop thread. LayoutBackend (local OCI layouts) reads on a worker
// pool; the registry backend drives libcurl's multi interface from the loop itself.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "oci_types.h"
#include "result.h"

namespace erostream {

class FetchBackend {
public:
    using RangeDone = std::function<void(Result<std::string>)>;
    virtual ~FetchBackend() = default;
    // For logs: "oci:/srv/layout", "registry localhost:5000/app".
    virtual std::string describe() const = 0;
    // Exactly `len` bytes at `offset` of `blob`, unverified. `done` runs on the loop thread,
    // never before fetch_range has returned. `req_id` goes into every log line about it.
    virtual void fetch_range(const Descriptor& blob, uint64_t offset, uint64_t len, const std::string& req_id,
                             RangeDone done) = 0;
    // Requests in flight at most, for all blobs behind the same `limit_key` (a registry host).
    virtual unsigned max_inflight() const = 0;
    virtual std::string limit_key() const = 0;
    // Whether fetch_range already retried transient failures itself (then a failure is final).
    virtual bool retries_itself() const = 0;
};

}  // namespace erostream
