#include "registry_image_source.h"

#include <fcntl.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "decompress.h"
#include "sha256.h"
#include "unique_fd.h"

namespace erostream {

namespace {

constexpr uint64_t kMaxManifestBytes = 8u << 20;
constexpr uint64_t kMaxConfigBytes = 64u << 20;

// One layer being downloaded into a file.
struct Spool {
    std::string digest;
    uint64_t size = 0;
    std::string path;
    UniqueFd fd;
    // Guarded by BlobSpools::mu_.
    uint64_t written = 0;
    unsigned generation = 0;
    unsigned attempts = 0;
    int read_generation = -1;  // the newest generation a reader was opened on
    enum State { Queued, Running, Done, Failed } state = Queued;
    Error error;
};

// The downloads of one source: a queue in layer order, `concurrency` workers, spool files in a
// private temporary directory that goes away with the source.
class BlobSpools {
public:
    BlobSpools(std::shared_ptr<RegistryClient> client, std::string repo, RegistrySourceOptions opt)
        : client_(std::move(client)), repo_(std::move(repo)), opt_(opt) {}

    ~BlobSpools() {
        {
            std::lock_guard lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : workers_) t.join();
        std::error_code ec;
        if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
    }

    Result<void> enqueue(const Descriptor& d) {
        std::lock_guard lock(mu_);
        if (spools_.count(d.digest)) return {};
        if (dir_.empty()) {
            std::string base = opt_.spool_dir;
            if (base.empty()) {
                const char* t = std::getenv("TMPDIR");
                base = t && *t ? t : "/tmp";
            }
            std::string tmpl = base + "/erostream-spool-XXXXXX";
            if (!::mkdtemp(tmpl.data())) return fail_errno("cannot create a spool directory in " + base);
            dir_ = tmpl;
        }
        auto s = std::make_shared<Spool>();
        s->digest = d.digest;
        s->size = static_cast<uint64_t>(d.size);
        s->path = dir_ + "/" + referrers_tag(d.digest);
        int fd = ::open(s->path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) return fail_errno("cannot create spool file " + s->path);
        s->fd.reset(fd);
        spools_[d.digest] = s;
        queue_.push_back(s);
        if (opt_.stats) {
            opt_.stats->bytes_total += s->size;
            opt_.stats->blobs_total += 1;
        }
        while (workers_.size() < std::max(1u, opt_.concurrency)) workers_.emplace_back([this] { work(); });
        cv_.notify_all();
        return {};
    }

    std::shared_ptr<Spool> find(const std::string& digest) {
        std::lock_guard lock(mu_);
        auto it = spools_.find(digest);
        return it == spools_.end() ? nullptr : it->second;
    }

    // Blocks until the spool has bytes beyond `pos`, is complete, failed, or started over.
    struct View {
        uint64_t available = 0;
        Spool::State state = Spool::Queued;
        unsigned generation = 0;
        Error error;
    };
    View wait(const std::shared_ptr<Spool>& s, uint64_t pos, unsigned generation) {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] {
            return s->written > pos || s->state == Spool::Done || s->state == Spool::Failed ||
                   s->generation != generation || stop_;
        });
        return View{s->written, s->state, s->generation, s->error};
    }

    unsigned open_reader(const std::shared_ptr<Spool>& s) {
        std::lock_guard lock(mu_);
        s->read_generation = std::max<int>(s->read_generation, static_cast<int>(s->generation));
        return s->generation;
    }

    // After a failed conversion: waits until every spool that was read has either finished or
    // been found corrupted (a reader may have failed on bad bytes — a broken gzip header, say —
    // before the download's end showed the mismatch), then says whether fresh bytes are coming
    // for any of them.
    bool take_retry() {
        std::unique_lock lock(mu_);
        auto settled = [&](const Spool& s) {
            return s.read_generation < 0 || s.state == Spool::Done || s.state == Spool::Failed ||
                   static_cast<int>(s.generation) > s.read_generation;
        };
        cv_.wait(lock, [&] {
            if (stop_) return true;
            for (const auto& [d, s] : spools_)
                if (!settled(*s)) return false;
            return true;
        });
        bool any = false;
        for (const auto& [d, s] : spools_)
            if (s->read_generation >= 0 && static_cast<int>(s->generation) > s->read_generation &&
                s->state != Spool::Failed)
                any = true;
        return any;
    }

