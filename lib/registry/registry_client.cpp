#include "registry_client.h"

#include <unistd.h>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <ctime>
#include <thread>

#include "http_parsers.h"
#include "decompress.h"
#include "sha256.h"
#include "url.h"

namespace erostream {

namespace {

bool is_digest_ref(std::string_view r) { return r.starts_with("sha256:"); }

Result<void> check_digest_string(std::string_view d) {
    if (!parse_digest(d)) return failf("'{}' is not a sha256 digest", d.substr(0, 80));
    return {};
}

std::string media_type_from_document(std::string_view bytes) {
    try {
        auto j = nlohmann::json::parse(bytes);
        if (j.is_object()) {
            if (auto it = j.find("mediaType"); it != j.end() && it->is_string()) return it->get<std::string>();
            if (j.contains("manifests")) return kMediaTypeOciIndex;
            if (j.contains("layers")) return kMediaTypeOciImageManifest;
        }
    } catch (const nlohmann::json::exception&) {
    }
    return {};
}

Error status_error(const HttpResponse& r, std::string_view what) {
    std::string msg = fmt::format("{}: {}", what, describe_http_error(r));
    if (r.status == 401) msg += " (authentication required or credentials rejected)";
    if (r.status == 403) msg += " (access denied)";
    return Error{errno_for_status(r.status), std::move(msg)};
}

ReferrerDescriptor descriptor_from_json(const nlohmann::json& m) {
    ReferrerDescriptor d;
    d.media_type = m.value("mediaType", std::string());
    d.digest = m.value("digest", std::string());
    if (auto it = m.find("size"); it != m.end() && it->is_number_integer()) d.size = it->get<int64_t>();
    d.artifact_type = m.value("artifactType", std::string());
    if (auto it = m.find("annotations"); it != m.end() && it->is_object())
        for (const auto& [k, v] : it->items())
            if (v.is_string()) d.annotations[k] = v.get<std::string>();
    return d;
}

nlohmann::json descriptor_to_json(const ReferrerDescriptor& d) {
    nlohmann::json j = {{"mediaType", d.media_type}, {"digest", d.digest}, {"size", d.size}};
    if (!d.artifact_type.empty()) j["artifactType"] = d.artifact_type;
    if (!d.annotations.empty()) j["annotations"] = d.annotations;
    return j;
}

}  // namespace

std::string referrers_tag(std::string_view subject_digest) {
    std::string t(subject_digest);
    if (auto c = t.find(':'); c != std::string::npos) t[c] = '-';
    return t;
}

Result<std::vector<ReferrerDescriptor>> parse_referrers_index(std::string_view text) {
    std::vector<ReferrerDescriptor> out;
    try {
        auto j = nlohmann::json::parse(text);
        if (!j.is_object()) return fail("referrers index is not a JSON object");
        auto it = j.find("manifests");
        if (it == j.end() || it->is_null()) return out;
        if (!it->is_array()) return fail("referrers index: 'manifests' is not an array");
        for (const auto& m : *it) {
            if (!m.is_object()) return fail("referrers index: a descriptor is not an object");
            auto d = descriptor_from_json(m);
            if (!parse_digest(d.digest)) return fail("referrers index: a descriptor has no sha256 digest");
            out.push_back(std::move(d));
        }
    } catch (const nlohmann::json::exception&) {
        return fail("referrers index is not valid JSON");
    }
    return out;
}

// ---------------------------------------------------------------------------------------------

Result<std::unique_ptr<RegistryClient>> RegistryClient::create(std::string registry, RegistryOptions opt,
                                                               RegistryShared shared) {
    auto eps = resolve_endpoints(registry, opt.endpoints);
    if (!eps) return std::unexpected(eps.error().prefix("registry " + registry));
    if (!shared.transport) shared.transport = std::make_shared<CurlTransport>(opt.curl);
    if (!shared.auth) shared.auth = std::make_shared<AuthCache>();
    if (!shared.credentials) shared.credentials = std::make_shared<CredentialStore>(opt.credentials);
    return std::unique_ptr<RegistryClient>(
        new RegistryClient(std::move(registry), std::move(opt), std::move(shared), std::move(*eps)));
}

RegistryClient::RegistryClient(std::string registry, RegistryOptions opt, RegistryShared shared,
                               std::vector<RegistryEndpoint> endpoints)
    : registry_(std::move(registry)),
      opt_(std::move(opt)),
      shared_(std::move(shared)),
      endpoints_(std::move(endpoints)),
      rng_(std::random_device{}()) {
    flow_ctx_.auth = shared_.auth.get();
    flow_ctx_.retry = opt_.retry;
    flow_ctx_.random01 = [this] {
        std::lock_guard lock(mu_);
        return std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
    };
    flow_ctx_.now = [] { return Clock::now(); };
    flow_ctx_.wall_now = [] { return std::time(nullptr); };
}

std::vector<const RegistryEndpoint*> RegistryClient::endpoints_for(uint8_t cap) const {
    std::vector<const RegistryEndpoint*> out;
    for (const auto& ep : endpoints_)
        if ((ep.capabilities & cap) == cap || !ep.mirror) out.push_back(&ep);
    return out;
}

const RegistryEndpoint& RegistryClient::push_endpoint() const {
    for (const auto& ep : endpoints_)
        if (ep.mirror && (ep.capabilities & kCapPush)) return ep;
    return endpoints_.back();  // the server
}

Result<Credential> RegistryClient::credential_for(const RegistryEndpoint& ep) {
    // The upstream server's credentials are the registry's; a mirror's are looked up by its host.
    return shared_.credentials->lookup(ep.mirror ? ep.api.authority() : registry_);
}

void RegistryClient::backoff(unsigned attempt) {
    std::this_thread::sleep_for(opt_.retry.delay(attempt, flow_ctx_.random01(), std::nullopt));
}

void RegistryClient::forget_storage_urls() {
    std::lock_guard lock(mu_);
    storage_urls_.clear();
}

Result<FlowOutcome> RegistryClient::send(const RegistryEndpoint& ep_in, Call call) {
    RegistryEndpoint ep = ep_in;
    FlowSpec spec;
    spec.what = context() + ": " + call.what;
    spec.endpoint = ep;
    spec.credential = EROS_TRY(credential_for(ep));
    spec.scopes = std::move(call.scopes);
    spec.buffer_body = call.buffer;
    spec.retry_non_idempotent = call.retry_non_idempotent;
    spec.request.method = call.method;
    if (call.url) {
        spec.request.url = *call.url;
    } else {
        spec.request.url = ep.url_for(call.path);
        if (ep.mirror) spec.request.url = append_query(spec.request.url, "ns", registry_);
    }
    spec.request.headers = std::move(call.headers);
    spec.request.body = std::move(call.body);
    if (call.blob_digest) {
        std::lock_guard lock(mu_);
        if (auto it = storage_urls_.find(*call.blob_digest); it != storage_urls_.end()) spec.direct_url = it->second;
    }
    RequestFlow flow(flow_ctx_, std::move(spec));
    auto out = run_flow(*shared_.transport, flow);
    if (!out) return out;
    if (call.blob_digest) {
        std::lock_guard lock(mu_);
        if (out->direct_url_failed) storage_urls_.erase(*call.blob_digest);
        if (out->storage_url) storage_urls_[*call.blob_digest] = *out->storage_url;
    }
    if (out->fell_back_to_http) {
        std::lock_guard lock(mu_);
        for (auto& e : endpoints_)
            if (same_origin(e.api, ep_in.api) && e.api.path == ep_in.api.path) {
                if (e.api.port == 0) e.api.port = 443;
                e.api.scheme = "http";
            }
        spdlog::warn("{}: {} answers only over plain http (--insecure)", context(), ep_in.api.authority());
    }
    return out;
}

// --- manifests ---------------------------------------------------------------------------------

Result<FetchedManifest> RegistryClient::get_manifest_once(std::string_view repo, std::string_view reference,
                                                          bool* corrupt) {
    const bool by_digest = is_digest_ref(reference);
    if (by_digest) EROS_TRYV(check_digest_string(reference));
    std::string what = fmt::format("GET manifest {}{}{}", repo, by_digest ? "@" : ":", reference);
    std::optional<Error> last_error;
    auto eps = endpoints_for(by_digest ? kCapPull : kCapResolve);
    for (const auto* ep : eps) {
        Call c;
        c.what = what;
        c.path = fmt::format("{}/manifests/{}", repo, reference);
        c.headers.add("Accept", kManifestAccept);
        c.scopes = {repository_scope(repo, false)};
        c.buffer = true;
        auto out = send(*ep, std::move(c));
        if (!out) {
            last_error = out.error();
            if (ep->mirror) continue;
            return std::unexpected(std::move(*last_error));
        }
        const HttpResponse& r = out->response;
        if (r.status != 200) {
            last_error = status_error(r, context() + ": " + what);
            if (ep->mirror) continue;
            return std::unexpected(std::move(*last_error));
        }
        FetchedManifest m;
        m.bytes = r.body;
        m.digest = digest_string(sha256(m.bytes));
        if (by_digest && m.digest != reference) {
            *corrupt = true;
            return failf("{}: {}: the registry sent a manifest whose digest is {}", context(), what, m.digest);
        }
        if (auto dcd = r.headers.get("Docker-Content-Digest"); dcd && dcd->starts_with("sha256:") && *dcd != m.digest) {
            *corrupt = true;
            return failf("{}: {}: the manifest's digest is {} but the registry says {}", context(), what, m.digest,
                         std::string(dcd->substr(0, 80)));
        }
        if (auto ct = r.headers.get("Content-Type")) m.media_type = media_type_essence(*ct);
        if (m.media_type.empty() || m.media_type == "application/json" || m.media_type == "text/plain" ||
            m.media_type == "application/octet-stream")
            m.media_type = media_type_from_document(m.bytes);
        return m;
    }
    if (last_error) return std::unexpected(std::move(*last_error));
    return failf("{}: no endpoint can serve {}", context(), what);
}

Result<FetchedManifest> RegistryClient::get_manifest(std::string_view repo, std::string_view reference) {
    // A body corrupted on the way shows as a digest mismatch: ask again.
    for (unsigned attempt = 0;; ++attempt) {
        bool corrupt = false;
        auto m = get_manifest_once(repo, reference, &corrupt);
        if (m || attempt >= opt_.retry.max_retries || !corrupt)
            return m;
        spdlog::warn("{}; fetching it again", m.error().what());
        backoff(attempt);
    }
}

Result<std::optional<ManifestHead>> RegistryClient::head_manifest(std::string_view repo, std::string_view reference) {
    const bool by_digest = is_digest_ref(reference);
    std::string what = fmt::format("HEAD manifest {}{}{}", repo, by_digest ? "@" : ":", reference);
    for (const auto* ep : endpoints_for(by_digest ? kCapPull : kCapResolve)) {
        Call c;
        c.what = what;
        c.method = "HEAD";
        c.path = fmt::format("{}/manifests/{}", repo, reference);
        c.headers.add("Accept", kManifestAccept);
        c.scopes = {repository_scope(repo, false)};
        auto out = send(*ep, std::move(c));
        if (!out) {
            if (ep->mirror) continue;
            return std::unexpected(out.error());
        }
        const HttpResponse& r = out->response;
        if (r.status == 404) {
            if (ep->mirror) continue;
            return std::optional<ManifestHead>();
        }
        if (r.status != 200) {
            if (ep->mirror) continue;
            return std::unexpected(status_error(r, context() + ": " + what));
        }
        ManifestHead h;
        if (auto d = r.headers.get("Docker-Content-Digest")) h.digest = std::string(*d);
        if (by_digest) h.digest = std::string(reference);
        if (auto ct = r.headers.get("Content-Type")) h.media_type = media_type_essence(*ct);
        if (auto cl = r.headers.get("Content-Length")) h.size = std::strtoull(std::string(*cl).c_str(), nullptr, 10);
        if (h.digest.empty()) {
            // Without the header the digest needs the bytes.
            auto m = get_manifest(repo, reference);
            if (!m) return std::unexpected(m.error());
            h.digest = m->digest;
            h.media_type = m->media_type;
            h.size = m->bytes.size();
        }
        return std::optional<ManifestHead>(h);
    }
    return std::optional<ManifestHead>();
}

Result<PutManifestResult> RegistryClient::put_manifest(std::string_view repo, std::string_view reference,
                                                       std::string_view bytes, std::string_view media_type) {
    std::string digest = digest_string(sha256(bytes));
    if (is_digest_ref(reference) && reference != digest)
        return failf("{}: PUT manifest {}@{}: the manifest's digest is {}", context(), repo, reference, digest);
    Call c;
    c.what = fmt::format("PUT manifest {}{}{}", repo, is_digest_ref(reference) ? "@" : ":", reference);
    c.method = "PUT";
    c.path = fmt::format("{}/manifests/{}", repo, reference);
    c.headers.add("Content-Type", std::string(media_type));
    c.body = HttpBody::from_bytes(std::string(bytes));
    c.scopes = {repository_scope(repo, true)};
    std::string what = c.what;
    auto out = EROS_TRY(send(push_endpoint(), std::move(c)));
    const HttpResponse& r = out.response;
    if (r.status != 201 && r.status != 200 && r.status != 202) return std::unexpected(status_error(r, context() + ": " + what));
    if (auto d = r.headers.get("Docker-Content-Digest"); d && d->starts_with("sha256:") && *d != digest)
        return failf("{}: {}: the registry stored digest {} for a manifest whose digest is {}", context(), what,
                     std::string(d->substr(0, 80)), digest);
    PutManifestResult res;
    res.digest = digest;
    res.subject_accepted = r.headers.has("OCI-Subject");
    return res;
}

// --- blobs -------------------------------------------------------------------------------------

Result<FlowOutcome> RegistryClient::get_blob(std::string_view repo, std::string_view digest,
                                             std::optional<std::string> range) {
    EROS_TRYV(check_digest_string(digest));
    std::string what = fmt::format("GET blob {}@{}", repo, digest);
    if (range) what += " (" + *range + ")";
    std::optional<Error> last_error;
    for (const auto* ep : endpoints_for(kCapPull)) {
        Call c;
        c.what = what;
        c.path = fmt::format("{}/blobs/{}", repo, digest);
        if (range) c.headers.add("Range", *range);
        c.scopes = {repository_scope(repo, false)};
        c.blob_digest = std::string(digest);
        auto out = send(*ep, std::move(c));
        if (!out) {
            last_error = out.error();
            if (ep->mirror) continue;
            return std::unexpected(std::move(*last_error));
        }
        int st = out->response.status;
        if (ep->mirror && st != 200 && st != 206 && st != 416) {
            last_error = status_error(out->response, context() + ": " + what);
            continue;
        }
        return out;
    }
    if (last_error) return std::unexpected(std::move(*last_error));
    return failf("{}: no endpoint can serve {}", context(), what);
}

// Streams a blob's bytes, resuming with a range request after a connection loss; checks the
// length (when known) but not the digest: callers stack a DigestingStream or hash themselves.
class RegistryBlobStream final : public ByteStream {
public:
    RegistryBlobStream(RegistryClient& c, std::string repo, std::string digest, std::optional<uint64_t> size)
        : c_(c), repo_(std::move(repo)), digest_(std::move(digest)), size_(size) {}

