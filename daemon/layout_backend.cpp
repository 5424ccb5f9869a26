#include "layout_backend.h"

namespace erostream {

void LayoutBackend::fetch_range(const Descriptor& blob, uint64_t offset, uint64_t len, const std::string&,
                                RangeDone done) {
    // The store is shared with the pool task: a mount going away mid-read leaves it alive.
    auto store = store_;
    EventLoop* loop = &loop_;
    pool_.submit([store, blob, offset, len, loop, done = std::move(done)](unsigned) mutable {
        auto r = store->read_range(blob, offset, len);
        loop->post([r = std::move(r), done = std::move(done)]() mutable { done(std::move(r)); });
    });
}

}  // namespace erostream
