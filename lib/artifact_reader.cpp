#include "artifact_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "converter.h"
#include "registry/reference.h"
#include "registry/registry_session.h"
#include "registry/registry_store.h"
#include "sha256.h"
#include "unique_fd.h"

namespace erostream {

namespace {

Result<void> pwrite_all(int fd, const void* data, size_t n, uint64_t off) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
        ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
        if (w < 0) {
            if (errno == EINTR) continue;
            return fail_errno("write");
        }
        p += w;
        n -= static_cast<size_t>(w);
        off += static_cast<uint64_t>(w);
    }
    return {};
}

// Runs fn(i) for i in [0, n) on the pool and waits; keeps the first error.
Result<void> parallel_for(ThreadPool& pool, size_t n, const std::function<Result<void>(size_t)>& fn) {
    std::mutex mu;
    std::condition_variable cv;
    size_t remaining = n;
    std::optional<Error> first;
    std::atomic<bool> failed{false};
    for (size_t i = 0; i < n; ++i) {
        pool.submit([&, i](unsigned) {
            if (!failed.load(std::memory_order_relaxed)) {
                auto r = fn(i);
                if (!r) {
                    std::lock_guard lk(mu);
                    if (!first) first = r.error();
                    failed = true;
                }
            }
            std::lock_guard lk(mu);
            if (--remaining == 0) cv.notify_all();
        });
    }
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return remaining == 0; });
    if (first) return std::unexpected(*first);
    return {};
}

}  // namespace

Result<std::string> LayoutStore::read_manifest(const Descriptor& d) {
    return layout_.read_blob(d);
}
Result<std::string> LayoutStore::read_blob(const Descriptor& d) {
    return layout_.read_blob(d, size_t{1} << 40);
}
Result<std::string> LayoutStore::read_range(const Descriptor& d, uint64_t offset, uint64_t len) {
    auto fd = layout_.open_blob(d.digest);
    if (!fd) return std::unexpected(fd.error());
    std::string out(len, '\0');
    size_t got = 0;
    while (got < len) {
        ssize_t r = ::pread(fd->get(), out.data() + got, len - got, static_cast<off_t>(offset + got));
        if (r < 0) {
            if (errno == EINTR) continue;
            return fail_errno("read " + d.digest);
        }
        if (r == 0) return failf("blob {} is shorter than {} bytes", d.digest, offset + len);
        got += static_cast<size_t>(r);
    }
    return out;
}

Result<Artifact> load_artifact(ArtifactStore& store, const Descriptor& d) {
    Artifact a;
    a.desc = d;
    std::string mbytes = EROS_TRY(store.read_manifest(d));
    a.manifest = EROS_TRY(parse_manifest(mbytes));
    if (a.manifest.artifact_type != std::string(media_type::kErostreamArtifact))
        return failf("{} is not an erostream artifact (artifactType '{}')", d.digest,
                     a.manifest.artifact_type);
    if (a.manifest.layers.empty() || a.manifest.layers[0].media_type != std::string(media_type::kErostreamMeta))
        return failf("artifact {}: the first layer is not an erostream metadata blob", d.digest);
    a.meta_desc = a.manifest.layers[0];
    for (size_t i = 1; i < a.manifest.layers.size(); ++i) {
        if (a.manifest.layers[i].media_type != std::string(media_type::kErostreamData))
            return failf("artifact {}: layer {} has media type '{}', not an erostream data blob",
                         d.digest, i, a.manifest.layers[i].media_type);
        a.data.push_back(a.manifest.layers[i]);
    }
    auto meta = store.read_blob(a.meta_desc);
    if (!meta) return std::unexpected(meta.error().prefix("metadata blob " + a.meta_desc.digest));
    a.meta_bytes = std::make_unique<std::string>(std::move(*meta));
    auto parsed = parse_metadata_blob(*a.meta_bytes);
    if (!parsed) return std::unexpected(parsed.error().prefix("metadata blob " + a.meta_desc.digest));
    a.meta = std::move(*parsed);
    if (a.meta.devices.size() != a.data.size())
        return failf("artifact {}: chunk table has {} devices, manifest {} data blobs", d.digest,
                     a.meta.devices.size(), a.data.size());
    auto reader = ErofsReader::open(a.meta.erofs);
    if (!reader) return std::unexpected(reader.error().prefix("metadata blob EROFS image"));
    const auto& devs = reader->devices();
    if (devs.size() != a.data.size())
        return failf("artifact {}: EROFS device table has {} devices, manifest {} data blobs",
                     d.digest, devs.size(), a.data.size());
    for (size_t i = 0; i < a.data.size(); ++i) {
        const auto& dev = a.meta.devices[i];
        std::string want = digest_string(dev.blob_digest);
        if (a.data[i].digest != want)
            return failf("artifact {}: data blob {} is {} in the manifest but {} in the chunk table",
                         d.digest, i + 1, a.data[i].digest, want);
        if (a.data[i].size < 0 || static_cast<uint64_t>(a.data[i].size) != dev.blob_size)
            return failf("artifact {}: data blob {} size {} differs from the chunk table's {}",
                         d.digest, i + 1, a.data[i].size, dev.blob_size);
        if (devs[i].tag != to_hex(dev.blob_digest) || devs[i].blocks != dev.device_blocks)
            return failf("artifact {}: EROFS device {} (tag {}, {} blocks) does not match data blob {}",
                         d.digest, i + 1, devs[i].tag.substr(0, 12), devs[i].blocks, want);
    }
    return a;
}

