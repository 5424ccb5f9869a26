// Talking to one OCI registry (distribution spec 1.1): manifests, blobs (streams, ranges, sizes),
// uploads with cross-repository mounts, manifest pushes, referrers with the tag-schema fallback.
// Every operation is a RequestFlow (request_flow.h) run by the blocking driver over a shared
// HttpTransport; mirrors from hosts.toml are tried before the upstream server for pulls.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "byte_stream.h"
#include "credentials.h"
#include "curl_transport.h"
#include "hosts_config.h"
#include "reference.h"
#include "request_flow.h"
#include "result.h"
#include "retry_policy.h"
#include "transport.h"

namespace erostream {

inline constexpr const char* kMediaTypeOciIndex = "application/vnd.oci.image.index.v1+json";
inline constexpr const char* kMediaTypeOciImageManifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr const char* kMediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr const char* kMediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json";
// Every manifest type the converter reads, in the Accept header of manifest requests.
inline constexpr const char* kManifestAccept =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json";

struct RegistryOptions {
    EndpointOptions endpoints;      // hosts.toml dir, --insecure, --ca-file
    CredentialOptions credentials;  // auth files, AAD token
    CurlOptions curl;
    RetryPolicy retry = RetryPolicy::from_env();
    // Blobs larger than this are uploaded in chunks of this size (PATCH), smaller ones with one
    // PUT. 0: always one PUT.
    uint64_t upload_chunk_size = 32u << 20;
};

struct FetchedManifest {
    std::string bytes;
    std::string media_type;  // from Content-Type, else the document's mediaType
    std::string digest;      // "sha256:..." of bytes (verified against a pinned digest)
};

struct ManifestHead {
    std::string digest;
    std::string media_type;
    uint64_t size = 0;
};

struct ReferrerDescriptor {
    std::string media_type;
    std::string digest;
    int64_t size = 0;
    std::string artifact_type;
    std::map<std::string, std::string> annotations;
};

struct Referrers {
    std::vector<ReferrerDescriptor> descriptors;
    bool from_fallback_tag = false;  // the registry has no referrers API
};

struct BlobPushResult {
    bool existed = false;  // the registry had it: nothing sent
    bool mounted = false;  // mounted from another repository: nothing sent
    uint64_t bytes_sent = 0;
};

struct PutManifestResult {
    std::string digest;
    bool subject_accepted = false;  // OCI-Subject answered: the registry maintains referrers itself
};

using TransferProgress = std::function<void(uint64_t done, uint64_t total)>;

// What clients of one process share: the transport (connections), tokens, credentials.
struct RegistryShared {
    std::shared_ptr<HttpTransport> transport;
    std::shared_ptr<AuthCache> auth;
    std::shared_ptr<CredentialStore> credentials;
};

class RegistryClient {
public:
    // `registry` as in an ImageReference ("docker.io", "localhost:5000"). Reads hosts.toml now.
    static Result<std::unique_ptr<RegistryClient>> create(std::string registry, RegistryOptions opt,
                                                          RegistryShared shared = {});
    RegistryClient(const RegistryClient&) = delete;
    RegistryClient& operator=(const RegistryClient&) = delete;

    const std::string& registry() const { return registry_; }
    const std::vector<RegistryEndpoint>& endpoints() const { return endpoints_; }

    // GET a manifest by tag or digest. A digest reference is verified against the bytes.
    Result<FetchedManifest> get_manifest(std::string_view repo, std::string_view reference);
    // HEAD: nullopt when the registry does not have it.
    Result<std::optional<ManifestHead>> head_manifest(std::string_view repo, std::string_view reference);
    // PUT a manifest by tag or by digest ("sha256:..."); checks the digest the registry reports.
    Result<PutManifestResult> put_manifest(std::string_view repo, std::string_view reference,
                                           std::string_view bytes, std::string_view media_type);

    // A blob as a stream, verified against its digest (and size when known) as it is read: the
    // last read fails if the content does not match. A connection lost midway is resumed with a
    // range request from where it stopped.
    Result<std::unique_ptr<ByteStream>> open_blob(std::string_view repo, std::string_view digest,
                                                  std::optional<uint64_t> size);
    // The same stream without the digest check (lengths are still checked), for callers that
    // hash the bytes themselves.
    Result<std::unique_ptr<ByteStream>> open_blob_unverified(std::string_view repo, std::string_view digest,
                                                             std::optional<uint64_t> size);
    // A whole (small) blob, verified; fetched again when the bytes do not match.
    Result<std::string> fetch_blob(std::string_view repo, std::string_view digest, uint64_t max_size = 64u << 20);
    // Downloads a blob into `fd` at offset 0 (pwrite), verified; fetched again from the start on a
    // digest mismatch, at most `max_attempts` times in all (0: the retry policy's count).
    // `progress` sees the bytes written so far.
    Result<uint64_t> download_blob(std::string_view repo, std::string_view digest, std::optional<uint64_t> size,
                                   int fd, const TransferProgress& progress = nullptr, unsigned max_attempts = 0);
    // Exactly `len` bytes at `offset` (unverified: the caller checks chunk digests). Copes with
    // 206, with a 200 that ignored the range, and reports 416 as ERANGE. Storage URLs the
    // registry redirects to are reused for later ranges of the same blob until they fail.
    Result<std::string> read_range(std::string_view repo, std::string_view digest, uint64_t offset, uint64_t len);
    // HEAD of a blob: its size, or nullopt when the repository does not have it.
    Result<std::optional<uint64_t>> blob_size(std::string_view repo, std::string_view digest);

