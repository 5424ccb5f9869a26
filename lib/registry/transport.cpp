#include "transport.h"

#include <thread>

namespace erostream {

namespace {

// Reads a body to its end into `out`, refusing more than `cap` bytes.
std::expected<void, TransportError> read_all(HttpExchange& ex, std::string& out, size_t cap) {
    char buf[16384];
    for (;;) {
        auto n = ex.read(buf, sizeof buf);
        if (!n) return std::unexpected(n.error());
        if (*n == 0) return {};
        if (out.size() + *n > cap)
            return std::unexpected(TransportError{TransportErrorKind::Other,
                                                  fmt::format("response body larger than {} bytes", cap)});
        out.append(buf, *n);
    }
}

}  // namespace

Result<FlowOutcome> run_flow(HttpTransport& transport, RequestFlow& flow,
                             const std::function<void(std::chrono::milliseconds)>& sleep) {
    std::unique_ptr<HttpExchange> live;
    auto a = flow.start();
    for (;;) {
        switch (a.step) {
        case RequestFlow::Step::Send: {
            live.reset();
            auto ex = transport.start(a.request);
            if (!ex) {
                a = flow.on_transport_error(ex.error());
                break;
            }
            auto head = (*ex)->head();
            if (!head) {
                a = flow.on_transport_error(head.error());
                break;
            }
            HttpResponse resp = std::move(*head);
            // Error answers are small: keep them for the message, and so the connection is reusable.
            bool want_body = a.buffer_body || resp.status >= 400 || (resp.status >= 300 && resp.status < 400);
            if (a.request.method == "HEAD") want_body = false;
            if (want_body) {
                size_t cap = a.buffer_body && resp.status < 300 ? kMaxBufferedBody : 64 * 1024;
                auto r = read_all(**ex, resp.body, cap);
                if (!r) {
                    if (resp.status >= 300 && !a.buffer_body) {
                        resp.body.clear();  // the status is what matters
                    } else {
                        a = flow.on_transport_error(r.error());
                        break;
                    }
                }
            }
            if (resp.url.empty()) resp.url = a.request.url;
            bool buffered = want_body;
            a = flow.on_response(resp);
            if (a.step == RequestFlow::Step::Done && !buffered) live = std::move(*ex);
            break;
        }
        case RequestFlow::Step::Wait:
            if (sleep) sleep(a.wait);
            else std::this_thread::sleep_for(a.wait);
            a = flow.after_wait();
            break;
        case RequestFlow::Step::Done: {
            FlowOutcome out;
            out.response = flow.response();
            out.stream = std::move(live);
            out.storage_url = flow.storage_url();
            out.direct_url_failed = flow.direct_url_failed();
            out.fell_back_to_http = flow.fell_back_to_http();
            return out;
        }
        case RequestFlow::Step::Failed: return std::unexpected(std::move(a.error));
        }
    }
}

}  // namespace erostream