Result<OpenedArtifact> open_artifact(std::string_view ref) {
    if (!ref.starts_with("oci:"))
        return failf("artifact reference '{}': expected oci:DIR:TAG or oci:DIR@sha256:HEX", ref);
    OciRef r = EROS_TRY(parse_oci_ref(ref.substr(4)));
    OciLayout layout = EROS_TRY(OciLayout::open(r.dir));
    Descriptor d = EROS_TRY(layout.resolve(r.tag, r.digest));
    OpenedArtifact out;
    out.store = std::make_unique<LayoutStore>(std::move(layout));
    auto a = load_artifact(*out.store, d);
    if (!a) return std::unexpected(a.error().prefix(std::string(ref)));
    out.artifact = std::move(*a);
    return out;
}

Result<OpenedArtifact> open_artifact(std::string_view ref, RegistrySession& registry,
                                     const std::optional<Platform>& platform) {
    if (!ref.starts_with("docker://")) return open_artifact(ref);
    auto r = parse_image_reference(ref);
    if (!r) return std::unexpected(r.error());
    auto client = EROS_TRY(registry.client(r->registry));
    auto d = resolve_artifact(*client, *r, platform);
    if (!d) return std::unexpected(d.error());
    OpenedArtifact out;
    out.store = std::make_unique<RegistryStore>(client, r->repository);
    auto a = load_artifact(*out.store, *d);
    if (!a) return std::unexpected(a.error().prefix(fmt::format("docker://{}/{}@{}", r->registry, r->repository, d->digest)));
    out.artifact = std::move(*a);
    return out;
}

Result<void> decode_chunk(std::string_view frame, const erostream_chunk_record& rec, std::string& out) {
    size_t want = size_t{rec.blocks} * EROFS_BLKSIZ;
    out.resize(want);
    unsigned long long content = ZSTD_getFrameContentSize(frame.data(), frame.size());
    if (content != want) return failf("zstd frame says {} bytes, chunk table {}", content, want);
    size_t r = ZSTD_decompress(out.data(), want, frame.data(), frame.size());
    if (ZSTD_isError(r)) return failf("zstd: {}", ZSTD_getErrorName(r));
    if (r != want) return failf("frame decompressed to {} bytes, expected {}", r, want);
    if (std::memcmp(sha256(out).data(), rec.sha256, 32) != 0) return fail("sha256 mismatch");
    return {};
}