    Result<size_t> read(void* buf, size_t n) override {
        if (eof_) return 0;
        for (;;) {
            if (!ex_) EROS_TRYV(open());
            auto r = ex_->read(buf, n);
            if (!r) {
                if (!retry_allowed(r.error())) return std::unexpected(error(r.error().message));
                continue;
            }
            if (*r == 0) {
                if (size_ && off_ < *size_) {
                    TransportError te{TransportErrorKind::Truncated,
                                      fmt::format("body ended short: {} of {} bytes (transfer closed early)", off_, *size_)};
                    if (!retry_allowed(te)) return std::unexpected(error(te.message));
                    continue;
                }
                ex_.reset();
                eof_ = true;
                return 0;
            }
            if (size_ && off_ + *r > *size_)
                return std::unexpected(error(fmt::format("blob is longer than the {} bytes its descriptor says", *size_)));
            off_ += *r;
            return *r;
        }
    }

private:
    Error error(const std::string& msg) const {
        return Error{EIO, fmt::format("{}: blob {}@{} at byte {}: {}", c_.context(), repo_, digest_, off_, msg)};
    }

    bool retry_allowed(const TransportError& e) {
        ex_.reset();
        if (!is_retryable_transport(e.kind, true) || resumes_ >= c_.opt_.retry.max_retries) return false;
        spdlog::warn("{}: blob {}@{}: {} at byte {}; resuming", c_.context(), repo_, digest_, e.message, off_);
        c_.backoff(resumes_++);
        return true;
    }

