// The decision logic of one registry request, as a state machine without I/O: which HTTP request
// to send next (the request itself, a token request, an AAD exchange, a redirect target), when to
// wait and retry, when the answer is final. A driver sends what it is told and feeds the answers
// back:
//
//   auto a = flow.start();
//   for (;;) switch (a.step) {
//     case Send:   a = ok ? flow.on_response(resp) : flow.on_transport_error(err); break;
//     case Wait:   sleep(a.wait); a = flow.after_wait(); break;
//     case Done:   the last response is the answer (any status: the caller judges it)
//     case Failed: a.error
//   }
//
// The blocking driver is run_flow() in registry_transport.h; the node daemon's event loop can drive
// the same flow from libcurl's multi interface.
//
// Policies applied here:
//  - Authorization (Basic, Bearer) goes to the registry endpoint's origin only; a redirect to any
//    other origin (a storage host) drops it, and the endpoint's configured headers with it.
//  - Bearer: a 401 challenge (or one this origin gave before) leads to a token request for the
//    request's scopes; a token is reused from the AuthCache while fresh.
//  - A direct (cached, signed) URL is tried first when given; if the storage host refuses it
//    (any 4xx) or cannot be reached, the flow goes back to the registry.
//  - Retries: connection errors, timeouts, 408, 429, 5xx, with RetryPolicy's backoff and the
//    server's Retry-After; requests that are not idempotent only when nothing reached the server.
#pragma once

#include <chrono>
#include <ctime>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "auth.h"
#include "docker_config.h"
#include "hosts_config.h"
#include "http_types.h"
#include "result.h"
#include "retry_policy.h"

namespace erostream {

// What every flow of one client shares.
struct FlowContext {
    AuthCache* auth = nullptr;
    RetryPolicy retry;
    std::function<double()> random01;                  // jitter; [0, 1)
    std::function<Clock::time_point()> now;            // token expiry
    std::function<std::time_t()> wall_now;             // Retry-After dates
};

struct FlowSpec {
    std::string what;        // for errors: "GET manifest of library/debian:12"
    HttpRequest request;     // to the registry endpoint
    RegistryEndpoint endpoint;
    Credential credential;   // for this endpoint; may be empty (anonymous)
    std::vector<std::string> scopes;
    std::optional<std::string> direct_url;  // a signed storage URL to try first, without auth
    bool retry_non_idempotent = false;      // e.g. the POST that opens an upload session
    bool buffer_body = false;               // the answer's body is wanted in HttpResponse::body
    bool follow_redirects = true;
    unsigned max_redirects = 10;
};

class RequestFlow {
public:
    enum class Step { Send, Wait, Done, Failed };
    struct Action {
        Step step = Step::Failed;
        HttpRequest request;       // Send
        bool buffer_body = false;  // Send: the driver must read the whole body into the response
        std::chrono::milliseconds wait{0};  // Wait
        Error error;               // Failed
    };

    RequestFlow(const FlowContext& ctx, FlowSpec spec);

    Action start();
    Action on_response(const HttpResponse& resp);
    Action on_transport_error(const TransportError& e);
    Action after_wait();

    // After Done: the final response (its body only if buffered).
    const HttpResponse& response() const { return last_; }
    // The final response came from another origin than the registry (a storage redirect); its URL
    // may be reused for later reads of the same blob.
    std::optional<std::string> storage_url() const;
    // The direct URL given in the spec was refused or unreachable: forget it.
    bool direct_url_failed() const { return direct_failed_; }
    // The endpoint answered only over plain http (--insecure): later requests can start there.
    bool fell_back_to_http() const { return http_fallback_done_; }
    unsigned retries() const { return retries_; }
    const std::string& what() const { return spec_.what; }

private:
    enum class Phase { Main, Token, Exchange };
    Action send_main();
    Action send_direct();
    Action token_step();
    Action retry_or_done(std::optional<std::chrono::milliseconds> retry_after, bool idempotent);
    Action failed(std::string msg, int err = 0);
    bool idempotent_main() const;
    std::string registry_origin() const { return spec_.endpoint.api.origin(); }

    const FlowContext& ctx_;
    FlowSpec spec_;
    Phase phase_ = Phase::Main;
    HttpRequest current_;
    HttpRequest token_request_;
    bool token_used_refresh_ = false;
    HttpResponse last_;
    bool on_direct_ = false;
    bool direct_failed_ = false;
    bool off_origin_ = false;
    bool http_fallback_done_ = false;
    bool basic_tried_ = false;
    bool fresh_connection_ = false;
    bool exchange_tried_ = false;
    bool sent_bearer_ = false;
    unsigned redirects_ = 0;
    unsigned retries_ = 0;
    unsigned auth_rounds_ = 0;
    unsigned token_fetches_ = 0;
    unsigned storage_refusals_ = 0;
    std::optional<AuthChallenge> bearer_;
};

// A message for a registry error response: the status, and the codes and messages of the
// distribution spec's error body when there is one ({"errors":[{"code","message"}]}).
std::string describe_http_error(const HttpResponse& r);
// errno for a final status: ENOENT for 404, EACCES for 401/403, ERANGE for 416, EIO otherwise.
int errno_for_status(int status);

}  // namespace erostream