    const std::string& repo() const { return repo_; }
    RegistryClient& client() { return *client_; }

private:
    void work() {
        for (;;) {
            std::shared_ptr<Spool> s;
            {
                std::unique_lock lock(mu_);
                cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
                if (stop_) return;
                s = queue_.front();
                queue_.pop_front();
                s->state = Spool::Running;
                ++running_;
            }
            download(*s);
            std::lock_guard lock(mu_);
            --running_;
        }
    }

    void download(Spool& s) {
        const unsigned max_attempts = client_->retry_policy().max_retries + 1;
        for (;;) {
            auto r = download_once(s);
            std::unique_lock lock(mu_);
            ++s.attempts;
            if (r && *r) {
                s.state = Spool::Done;
                if (opt_.stats) opt_.stats->blobs_done += 1;
                cv_.notify_all();
                return;
            }
            if (!r || stop_ || s.attempts >= max_attempts) {
                s.state = Spool::Failed;
                s.error = r ? last_mismatch_ : r.error();
                cv_.notify_all();
                return;
            }
            // Corrupted: readers of this generation must give up; start over.
            spdlog::warn("{}; downloading it again", last_mismatch_.what());
            if (opt_.stats) opt_.stats->bytes_done -= std::min<uint64_t>(opt_.stats->bytes_done, s.written);
            s.written = 0;
            ++s.generation;
            cv_.notify_all();
            lock.unlock();
            if (::ftruncate(s.fd.get(), 0) != 0) {
                std::lock_guard l2(mu_);
                s.state = Spool::Failed;
                s.error = Error{errno, "truncating spool file " + s.path};
                cv_.notify_all();
                return;
            }
            client_->backoff(s.attempts - 1);
        }
    }

    // One whole download: true when the digest matched, false when it did not.
    Result<bool> download_once(Spool& s) {
        auto stream = EROS_TRY(client_->open_blob_unverified(repo_, s.digest, s.size));
        Sha256 h;
        std::vector<char> buf(1 << 20);
        uint64_t off = 0;
        for (;;) {
            {
                std::lock_guard lock(mu_);
                if (stop_) return fail("cancelled");
            }
            size_t n = EROS_TRY(stream->read(buf.data(), buf.size()));
            if (n == 0) break;
            size_t done = 0;
            while (done < n) {
                ssize_t w = ::pwrite(s.fd.get(), buf.data() + done, n - done, static_cast<off_t>(off + done));
                if (w < 0 && errno == EINTR) continue;
                if (w < 0) return fail_errno("writing spool file " + s.path);
                done += static_cast<size_t>(w);
            }
            h.update(buf.data(), n);
            off += n;
            if (opt_.stats) opt_.stats->bytes_done += n;
            std::lock_guard lock(mu_);
            s.written = off;
            cv_.notify_all();
        }
        std::string got = digest_string(h.finish());
        if (got == s.digest) return true;
        std::lock_guard lock(mu_);
        last_mismatch_ = Error{EIO, fmt::format("registry {}: layer {}@{}: digest mismatch: got {} ({} bytes), "
                                                "corrupted in transit or by the registry",
                                                client_->registry(), repo_, s.digest, got, off)};
        return false;
    }

    std::shared_ptr<RegistryClient> client_;
    std::string repo_;
    RegistrySourceOptions opt_;
    std::string dir_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::map<std::string, std::shared_ptr<Spool>> spools_;
    std::deque<std::shared_ptr<Spool>> queue_;
    std::vector<std::thread> workers_;
    size_t running_ = 0;
    bool stop_ = false;
    Error last_mismatch_;
};

// Reads a spool file as it grows; ends only when the download was verified.
class SpoolStream final : public ByteStream {
public:
    SpoolStream(BlobSpools& spools, std::shared_ptr<Spool> s)
        : spools_(spools), s_(std::move(s)), generation_(spools.open_reader(s_)) {}