    // Drops `skip` bytes of a fresh response that started at byte 0.
    Result<void> skip_prefix(HttpExchange& ex, uint64_t skip) {
        char buf[65536];
        while (skip > 0) {
            auto r = ex.read(buf, std::min<uint64_t>(skip, sizeof buf));
            if (!r) return std::unexpected(error(r.error().message));
            if (*r == 0) return std::unexpected(error("body ended while skipping to the resume offset"));
            skip -= *r;
        }
        return {};
    }

    Result<void> open() {
        std::optional<std::string> range;
        if (off_ > 0) range = fmt::format("bytes={}-", off_);
        auto out = c_.get_blob(repo_, digest_, range);
        if (!out) return std::unexpected(out.error());
        int st = out->response.status;
        if (st == 416 && off_ > 0) {
            // The server will not resume: start over and drop what we already have.
            out = c_.get_blob(repo_, digest_, std::nullopt);
            if (!out) return std::unexpected(out.error());
            st = out->response.status;
            if (st == 200 && out->stream) EROS_TRYV(skip_prefix(*out->stream, off_));
        } else if (st == 206 && off_ > 0) {
            auto cr = out->response.headers.get("Content-Range");
            auto parsed = cr ? parse_content_range(*cr) : Result<ContentRange>(fail("no Content-Range"));
            if (!parsed || !parsed->first || *parsed->first != off_)
                return std::unexpected(error("the registry answered the resume request with a different range"));
        } else if (st == 200 && off_ > 0 && out->stream) {
            EROS_TRYV(skip_prefix(*out->stream, off_));  // the server ignored the range
        }
        if (st != 200 && st != 206)
            return std::unexpected(status_error(out->response, fmt::format("{}: GET blob {}@{}", c_.context(), repo_, digest_)));
        if (!out->stream) return std::unexpected(error("no body"));
        ex_ = std::move(out->stream);
        return {};
    }