Result<void> materialize_artifact(ArtifactStore& store, const Artifact& a, const std::string& dir,
                                  ThreadPool& pool, const ProgressFn& progress) {
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return fail_errno("mkdir " + dir);
    struct Target {
        std::string tmp, final_path;
        UniqueFd fd;
    };
    std::vector<Target> targets;
    auto cleanup = [&] {
        for (auto& t : targets) ::unlink(t.tmp.c_str());
    };
    auto create = [&](const std::string& name) -> Result<int> {
        Target t{dir + "/." + name + ".tmp", dir + "/" + name, {}};
        int fd = ::open(t.tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) return fail_errno("create " + t.tmp);
        t.fd.reset(fd);
        targets.push_back(std::move(t));
        return fd;
    };

    auto run = [&]() -> Result<void> {
        int mfd = EROS_TRY(create("meta.erofs"));
        EROS_TRYV(pwrite_all(mfd, a.meta_bytes->data(), a.meta_bytes->size(), 0));
        struct Job {
            size_t device;
            size_t chunk;
            int fd;
        };
        std::vector<Job> jobs;
        uint64_t total = 0;
        for (size_t i = 0; i < a.data.size(); ++i) {
            int fd = EROS_TRY(create(fmt::format("device-{}.img", i + 1)));
            const auto& dev = a.meta.devices[i];
            if (::ftruncate(fd, static_cast<off_t>(dev.device_blocks * EROFS_BLKSIZ)) != 0)
                return fail_errno("truncate device file");
            for (size_t c = 0; c < dev.chunks.size(); ++c) jobs.push_back({i, c, fd});
            total += dev.chunks.size();
        }
        std::atomic<uint64_t> done{0};
        std::mutex progress_mu;
        EROS_TRYV(parallel_for(pool, jobs.size(), [&](size_t j) -> Result<void> {
            const Job& job = jobs[j];
            const auto& rec = a.meta.devices[job.device].chunks[job.chunk];
            auto where = [&] {
                return fmt::format("data blob {} ({}) chunk {} at device block {}", job.device + 1,
                                   a.data[job.device].digest, job.chunk, rec.blkaddr);
            };
            std::string plain;
            for (unsigned attempt = 0;; ++attempt) {
                auto frame = store.read_range(a.data[job.device], rec.compressed_offset, rec.compressed_size);
                if (!frame) return std::unexpected(frame.error().prefix(where()));
                auto ok = decode_chunk(*frame, rec, plain);
                if (ok) break;
                if (attempt >= store.read_retries()) return std::unexpected(ok.error().prefix(where()));
                spdlog::warn("{}: {}; reading it again", where(), ok.error().what());
            }
            EROS_TRYV(pwrite_all(job.fd, plain.data(), plain.size(), uint64_t{rec.blkaddr} * EROFS_BLKSIZ));
            uint64_t n = ++done;
            if (progress) {
                std::lock_guard lk(progress_mu);
                progress(n, total);
            }
            return {};
        }));
        for (auto& t : targets) {
            if (::fsync(t.fd.get()) != 0) return fail_errno("fsync " + t.tmp);
        }
        for (auto& t : targets) {
            if (::rename(t.tmp.c_str(), t.final_path.c_str()) != 0) return fail_errno("rename " + t.tmp);
        }
        targets.clear();
        return {};
    };
    auto r = run();
    if (!r) cleanup();
    return r;
}

