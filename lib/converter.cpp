#include "converter.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstring>

#include "chunk_table.h"
#include "decompress.h"
#include "overlay.h"
#include "sha256.h"
#include "tar_reader.h"

namespace erostream {

namespace {

constexpr auto kProgressInterval = std::chrono::milliseconds(250);

// Counts the bytes pulled through it, for progress reports.
class CountingStream final : public ByteStream {
public:
    explicit CountingStream(std::unique_ptr<ByteStream> inner) : inner_(std::move(inner)) {}
    Result<size_t> read(void* buf, size_t n) override {
        auto r = inner_->read(buf, n);
        if (r) count_ += *r;
        return r;
    }
    uint64_t count() const { return count_; }

private:
    std::unique_ptr<ByteStream> inner_;
    uint64_t count_ = 0;
};

Compression compression_of(LayerKind k) {
    switch (k) {
    case LayerKind::TarGzip: return Compression::Gzip;
    case LayerKind::TarZstd: return Compression::Zstd;
    case LayerKind::Tar: break;
    }
    return Compression::None;
}

std::string short_digest(const std::string& d) {
    return d.size() > 19 ? d.substr(0, 19) : d;  // "sha256:" + 12 hex
}

// The uncompressed digests the image config promises for its layers, if it says.
std::vector<std::string> config_diff_ids(const std::string& config_bytes) {
    std::vector<std::string> out;
    try {
        auto j = nlohmann::json::parse(config_bytes);
        for (const auto& d : j.at("rootfs").at("diff_ids")) out.push_back(d.get<std::string>());
    } catch (const std::exception&) {
        out.clear();
    }
    return out;
}

// Reads a regular file's content from the tar into the tree: inline, or chunk by chunk into the
// data blob.
Result<void> read_content(TarReader& tar, const TarEntry& e, Inode& inode,
                          const std::shared_ptr<Inode>& owner, DataBlobBuilder& blob,
                          const ConvertOptions& opt, LayerReport& report) {
    if (e.size == 0) return {};
    if (e.size <= opt.inline_max) {
        inode.is_inline = true;
        inode.inline_data.resize(e.size);
        size_t got = 0;
        while (got < e.size) {
            size_t r = EROS_TRY(tar.read(inode.inline_data.data() + got, e.size - got));
            if (r == 0) return fail("content ends early");
            got += r;
        }
        ++report.inline_files;
        return {};
    }
    const uint64_t chunk = blob.chunk_size();
    const uint64_t n = (e.size + chunk - 1) / chunk;
    if (n > UINT32_MAX) return fail("file has too many chunks");
    inode.chunks.assign(n, ChunkRef{});
    uint64_t left = e.size;
    for (uint64_t i = 0; i < n; ++i) {
        auto buf = blob.take_buffer();
        size_t want = static_cast<size_t>(std::min(left, chunk));
        size_t got = 0;
        while (got < want) {
            size_t r = EROS_TRY(tar.read(buf.data() + got, want - got));
            if (r == 0) return fail("content ends early");
            got += r;
        }
        EROS_TRYV(blob.submit(owner, static_cast<uint32_t>(i), std::move(buf), want));
        left -= want;
    }
    return {};
}

struct PendingBlob {
    BlobWriter writer;
    Sha256 hasher;  // the blob's digest is needed before the blob may be committed
    Sha256Digest digest{};
    DataBlobResult result;
    LayerReport report;
    Sha256Digest layer_digest{};
};

// Everything of one artifact, ready to commit; nothing of it is visible in the layout yet.
struct PendingArtifact {
    std::vector<PendingBlob> blobs;
    std::vector<Descriptor> data_descs;
    std::string meta;
    std::string manifest;
    Descriptor manifest_desc;
    std::optional<std::string> tag;
    ArtifactReport report;
};

Descriptor describe_bytes(std::string_view bytes, std::string media_type) {
    Descriptor d;
    d.media_type = std::move(media_type);
    d.digest = digest_string(sha256(bytes));
    d.size = static_cast<int64_t>(bytes.size());
    return d;
}

Result<PendingBlob> convert_layer(ImageSource& source, const Descriptor& layer, size_t index,
                                  size_t count, const std::string& expected_diff_id,
                                  OverlayTree& tree, ChunkDedupMap& dedup, ThreadPool& pool,
                                  const OciLayout& dest, const ConvertOptions& opt) {
    LayerKind kind = EROS_TRY(layer_kind(layer.media_type));
    auto raw = EROS_TRY(source.open_blob(layer));
    auto counting_owned = std::make_unique<CountingStream>(std::move(raw));
    CountingStream* counting = counting_owned.get();
    auto decoded = EROS_TRY(make_decoder(compression_of(kind), std::move(counting_owned)));
    DigestingStream diff(std::move(decoded), std::nullopt);
    TarReader tar(diff);

    PendingBlob out{EROS_TRY(dest.new_blob()), Sha256(), {}, {}, {}, {}};
    out.layer_digest = EROS_TRY(parse_digest(layer.digest));
    out.report.layer_digest = layer.digest;
    out.report.media_type = layer.media_type;
    BlobWriter* writer = &out.writer;
    Sha256* hasher = &out.hasher;
    DataBlobBuilder blob(
        [writer, hasher](const void* p, size_t n) {
            hasher->update(p, n);
            return writer->write(p, n);
        },
                         static_cast<uint16_t>(index + 1), opt.chunk_bits, opt.zstd_level, pool,
                         dedup);

    ConvertProgress progress{index, count, layer.digest, 0, static_cast<uint64_t>(layer.size), 0, false};
    auto last_report = std::chrono::steady_clock::now();
    for (;;) {
        auto entry = tar.next();
        if (!entry) return std::unexpected(std::move(entry.error()));
        if (!*entry) break;
        const TarEntry& e = **entry;
        auto where = [&] { return fmt::format("entry '{}' (tar offset {})", e.path, e.header_offset); };
        auto inode = tree.apply(e, static_cast<int>(index));
        if (!inode) return std::unexpected(inode.error().prefix(where()));
        if (*inode) {
            auto r = read_content(tar, e, **inode, *inode, blob, opt, out.report);
            if (!r) return std::unexpected(r.error().prefix(where()));
        }
        ++out.report.entries;
        if (opt.progress) {
            auto now = std::chrono::steady_clock::now();
            if (now - last_report >= kProgressInterval) {
                last_report = now;
                progress.bytes_read = counting->count();
                progress.entries = out.report.entries;
                opt.progress(progress);
            }
        }
    }
    // Past the end-of-archive blocks: read to the end so the decoder checks its trailer and the
    // source stream checks the blob's digest.
    std::vector<uint8_t> scratch(1 << 16);
    for (;;) {
        size_t r = EROS_TRY(diff.read(scratch.data(), scratch.size()));
        if (r == 0) break;
    }
    if (!expected_diff_id.empty() && digest_string(diff.digest()) != expected_diff_id)
        return failf("uncompressed digest {} differs from the config's diff_id {}",
                     digest_string(diff.digest()), expected_diff_id);

    out.result = EROS_TRY(blob.finish());
    out.digest = out.hasher.finish();
    out.report.stats = out.result.stats;
    out.report.device_blocks = out.result.device_blocks;
    out.report.blob_size = out.result.blob_size;
    if (opt.progress) {
        progress.bytes_read = counting->count();
        progress.entries = out.report.entries;
        progress.layer_done = true;
        opt.progress(progress);
    }
    return out;
}

std::string layer_title(size_t i) { return fmt::format("layer-{}.zst", i + 1); }

Result<PendingArtifact> convert_one(ImageSource& source, const ResolvedManifest& rm,
                                    const OciLayout& dest, std::optional<std::string> tag,
                                    ThreadPool& pool, const ConvertOptions& opt) {
    const auto& layers = rm.manifest.layers;
    if (layers.size() > 65535) return fail("too many layers");
    auto diff_ids = config_diff_ids(rm.config_bytes);
    if (!diff_ids.empty() && diff_ids.size() != layers.size())
        return failf("the image config lists {} diff_ids for {} layers", diff_ids.size(), layers.size());

    PendingArtifact art;
    art.tag = std::move(tag);
    OverlayTree tree;
    ChunkDedupMap dedup;
    for (size_t i = 0; i < layers.size(); ++i) {
        auto b = convert_layer(source, layers[i], i, layers.size(),
                               diff_ids.empty() ? std::string() : diff_ids[i], tree, dedup, pool,
                               dest, opt);
        if (!b)
            return std::unexpected(b.error().prefix(
                fmt::format("layer {} ({})", i + 1, short_digest(layers[i].digest))));
        art.blobs.push_back(std::move(*b));
    }

    ArtifactReport& report = art.report;
    report.subject = rm.desc;
    report.subject.annotations.clear();
    report.subject.platform.reset();
    report.subject.artifact_type.clear();
    // An index names the platform; a lone manifest's platform is in its config.
    std::optional<Platform> platform = rm.desc.platform;
    if (!platform) platform = platform_of_config(rm.config_bytes);
    if (platform) report.platform = platform->str();

    std::vector<DeviceChunks> devices;
    std::vector<ErofsDevice> erofs_devices;
    for (size_t i = 0; i < art.blobs.size(); ++i) {
        auto& b = art.blobs[i];
        Descriptor d;
        d.media_type = std::string(media_type::kErostreamData);
        d.digest = digest_string(b.digest);
        d.size = static_cast<int64_t>(b.result.blob_size);
        d.annotations[kAnnotationTitle] = layer_title(i);
        d.annotations[kAnnotationLayerDigest] = layers[i].digest;
        d.annotations[kAnnotationDeviceSize] = std::to_string(b.result.device_blocks * EROFS_BLKSIZ);
        d.annotations[kAnnotationChunks] = std::to_string(b.result.chunks.size());
        b.report.blob_digest = d.digest;
        if (b.result.device_blocks > UINT32_MAX) return fail("a data device exceeds 16 TiB");
        DeviceChunks dc;
        dc.blob_digest = b.digest;
        dc.layer_digest = b.layer_digest;
        dc.blob_size = b.result.blob_size;
        dc.device_blocks = b.result.device_blocks;
        dc.chunks = std::move(b.result.chunks);
        erofs_devices.push_back(ErofsDevice{to_hex(dc.blob_digest), static_cast<uint32_t>(dc.device_blocks)});
        devices.push_back(std::move(dc));
        art.data_descs.push_back(std::move(d));
        report.layers.push_back(b.report);
    }

    ErofsBuildOptions eopt;
    eopt.chunk_bits = opt.chunk_bits;
    eopt.devices = erofs_devices;
    auto uuid_src = sha256(rm.desc.digest);  // deterministic volume uuid
    std::memcpy(eopt.uuid.data(), uuid_src.data(), eopt.uuid.size());
    auto image = build_erofs_image(tree.root(), eopt, &report.erofs);
    if (!image) return std::unexpected(image.error().prefix("building the EROFS metadata"));
    art.meta = assemble_metadata_blob(std::move(*image), opt.chunk_bits, devices);
    report.metadata = describe_bytes(art.meta, std::string(media_type::kErostreamMeta));
    report.metadata.annotations[kAnnotationTitle] = "meta.erofs";

    Manifest m;
    m.schema_version = 2;
    m.media_type = std::string(media_type::kOciManifest);
    m.artifact_type = std::string(media_type::kErostreamArtifact);
    m.config = describe_bytes("{}", std::string(media_type::kOciEmpty));
    m.layers.push_back(report.metadata);
    for (auto& d : art.data_descs) m.layers.push_back(d);
    m.subject = report.subject;
    m.annotations[kAnnotationFormat] = std::to_string(EROSTREAM_FORMAT_VERSION);
    m.annotations[kAnnotationChunkSize] = std::to_string(uint64_t{1} << opt.chunk_bits);
    art.manifest = serialize_manifest(m);
    art.manifest_desc = describe_bytes(art.manifest, std::string(media_type::kOciManifest));
    art.manifest_desc.artifact_type = std::string(media_type::kErostreamArtifact);
    art.manifest_desc.platform = platform;
    report.artifact = art.manifest_desc;
    report.tag = art.tag.value_or("");
    return art;
}

Result<void> commit(PendingArtifact& art, const OciLayout& dest) {
    for (size_t i = 0; i < art.blobs.size(); ++i) {
        Descriptor d = EROS_TRY(art.blobs[i].writer.commit(std::string(media_type::kErostreamData)));
        if (d.digest != art.data_descs[i].digest)
            return failf("internal: data blob digest changed while committing ({} vs {})", d.digest,
                         art.data_descs[i].digest);
    }
    EROS_TRYV(dest.put_blob(art.meta, std::string(media_type::kErostreamMeta)));
    EROS_TRYV(dest.put_blob("{}", std::string(media_type::kOciEmpty)));
    EROS_TRYV(dest.put_blob(art.manifest, std::string(media_type::kOciManifest)));
    return dest.add_manifest(art.manifest_desc, art.tag);
}

}  // namespace

Result<std::vector<ArtifactReport>> convert_image(ImageSource& source, const OciLayout& dest,
                                                  const std::optional<std::string>& tag,
                                                  const ConvertOptions& opt) {
    if (opt.chunk_bits < 12 || opt.chunk_bits > 24)
        return fail("chunk size must be a power of two from 4 KiB to 16 MiB");
    auto manifests = EROS_TRY(source.manifests(opt.platform));
    ThreadPool pool(opt.jobs ? opt.jobs : ThreadPool::default_workers());
    std::vector<PendingArtifact> pending;
    for (const auto& rm : manifests) {
        std::optional<std::string> t = tag;
        if (t && manifests.size() > 1 && rm.desc.platform) {
            auto p = rm.desc.platform->str();
            for (auto& c : p)
                if (c == '/') c = '-';
            *t += "-" + p;
        }
        auto r = convert_one(source, rm, dest, t, pool, opt);
        if (!r) {
            if (manifests.size() > 1 && rm.desc.platform)
                return std::unexpected(r.error().prefix("platform " + rm.desc.platform->str()));
            return std::unexpected(std::move(r.error()));
        }
        pending.push_back(std::move(*r));
    }
    // Only now, with every platform converted, does anything become visible in the layout.
    std::vector<ArtifactReport> out;
    for (auto& art : pending) {
        EROS_TRYV(commit(art, dest));
        out.push_back(std::move(art.report));
    }
    return out;
}

}  // namespace erostream