    RegistryClient& c_;
    std::string repo_, digest_;
    std::optional<uint64_t> size_;
    std::unique_ptr<HttpExchange> ex_;
    uint64_t off_ = 0;
    unsigned resumes_ = 0;
    bool eof_ = false;
};

Result<std::unique_ptr<ByteStream>> RegistryClient::open_blob_unverified(std::string_view repo, std::string_view digest,
                                                                         std::optional<uint64_t> size) {
    EROS_TRYV(check_digest_string(digest));
    return std::unique_ptr<ByteStream>(
        std::make_unique<RegistryBlobStream>(*this, std::string(repo), std::string(digest), size));
}

Result<std::unique_ptr<ByteStream>> RegistryClient::open_blob(std::string_view repo, std::string_view digest,
                                                              std::optional<uint64_t> size) {
    auto expected = parse_digest(digest);
    if (!expected) return failf("'{}' is not a sha256 digest", digest.substr(0, 80));
    auto raw = EROS_TRY(open_blob_unverified(repo, digest, size));
    return std::unique_ptr<ByteStream>(std::make_unique<DigestingStream>(
        std::move(raw), *expected, size ? static_cast<int64_t>(*size) : -1));
}

Result<uint64_t> RegistryClient::fetch_to(std::string_view repo, std::string_view digest, std::optional<uint64_t> size,
                                          uint64_t max_size, const std::function<Result<void>(const char*, size_t, uint64_t)>& sink,
                                          const std::function<Result<void>()>& restart, unsigned max_attempts) {
    for (unsigned attempt = 0;; ++attempt) {
        auto s = EROS_TRY(open_blob_unverified(repo, digest, size));
        Sha256 h;
        uint64_t off = 0;
        std::vector<char> buf(1 << 20);
        for (;;) {
            size_t n = EROS_TRY(s->read(buf.data(), buf.size()));
            if (n == 0) break;
            if (off + n > max_size) return failf("{}: blob {}@{} is larger than {} bytes", context(), repo, digest, max_size);
            EROS_TRYV(sink(buf.data(), n, off));
            h.update(buf.data(), n);
            off += n;
        }
        std::string got = digest_string(h.finish());
        if (got == digest) return off;
        Error e{EIO, fmt::format("{}: blob {}@{}: digest mismatch: got {} ({} bytes), corrupted in transit or by "
                                 "the registry",
                                 context(), repo, digest, got, off)};
        if (attempt + 1 >= max_attempts) return std::unexpected(e);
        spdlog::warn("{}; fetching it again", e.what());
        EROS_TRYV(restart());
        backoff(attempt);
    }
}

Result<std::string> RegistryClient::fetch_blob(std::string_view repo, std::string_view digest, uint64_t max_size) {
    std::string out;
    EROS_TRYV(fetch_to(
        repo, digest, std::nullopt, max_size,
        [&](const char* p, size_t n, uint64_t) -> Result<void> {
            out.append(p, n);
            return {};
        },
        [&]() -> Result<void> {
            out.clear();
            return {};
        },
        opt_.retry.max_retries + 1));
    return out;
}

Result<uint64_t> RegistryClient::download_blob(std::string_view repo, std::string_view digest,
                                               std::optional<uint64_t> size, int fd, const TransferProgress& progress,
                                               unsigned max_attempts) {
    if (max_attempts == 0) max_attempts = opt_.retry.max_retries + 1;
    return fetch_to(
        repo, digest, size, UINT64_MAX,
        [&](const char* p, size_t n, uint64_t off) -> Result<void> {
            size_t done = 0;
            while (done < n) {
                ssize_t w = ::pwrite(fd, p + done, n - done, static_cast<off_t>(off + done));
                if (w < 0 && errno == EINTR) continue;
                if (w < 0) return fail_errno(fmt::format("{}: writing blob {}", context(), digest));
                done += static_cast<size_t>(w);
            }
            if (progress) progress(off + n, size.value_or(0));
            return {};
        },
        [&]() -> Result<void> {
            if (::ftruncate(fd, 0) != 0) return fail_errno("truncating the download file");
            return {};
        },
        max_attempts);
}

Result<std::string> RegistryClient::read_range(std::string_view repo, std::string_view digest, uint64_t offset,
                                               uint64_t len) {
    if (len == 0) return std::string();
    if (offset > UINT64_MAX - len) return fail("range overflows");
    const std::string range = fmt::format("bytes={}-{}", offset, offset + len - 1);
    bool whole = false;
    {
        std::lock_guard lock(mu_);
        whole = no_ranges_.count(std::string(digest)) > 0;
    }
    for (unsigned attempt = 0;; ++attempt) {
        auto out = EROS_TRY(get_blob(repo, digest, whole ? std::nullopt : std::optional<std::string>(range)));
        const HttpResponse& r = out.response;
        auto where = [&] { return fmt::format("{}: GET blob {}@{} range {}-{}", context(), repo, digest, offset, offset + len - 1); };
        std::string body;
        body.reserve(len);
        TransportError te;
        bool cut = false;
        if (r.status == 206) {
            auto cr = r.headers.get("Content-Range");
            if (!cr) return failf("{}: 206 without Content-Range", where());
            auto parsed = parse_content_range(*cr);
            if (!parsed || !parsed->first) return failf("{}: bad Content-Range", where());
            if (*parsed->first != offset) return failf("{}: the registry answered with bytes from {}", where(), *parsed->first);
            char buf[65536];
            for (;;) {
                auto n = out.stream->read(buf, sizeof buf);
                if (!n) {
                    te = n.error();
                    cut = true;
                    break;
                }
                if (*n == 0) break;
                body.append(buf, std::min<size_t>(*n, len - std::min<uint64_t>(len, body.size())));
            }
            if (!cut && body.size() < len) {
                if (parsed->complete_length && offset + body.size() == *parsed->complete_length)
                    return std::unexpected(
                        Error{ERANGE, fmt::format("{}: the blob ends at byte {}", where(), *parsed->complete_length)});
                te = TransportError{TransportErrorKind::Truncated, fmt::format("got {} of {} bytes", body.size(), len)};
                cut = true;
            }
        } else if (r.status == 200) {
            // The range was ignored: skip to the offset, take len bytes, drop the rest.
            uint64_t pos = 0;
            char buf[65536];
            while (body.size() < len) {
                auto n = out.stream->read(buf, sizeof buf);
                if (!n) {
                    te = n.error();
                    cut = true;
                    break;
                }
                if (*n == 0) break;
                uint64_t b = pos, e = pos + *n;
                pos = e;
                if (e <= offset) continue;
                uint64_t from = std::max(b, offset) - b;
                uint64_t take = std::min<uint64_t>(e - b - from, len - body.size());
                body.append(buf + from, take);
            }
            if (!cut && body.size() < len)
                return std::unexpected(Error{ERANGE, fmt::format("{}: the blob ends at byte {}", where(), pos)});
        } else if (r.status == 416) {
            std::optional<uint64_t> total;
            if (auto cr = r.headers.get("Content-Range"))
                if (auto p = parse_content_range(*cr); p && p->complete_length) total = p->complete_length;
            if (!whole && (!total || offset + len <= *total)) {
                // The range lies inside the blob: the server (or its storage) refuses ranges.
                // Read the whole blob and slice it, for this and later ranges of the blob.
                spdlog::warn("{}: the server refuses a range inside the blob; reading the whole blob instead", where());
                std::lock_guard lock(mu_);
                no_ranges_.insert(std::string(digest));
                whole = true;
                --attempt;
                continue;
            }
            std::string msg = fmt::format("{}: range not satisfiable", where());
            if (total) msg += fmt::format(" (the blob has {} bytes)", *total);
            return std::unexpected(Error{ERANGE, msg});
        } else {
            return std::unexpected(status_error(r, where()));
        }
        if (!cut) return body;
        if (attempt >= opt_.retry.max_retries) return failf("{}: {}", where(), te.message);
        spdlog::warn("{}: {}; retrying", where(), te.message);
        backoff(attempt);
    }
}

Result<std::optional<uint64_t>> RegistryClient::blob_size(std::string_view repo, std::string_view digest) {
    EROS_TRYV(check_digest_string(digest));
    std::string what = fmt::format("HEAD blob {}@{}", repo, digest);
    for (const auto* ep : endpoints_for(kCapPull)) {
        Call c;
        c.what = what;
        c.method = "HEAD";
        c.path = fmt::format("{}/blobs/{}", repo, digest);
        c.scopes = {repository_scope(repo, false)};
        auto out = send(*ep, std::move(c));
        if (!out) {
            if (ep->mirror) continue;
            return std::unexpected(out.error());
        }
        const HttpResponse& r = out->response;
        if (r.status == 200) {
            auto cl = r.headers.get("Content-Length");
            if (!cl) return failf("{}: {}: no Content-Length", context(), what);
            return std::optional<uint64_t>(std::strtoull(std::string(*cl).c_str(), nullptr, 10));
        }
        if (ep->mirror) continue;
        if (r.status == 404) return std::optional<uint64_t>();
        return std::unexpected(status_error(r, context() + ": " + what));
    }
    return std::optional<uint64_t>();
}

// --- uploads -----------------------------------------------------------------------------------

Result<BlobPushResult> RegistryClient::push_blob(std::string_view repo, std::string_view digest, const HttpBody& body,
                                                 const std::optional<std::string>& mount_from,
                                                 const TransferProgress& progress) {
    EROS_TRYV(check_digest_string(digest));
    const RegistryEndpoint& ep = push_endpoint();
    const uint64_t size = body.size();
    BlobPushResult res;
    {
        // HEAD on the push endpoint itself: a mirror having it says nothing about the registry.
        Call c;
        c.what = fmt::format("HEAD blob {}@{}", repo, digest);
        c.method = "HEAD";
        c.path = fmt::format("{}/blobs/{}", repo, digest);
        c.scopes = {repository_scope(repo, true)};
        auto out = EROS_TRY(send(ep, std::move(c)));
        if (out.response.status == 200) {
            res.existed = true;
            return res;
        }
    }
    std::vector<std::string> scopes = {repository_scope(repo, true)};
    if (mount_from && *mount_from != repo) scopes.push_back(repository_scope(*mount_from, false));

    auto upload_error = [&](const HttpResponse& r, std::string_view step) {
        return status_error(r, fmt::format("{}: upload of blob {}@{}: {}", context(), repo, digest, step));
    };
    auto location_of = [&](const HttpResponse& r, const std::string& request_url) -> Result<std::string> {
        auto loc = r.headers.get("Location");
        if (!loc) return failf("{}: upload of blob {}@{}: the registry gave no Location", context(), repo, digest);
        auto base = parse_url(request_url);
        if (!base) return fail("bad upload URL");
        auto u = resolve_url(*base, *loc);
        if (!u) return failf("{}: upload Location: {}", context(), u.error().message);
        return u->str();
    };

    std::optional<Error> last;
    for (unsigned attempt = 0; attempt <= opt_.retry.max_retries; ++attempt) {
        if (attempt > 0) {
            spdlog::warn("{}; starting the upload again", last->what());
            backoff(attempt - 1);
        }
        // 1. Open an upload session (or mount).
        std::string start_url = ep.url_for(fmt::format("{}/blobs/uploads/", repo));
        bool try_mount = mount_from && *mount_from != repo && attempt == 0;
        if (try_mount) {
            start_url = append_query(start_url, "mount", digest);
            start_url = append_query(start_url, "from", *mount_from);
        }
        Call open;
        open.what = fmt::format("POST blob upload {}{}", repo, try_mount ? " (mount from " + *mount_from + ")" : "");
        open.method = "POST";
        open.url = start_url;
        open.scopes = scopes;
        open.retry_non_idempotent = true;  // an abandoned session costs nothing
        auto opened = send(ep, std::move(open));
        if (!opened) {
            last = opened.error();
            continue;
        }
        const HttpResponse& o = opened->response;
        if (o.status == 201 && try_mount) {
            res.mounted = true;
            return res;
        }
        if (o.status != 202) {
            last = upload_error(o, "opening the session");
            if (is_retryable_status(o.status)) continue;
            return std::unexpected(*last);
        }
        auto loc = location_of(o, start_url);
        if (!loc) return std::unexpected(loc.error());
        std::string url = *loc;

        // 2. Send the bytes: one PUT, or PATCH chunks and an empty PUT.
        const bool chunked = opt_.upload_chunk_size > 0 && size > opt_.upload_chunk_size;
        uint64_t offset = 0;
        bool failed = false;
        if (chunked) {
            while (offset < size) {
                uint64_t n = std::min<uint64_t>(opt_.upload_chunk_size, size - offset);
                Call p;
                p.what = fmt::format("PATCH blob upload {}@{} bytes {}-{}", repo, digest, offset, offset + n - 1);
                p.method = "PATCH";
                p.url = url;
                p.headers.add("Content-Type", "application/octet-stream");
                p.headers.add("Content-Range", fmt::format("{}-{}", offset, offset + n - 1));
                if (body.fd >= 0) p.body = HttpBody::from_file(body.fd, body.offset + offset, n);
                else p.body = HttpBody::from_bytes(body.bytes.substr(offset, n));
                p.scopes = scopes;
                std::string req_url = url;
                auto sent = send(ep, std::move(p));
                if (!sent) {
                    last = sent.error();
                    failed = true;
                    break;
                }
                const HttpResponse& pr = sent->response;
                if (pr.status != 202 && pr.status != 204) {
                    last = upload_error(pr, fmt::format("PATCH at byte {}", offset));
                    if (is_retryable_status(pr.status)) {
                        failed = true;
                        break;
                    }
                    return std::unexpected(*last);
                }
                // The registry's idea of the offset must match ours (registries that ignore
                // Content-Range append whatever arrives: a mismatch means lost or doubled bytes).
                if (auto rg = pr.headers.get("Range")) {
                    auto end = parse_upload_range(*rg);
                    if (end && *end != offset + n && !(offset + n == 1 && *end == 1))
                        return failf("{}: upload of blob {}@{}: the registry has {} bytes after a chunk ending at {}",
                                     context(), repo, digest, *end, offset + n);
                }
                auto next = location_of(pr, req_url);
                if (next) url = *next;
                offset += n;
                res.bytes_sent += n;
                if (progress) progress(offset, size);
            }
            if (failed) continue;
        }
        Call put;
        put.what = fmt::format("PUT blob {}@{}", repo, digest);
        put.method = "PUT";
        put.url = append_query(url, "digest", digest);
        put.headers.add("Content-Type", "application/octet-stream");
        if (!chunked) put.body = body;
        else put.body = HttpBody::from_bytes("");
        put.scopes = scopes;
        auto done = send(ep, std::move(put));
        if (!done) {
            last = done.error();
            continue;
        }
        const HttpResponse& d = done->response;
        if (d.status != 201 && d.status != 204 && d.status != 200) {
            last = upload_error(d, "closing the session");
            if (is_retryable_status(d.status)) continue;
            return std::unexpected(*last);
        }
        if (auto dcd = d.headers.get("Docker-Content-Digest"); dcd && dcd->starts_with("sha256:") && *dcd != digest)
            return failf("{}: upload of blob {}@{}: the registry computed digest {}", context(), repo, digest,
                         std::string(dcd->substr(0, 80)));
        if (!chunked) res.bytes_sent = size;
        if (progress) progress(size, size);
        return res;
    }
    return std::unexpected(*last);
}

// --- referrers ---------------------------------------------------------------------------------

Result<std::optional<std::vector<ReferrerDescriptor>>> RegistryClient::referrers_api(std::string_view repo,
                                                                                      std::string_view subject,
                                                                                      std::string_view artifact_type) {
    std::string what = fmt::format("GET referrers {}@{}", repo, subject);
    std::optional<Error> last;
    for (const auto* ep : endpoints_for(kCapPull)) {
        std::vector<ReferrerDescriptor> all;
        std::string url = ep->url_for(fmt::format("{}/referrers/{}", repo, subject));
        if (ep->mirror) url = append_query(url, "ns", registry_);
        if (!artifact_type.empty()) url = append_query(url, "artifactType", artifact_type);
        bool not_supported = false;
        bool failed = false;
        for (int page = 0; page < 1000; ++page) {
            Call c;
            c.what = what;
            c.url = url;
            c.headers.add("Accept", kMediaTypeOciIndex);
            c.scopes = {repository_scope(repo, false)};
            c.buffer = true;
            auto out = send(*ep, std::move(c));
            if (!out) {
                last = out.error();
                failed = true;
                break;
            }
            const HttpResponse& r = out->response;
            if (r.status == 404 && page == 0) {
                not_supported = true;
                break;
            }
            if (r.status != 200) {
                last = status_error(r, context() + ": " + what);
                failed = true;
                break;
            }
            auto ds = parse_referrers_index(r.body);
            if (!ds) return std::unexpected(ds.error().prefix(context() + ": " + what));
            for (auto& d : *ds) all.push_back(std::move(d));
            auto next = next_link(r.headers.get_all("Link"));
            if (!next) break;
            auto base = parse_url(url);
            auto u = base ? resolve_url(*base, *next) : Result<Url>(fail("bad URL"));
            if (!u) return failf("{}: {}: bad Link header", context(), what);
            url = u->str();
        }
        if (failed) {
            if (ep->mirror) continue;
            return std::unexpected(*last);
        }
        if (not_supported) {
            if (ep->mirror) continue;
            return std::optional<std::vector<ReferrerDescriptor>>();
        }
        return std::optional<std::vector<ReferrerDescriptor>>(std::move(all));
    }
    return std::optional<std::vector<ReferrerDescriptor>>();
}

Result<Referrers> RegistryClient::referrers(std::string_view repo, std::string_view subject,
                                            std::string_view artifact_type) {
    EROS_TRYV(check_digest_string(subject));
    Referrers out;
    auto api = EROS_TRY(referrers_api(repo, subject, artifact_type));
    if (api) {
        out.descriptors = std::move(*api);
    } else {
        out.from_fallback_tag = true;
        auto m = get_manifest(repo, referrers_tag(subject));
        if (!m) {
            if (m.error().err != ENOENT) return std::unexpected(m.error());
        } else {
            auto ds = parse_referrers_index(m->bytes);
            if (!ds) return std::unexpected(ds.error().prefix(fmt::format("{}: tag {}", context(), referrers_tag(subject))));
            out.descriptors = std::move(*ds);
        }
    }
    // The registry may not apply the filter (it says so in OCI-Filters-Applied); apply it here.
    if (!artifact_type.empty())
        std::erase_if(out.descriptors, [&](const ReferrerDescriptor& d) { return d.artifact_type != artifact_type; });
    return out;
}

Result<bool> RegistryClient::has_referrers_api(std::string_view repo, std::string_view subject) {
    EROS_TRYV(check_digest_string(subject));
    auto api = EROS_TRY(referrers_api(repo, subject, {}));
    return api.has_value();
}

Result<bool> RegistryClient::add_to_referrers_tag(std::string_view repo, std::string_view subject,
                                                  const ReferrerDescriptor& d) {
    EROS_TRYV(check_digest_string(subject));
    const std::string tag = referrers_tag(subject);
    nlohmann::json index;
    auto m = get_manifest(repo, tag);
    if (!m) {
        if (m.error().err != ENOENT) return std::unexpected(m.error());
        index = {{"schemaVersion", 2}, {"mediaType", kMediaTypeOciIndex}, {"manifests", nlohmann::json::array()}};
    } else {
        try {
            index = nlohmann::json::parse(m->bytes);
        } catch (const nlohmann::json::exception&) {
            return failf("{}: tag {} is not a JSON index", context(), tag);
        }
        if (!index.is_object()) return failf("{}: tag {} is not an OCI index", context(), tag);
        if (!index.contains("manifests") || !index["manifests"].is_array()) index["manifests"] = nlohmann::json::array();
        for (const auto& e : index["manifests"])
            if (e.is_object() && e.value("digest", std::string()) == d.digest) return false;
    }
    index["manifests"].push_back(descriptor_to_json(d));
    EROS_TRYV(put_manifest(repo, tag, index.dump(), kMediaTypeOciIndex));
    return true;
}

}  // namespace erostream
