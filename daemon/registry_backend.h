// FetchBackend for a repository of an OCI registry: every range is one RequestFlow (the registry
// client's decision logic: auth and token requests, retries with Retry-After, redirects to
// storage hosts without Authorization, cached signed storage URLs) whose HTTP exchanges run on
// the event loop through CurlMulti. Mirrors from hosts.toml are tried before the registry.
//
// A range GET must come back as a 206 whose Content-Range is the range asked for, or as a 200
// (a server that ignores Range): its body is then read up to the end of the range, the bytes
// before the range dropped, and the transfer stopped there. Anything else fails the range with
// a message naming the blob, the range and the status.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "curl_multi.h"
#include "event_loop.h"
#include "fetch_backend.h"
#include "registry/hosts_config.h"
#include "registry/request_flow.h"
#include "stats.h"

namespace erostream {

// What the loop needs to reach one registry, prepared off the loop (hosts.toml read, credential
// helpers run): the endpoints able to pull, mirrors first, and a credential for each.
struct RegistryAccess {
    std::string registry;  // as in references: "docker.io", "127.0.0.1:5000"
    std::vector<RegistryEndpoint> endpoints;
    std::vector<Credential> credentials;  // one per endpoint (may be empty: anonymous)
};

// How much of a response to a blob GET to keep. `range_sent`: the request carried our Range
// header (token requests and the like do not).
BodyPlan range_body_plan(int status, bool range_sent, uint64_t offset, uint64_t len);

// Checks the final response to a range GET of [offset, offset + len) whose body was kept by
// range_body_plan; `what` names the blob and range in errors.
Result<void> check_range_response(const HttpResponse& r, uint64_t offset, uint64_t len, const std::string& what);

struct RegistryBackendOptions {
    unsigned max_inflight = 8;  // fetch.max_connections_per_host
    RetryPolicy retry;
};

class RegistryBackend final : public FetchBackend {
public:
    // `curl` must outlive the backend.
    RegistryBackend(EventLoop& loop, CurlMulti& curl, Stats& stats, std::shared_ptr<AuthCache> auth,
                    RegistryAccess access, std::string repository, RegistryBackendOptions opt);
    // Ranges still in flight fail (posted to the loop): the scheduler waits for every answer.
    ~RegistryBackend() override;
    RegistryBackend(const RegistryBackend&) = delete;
    RegistryBackend& operator=(const RegistryBackend&) = delete;

    std::string describe() const override { return "docker://" + access_.registry + "/" + repo_; }
    void fetch_range(const Descriptor& blob, uint64_t offset, uint64_t len, const std::string& req_id,
                     RangeDone done) override;
    unsigned max_inflight() const override { return opt_.max_inflight; }
    std::string limit_key() const override { return "registry " + access_.registry; }
    bool retries_itself() const override { return opt_.retry.max_retries > 0; }

    // Fails every range in flight with `why` (daemon stop: every waiter gets an answer); ranges
    // asked for later fail the same way.
    void shutdown(const std::string& why);
    size_t inflight() const { return fetches_.size(); }

private:
    struct Fetch;
    void start_endpoint(const std::shared_ptr<Fetch>& f);
    void step(const std::shared_ptr<Fetch>& f, RequestFlow::Action a);
    void flow_done(const std::shared_ptr<Fetch>& f);
    void endpoint_failed(const std::shared_ptr<Fetch>& f, Error e);
    void finish(const std::shared_ptr<Fetch>& f, Result<std::string> r);

    EventLoop& loop_;
    CurlMulti& curl_;
    Stats& stats_;
    std::shared_ptr<AuthCache> auth_;
    RegistryAccess access_;
    std::string repo_;
    RegistryBackendOptions opt_;
    FlowContext flow_ctx_;
    std::mt19937_64 rng_;
    uint64_t next_fetch_ = 1;
    std::unordered_map<uint64_t, std::shared_ptr<Fetch>> fetches_;
    std::map<std::string, std::string> storage_urls_;  // blob digest -> signed storage URL
    bool closing_ = false;
    std::string closing_why_;
    int in_fetch_range_ = 0;  // answers decided inside fetch_range are posted, never given at once
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace erostream
