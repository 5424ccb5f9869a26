// FetchBackend over an ArtifactStore read with blocking calls (a local OCI layout through
// LayoutStore::read_range): each range is read on the I/O worker pool and handed back to the loop.
#pragma once

#include <memory>

#include "artifact_reader.h"
#include "event_loop.h"
#include "fetch_backend.h"
#include "thread_pool.h"

namespace erostream {

class LayoutBackend final : public FetchBackend {
public:
    LayoutBackend(std::shared_ptr<ArtifactStore> store, ThreadPool& io_pool, EventLoop& loop,
                  unsigned max_inflight = 4)
        : store_(std::move(store)), pool_(io_pool), loop_(loop), max_inflight_(max_inflight) {}

    std::string describe() const override { return store_->describe(); }
    void fetch_range(const Descriptor& blob, uint64_t offset, uint64_t len, const std::string& req_id,
                     RangeDone done) override;
    unsigned max_inflight() const override { return max_inflight_; }
    std::string limit_key() const override { return store_->describe(); }
    bool retries_itself() const override { return false; }

private:
    std::shared_ptr<ArtifactStore> store_;
    ThreadPool& pool_;
    EventLoop& loop_;
    unsigned max_inflight_;
};

}  // namespace erostream