Result<CheckReport> check_artifact(ArtifactStore& store, const Artifact& a, ThreadPool& pool) {
    CheckReport rep;
    std::mutex mu;
    auto fault = [&](std::string f) {
        std::lock_guard lk(mu);
        rep.faults.push_back(std::move(f));
    };

    // 1. Every data blob whole: digest, and its seek table against the chunk table.
    for (size_t i = 0; i < a.data.size(); ++i) {
        auto blob = store.read_blob(a.data[i]);
        if (!blob) {
            fault(fmt::format("data blob {} ({}): {}", i + 1, a.data[i].digest, blob.error().what()));
            continue;
        }
        std::string want = make_seek_table(a.meta.devices[i].chunks);
        if (blob->size() < want.size() ||
            blob->compare(blob->size() - want.size(), want.size(), want) != 0)
            fault(fmt::format("data blob {} ({}): seek table does not match the chunk table", i + 1,
                              a.data[i].digest));
    }

    // 2. Every chunk: decompresses to its length and digest.
    struct Job {
        size_t device, chunk;
    };
    std::vector<Job> jobs;
    for (size_t i = 0; i < a.meta.devices.size(); ++i)
        for (size_t c = 0; c < a.meta.devices[i].chunks.size(); ++c) jobs.push_back({i, c});
    auto r = parallel_for(pool, jobs.size(), [&](size_t j) -> Result<void> {
        const auto& rec = a.meta.devices[jobs[j].device].chunks[jobs[j].chunk];
        auto where = fmt::format("data blob {} ({}) chunk {} (device block {})", jobs[j].device + 1,
                                 a.data[jobs[j].device].digest, jobs[j].chunk, rec.blkaddr);
        auto frame = store.read_range(a.data[jobs[j].device], rec.compressed_offset, rec.compressed_size);
        if (!frame) {
            fault(where + ": " + frame.error().what());
            return {};
        }
        std::string plain;
        if (auto ok = decode_chunk(*frame, rec, plain); !ok) fault(where + ": " + ok.error().what());
        return {};
    });
    if (!r) return std::unexpected(r.error());
    rep.chunks_checked = jobs.size();

    // 3. The tree: every inode readable, every chunk index pointing at the start of a stored chunk
    // that is long enough for the file's bytes there.
    std::vector<std::map<uint32_t, uint32_t>> starts(a.meta.devices.size());  // blkaddr -> blocks
    for (size_t i = 0; i < a.meta.devices.size(); ++i)
        for (const auto& c : a.meta.devices[i].chunks) starts[i][c.blkaddr] = c.blocks;
    auto reader = ErofsReader::open(a.meta.erofs);
    if (!reader) {
        fault("EROFS image: " + reader.error().what());
        return rep;
    }
    auto walked = reader->walk([&](const std::string& path, const ErofsInodeInfo& ino) -> Result<void> {
        ++rep.inodes;
        if (ino.datalayout != EROFS_INODE_CHUNK_BASED) return {};
        uint64_t chunk = uint64_t{1} << ino.chunk_bits;
        for (size_t k = 0; k < ino.chunks.size(); ++k) {
            const auto& ref = ino.chunks[k];
            if (ref.is_hole()) continue;
            uint64_t len = std::min<uint64_t>(chunk, ino.size - k * chunk);
            uint64_t blocks = (len + EROFS_BLKSIZ - 1) / EROFS_BLKSIZ;
            if (ref.device_id == 0 || ref.device_id > starts.size()) {
                fault(fmt::format("{} (nid {}): chunk {} names device {}, the image has {}", path,
                                  ino.nid, k, ref.device_id, starts.size()));
                continue;
            }
            const auto& m = starts[ref.device_id - 1];
            auto it = m.find(ref.blkaddr);
            if (it == m.end() || it->second < blocks)
                fault(fmt::format("{} (nid {}): chunk {} points at device {} block {}, where no "
                                  "stored chunk of {} blocks starts",
                                  path, ino.nid, k, ref.device_id, ref.blkaddr, blocks));
        }
        return {};
    });
    if (!walked) fault("EROFS tree: " + walked.error().what());
    return rep;
}

Result<InspectReport> inspect_artifact(const Artifact& a) {
    InspectReport rep;
    rep.meta_size = a.meta_bytes->size();
    rep.erofs_size = a.meta.erofs.size();
    auto reader = EROS_TRY(ErofsReader::open(a.meta.erofs));
    std::unordered_set<uint64_t> seen;
    EROS_TRYV(reader.walk([&](const std::string&, const ErofsInodeInfo& ino) -> Result<void> {
        if (!seen.insert(ino.nid).second) {
            ++rep.hardlinks;
            return {};
        }
        switch (ino.type) {
        case FileType::Regular:
            ++rep.files;
            rep.tree_bytes += ino.size;
            if (ino.datalayout == EROFS_INODE_CHUNK_BASED) {
                uint64_t chunk = uint64_t{1} << ino.chunk_bits;
                for (size_t k = 0; k < ino.chunks.size(); ++k) {
                    if (ino.chunks[k].is_hole()) {
                        ++rep.hole_refs;
                        continue;
                    }
                    ++rep.chunk_refs;
                    uint64_t len = std::min<uint64_t>(chunk, ino.size - k * chunk);
                    rep.referenced_bytes += (len + EROFS_BLKSIZ - 1) / EROFS_BLKSIZ * EROFS_BLKSIZ;
                }
            } else if (ino.size > 0) {
                ++rep.inline_files;
                rep.inline_bytes += ino.size;
            }
            break;
        case FileType::Directory: ++rep.directories; break;
        case FileType::Symlink: ++rep.symlinks; break;
        default: ++rep.others; break;
        }
        return {};
    }));
    for (size_t i = 0; i < a.data.size(); ++i) {
        const auto& dev = a.meta.devices[i];
        rep.layers.push_back({digest_string(dev.layer_digest), a.data[i].digest, dev.blob_size,
                              dev.device_blocks * EROFS_BLKSIZ, dev.chunks.size()});
    }
    return rep;
}

}  // namespace erostream
