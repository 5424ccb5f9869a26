// An image in a registry as a converter source. Layers are downloaded ahead of the converter:
// as soon as the manifests are known, up to `concurrency` layer downloads run at once into spool
// files, and open_blob() hands out a stream that reads a spool file as it grows. So while the
// converter consumes layer k, layers k+1.. are already arriving, and the converter never waits
// for more than the network's pace.
//
// A spool's bytes count as verified only when its whole download matched the digest. A download
// that turns out corrupted is started again (a new "generation"); a reader that already consumed
// bytes of the bad generation fails, and retry_after_failure() tells the caller that converting
// again will find fresh bytes (the other layers' spools are reused).
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>

#include "image_source.h"
#include "reference.h"
#include "registry_client.h"

namespace erostream {

struct DownloadStats {
    std::atomic<uint64_t> bytes_done{0};   // spooled so far (all layers)
    std::atomic<uint64_t> bytes_total{0};  // sizes of the layers being spooled
    std::atomic<unsigned> blobs_done{0};
    std::atomic<unsigned> blobs_total{0};
};

struct RegistrySourceOptions {
    unsigned concurrency = 3;     // layer downloads at once
    std::string spool_dir;        // where spool files go; empty: $TMPDIR or /tmp
    DownloadStats* stats = nullptr;  // borrowed; may be null
};

Result<std::unique_ptr<ImageSource>> open_registry_source(const ImageReference& ref,
                                                          std::shared_ptr<RegistryClient> client,
                                                          RegistrySourceOptions opt = {});

}  // namespace erostream
