// Where the converter gets an image from, independent of the transport: an OCI layout directory,
// a `docker save` archive, later a registry. Every byte handed out is checked against the digest
// that named it.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "byte_stream.h"
#include "oci_types.h"
#include "result.h"

namespace erostream {

struct ResolvedManifest {
    Descriptor desc;           // for an index entry: the entry (with its platform)
    std::string bytes;         // the manifest exactly as stored (its digest is desc.digest)
    Manifest manifest;
    std::string config_bytes;  // verified against manifest.config
};

class ImageSource {
public:
    virtual ~ImageSource() = default;
    // The reference in the user's words, for messages: "oci:/tmp/x:latest".
    virtual std::string describe() const = 0;
    // A single image manifest, or, for an index, every image manifest in it (attestation
    // manifests and non-image artifacts are left out). With `want`: only manifests for that
    // platform (an error names the platforms there are when none is); a single manifest whose
    // config names another platform is an error too.
    virtual Result<std::vector<ResolvedManifest>> manifests(const std::optional<Platform>& want) = 0;
    // The blob's bytes as stored (still compressed). The stream fails at its end when the bytes
    // do not match the descriptor's size or digest ("layer sha256:...: digest mismatch"); the
    // caller must read it to the end before trusting what it read. The stream does not borrow
    // the source; several may be open at once, from several threads.
    virtual Result<std::unique_ptr<ByteStream>> open_blob(const Descriptor& d) = 0;
    // After a failed conversion: true when the failure came from bytes corrupted in transit that
    // the source is fetching again, so that converting again can succeed. Clears the condition.
    virtual bool retry_after_failure() { return false; }
};

// "oci:DIR[:TAG]", "oci:DIR@sha256:HEX", "docker-archive:FILE[:REF]" where REF is a RepoTags
// entry ("busybox:latest", matched after Docker normalisation, so "docker.io/library/busybox"
// matches too) or "@N", the N-th image of the archive (0-based); without REF the archive must
// hold exactly one image. Errors start with the reference.
Result<std::unique_ptr<ImageSource>> open_image_source(std::string_view ref);
// The same, with "docker://[REGISTRY/]REPO[:TAG][@DIGEST]" too, through `registry` (see
// registry/registry_session.h); `stats` (may be null) counts the layer downloads.
class RegistrySession;
struct DownloadStats;
Result<std::unique_ptr<ImageSource>> open_image_source(std::string_view ref, RegistrySession& registry,
                                                       DownloadStats* stats = nullptr);

// The part after "oci:". DIR ends at the first ':' as in skopeo/containers-image, so DIR cannot
// contain ':' and TAG may ("oci:/x:a:b" is tag "a:b"); "DIR@sha256:<64 hex>" names a digest (the
// '@' form is checked first, so a DIR with '@' still works with a tag).
struct OciRef {
    std::string dir;
    std::optional<std::string> tag;
    std::optional<std::string> digest;
    std::string str() const;  // back to "DIR[:TAG]" / "DIR@DIGEST"
};
Result<OciRef> parse_oci_ref(std::string_view ref_without_prefix);

Result<std::unique_ptr<ImageSource>> open_oci_source(const OciRef& ref);

// ---- building blocks for transports ----

// Reads a whole small blob (manifest, index, config), verified against the descriptor.
using SmallBlobReader = std::function<Result<std::string>(const Descriptor&)>;
// Follows `top` (a manifest, or an index, nested indexes included) to the image manifests it
// names, with the filtering ImageSource::manifests describes. `where` prefixes errors.
Result<std::vector<ResolvedManifest>> resolve_manifests(const Descriptor& top,
                                                        const SmallBlobReader& read,
                                                        const std::optional<Platform>& want,
                                                        std::string_view where);
// Wraps a raw blob stream so that it fails at its end unless exactly d.size bytes with digest
// d.digest came through; also fails as soon as more than d.size bytes arrive. A placeholder for
// decompress.h's DigestingStream (to be deduplicated).
std::unique_ptr<ByteStream> verify_blob_stream(std::unique_ptr<ByteStream> raw, const Descriptor& d);

}  // namespace erostream