    // Uploads a blob unless the repository has it; mounts it from `mount_from` (a repository of
    // the same registry) when given and the registry agrees. `body` is [offset, offset+size) of
    // a file or bytes in memory.
    Result<BlobPushResult> push_blob(std::string_view repo, std::string_view digest, const HttpBody& body,
                                     const std::optional<std::string>& mount_from = std::nullopt,
                                     const TransferProgress& progress = nullptr);

    // The referrers of `subject` (optionally only those of `artifact_type`), following pagination;
    // from the "sha256-<hex>" tag when the registry has no referrers API.
    Result<Referrers> referrers(std::string_view repo, std::string_view subject_digest,
                                std::string_view artifact_type = {});
    // Whether GET /v2/<repo>/referrers/<digest> exists (false when it answers 404).
    Result<bool> has_referrers_api(std::string_view repo, std::string_view subject_digest);
    // Adds `d` to the OCI index tagged "sha256-<hex of subject>" (read, modify, write), for
    // registries without the referrers API. Returns false when it was listed already.
    Result<bool> add_to_referrers_tag(std::string_view repo, std::string_view subject_digest,
                                      const ReferrerDescriptor& d);

    const RetryPolicy& retry_policy() const { return opt_.retry; }
    // Sleeps the backoff delay before retry number `attempt` (0-based).
    void backoff(unsigned attempt);

    // Forgets cached signed storage URLs (tests; after a long pause).
    void forget_storage_urls();

private:
    RegistryClient(std::string registry, RegistryOptions opt, RegistryShared shared,
                   std::vector<RegistryEndpoint> endpoints);

    struct Call {
        std::string what;
        std::string method = "GET";
        std::string path;  // after the API root: "<repo>/manifests/<ref>"
        HttpHeaders headers;
        std::optional<HttpBody> body;
        std::vector<std::string> scopes;
        bool buffer = false;
        bool retry_non_idempotent = false;
        std::optional<std::string> url;  // absolute URL instead of path (upload locations, pages)
        std::optional<std::string> blob_digest;  // reuse/record signed URLs for this blob
    };
    // Runs a call against one endpoint.
    Result<FlowOutcome> send(const RegistryEndpoint& ep, Call call);
    // Endpoints able to do `cap`, mirrors first.
    std::vector<const RegistryEndpoint*> endpoints_for(uint8_t cap) const;
    const RegistryEndpoint& push_endpoint() const;
    Result<Credential> credential_for(const RegistryEndpoint& ep);
    // GET of a blob (a range when offset or len), trying mirrors first; returns a live stream.
    Result<FlowOutcome> get_blob(std::string_view repo, std::string_view digest, std::optional<std::string> range);
    // Fetches a blob into `sink` (bytes, length, offset), hashing it; on a digest mismatch calls
    // `restart` and fetches it again, at most max_attempts times in all.
    Result<uint64_t> fetch_to(std::string_view repo, std::string_view digest, std::optional<uint64_t> size,
                              uint64_t max_size, const std::function<Result<void>(const char*, size_t, uint64_t)>& sink,
                              const std::function<Result<void>()>& restart, unsigned max_attempts);
    Result<FetchedManifest> get_manifest_once(std::string_view repo, std::string_view reference, bool* corrupt);
    Result<std::optional<std::vector<ReferrerDescriptor>>> referrers_api(std::string_view repo,
                                                                         std::string_view subject_digest,
                                                                         std::string_view artifact_type);
    std::string context() const { return "registry " + registry_; }

    friend class RegistryBlobStream;

    std::string registry_;
    RegistryOptions opt_;
    RegistryShared shared_;
    std::vector<RegistryEndpoint> endpoints_;
    FlowContext flow_ctx_;
    std::mutex mu_;
    std::mt19937_64 rng_;
    std::map<std::string, std::string> storage_urls_;  // blob digest -> signed URL
    std::set<std::string> no_ranges_;  // blobs whose server answered 416 to ranges inside them
};

// Parses an OCI index's "manifests" as referrer descriptors (JSON errors become Errors).
Result<std::vector<ReferrerDescriptor>> parse_referrers_index(std::string_view json_text);
// "sha256:abc..." -> "sha256-abc..." (the referrers tag schema).
std::string referrers_tag(std::string_view subject_digest);

}  // namespace erostream