    Result<size_t> read(void* buf, size_t n) override {
        if (n == 0) return 0;
        auto v = spools_.wait(s_, pos_, generation_);
        if (v.generation != generation_ && pos_ == 0) {
            generation_ = spools_.open_reader(s_);  // nothing of the bad download was read
            return read(buf, n);
        }
        if (v.generation != generation_) {
            return failf("layer {}: the download was corrupted in transit and is being fetched again",
                         s_->digest);
        }
        if (v.available > pos_) {
            size_t k = static_cast<size_t>(std::min<uint64_t>(n, v.available - pos_));
            for (;;) {
                ssize_t r = ::pread(s_->fd.get(), buf, k, static_cast<off_t>(pos_));
                if (r < 0 && errno == EINTR) continue;
                if (r < 0) return fail_errno("reading spool file " + s_->path);
                if (r == 0) return fail("spool file shorter than its download");
                pos_ += static_cast<uint64_t>(r);
                return static_cast<size_t>(r);
            }
        }
        if (v.state == Spool::Done) return 0;
        if (v.state == Spool::Failed) return std::unexpected(v.error);
        return fail("download cancelled");
    }

private:
    BlobSpools& spools_;
    std::shared_ptr<Spool> s_;
    unsigned generation_;
    uint64_t pos_ = 0;
};

class RegistryImageSource final : public ImageSource {
public:
    RegistryImageSource(ImageReference ref, std::shared_ptr<RegistryClient> client, RegistrySourceOptions opt)
        : ref_(std::move(ref)), client_(client), spools_(client, ref_.repository, opt) {}

    std::string describe() const override { return "docker://" + ref_.str(); }

    Result<std::vector<ResolvedManifest>> manifests(const std::optional<Platform>& want) override {
        auto top = EROS_TRY(client_->get_manifest(ref_.repository, ref_.reference()));
        Descriptor top_desc;
        top_desc.media_type = top.media_type;
        top_desc.digest = top.digest;
        top_desc.size = static_cast<int64_t>(top.bytes.size());
        SmallBlobReader reader = [&](const Descriptor& d) -> Result<std::string> {
            if (d.digest == top.digest) return top.bytes;
            std::string bytes;
            if (is_manifest_media_type(d.media_type) || is_index_media_type(d.media_type)) {
                if (d.size < 0 || static_cast<uint64_t>(d.size) > kMaxManifestBytes)
                    return failf("manifest {} is too large ({} bytes)", d.digest, d.size);
                bytes = EROS_TRY(client_->get_manifest(ref_.repository, d.digest)).bytes;
            } else {
                if (d.size < 0 || static_cast<uint64_t>(d.size) > kMaxConfigBytes)
                    return failf("blob {} is too large ({} bytes)", d.digest, d.size);
                bytes = EROS_TRY(client_->fetch_blob(ref_.repository, d.digest, kMaxConfigBytes));
            }
            if (bytes.size() != static_cast<uint64_t>(d.size))
                return failf("{} has {} bytes, its descriptor says {}", d.digest, bytes.size(), d.size);
            return bytes;
        };
        auto out = EROS_TRY(resolve_manifests(top_desc, reader, want, describe()));
        // Start every layer's download now, in the order the converter will want them.
        for (const auto& rm : out)
            for (const auto& l : rm.manifest.layers) EROS_TRYV(spools_.enqueue(l));
        return out;
    }

    Result<std::unique_ptr<ByteStream>> open_blob(const Descriptor& d) override {
        if (auto s = spools_.find(d.digest))
            return verify_blob_stream(std::make_unique<SpoolStream>(spools_, s), d);
        auto raw = EROS_TRY(client_->open_blob_unverified(ref_.repository, d.digest, static_cast<uint64_t>(d.size)));
        return verify_blob_stream(std::move(raw), d);
    }

    bool retry_after_failure() override { return spools_.take_retry(); }

private:
    ImageReference ref_;
    std::shared_ptr<RegistryClient> client_;
    BlobSpools spools_;
};

}  // namespace

Result<std::unique_ptr<ImageSource>> open_registry_source(const ImageReference& ref,
                                                          std::shared_ptr<RegistryClient> client,
                                                          RegistrySourceOptions opt) {
    return std::unique_ptr<ImageSource>(std::make_unique<RegistryImageSource>(ref, std::move(client), opt));
}

}  // namespace erostream
