#include "oci_layout.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace erostream {

namespace {

constexpr size_t kMaxIndexSize = 64 << 20;
constexpr size_t kMaxSmallFile = 1 << 20;

Result<std::string> read_small_file(const std::string& path, size_t max_size) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return fail_errno("open " + path);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return fail_errno("stat " + path);
    if (!S_ISREG(st.st_mode)) return failf("{}: not a regular file", path);
    if (static_cast<uint64_t>(st.st_size) > max_size)
        return failf("{}: {} bytes is more than the {} allowed", path, st.st_size, max_size);
    std::string s(static_cast<size_t>(st.st_size), '\0');
    size_t got = 0;
    while (got < s.size()) {
        ssize_t r = ::pread(fd.get(), s.data() + got, s.size() - got, static_cast<off_t>(got));
        if (r < 0) {
            if (errno == EINTR) continue;
            return fail_errno("read " + path);
        }
        if (r == 0) return failf("{}: shrank while being read", path);
        got += static_cast<size_t>(r);
    }
    return s;
}

Result<void> write_all(int fd, const void* data, size_t n, const std::string& what) {
    auto* p = static_cast<const char*>(data);
    while (n > 0) {
        ssize_t r = ::write(fd, p, n);
        if (r < 0) {
            if (errno == EINTR) continue;
            return fail_errno("write " + what);
        }
        p += r;
        n -= static_cast<size_t>(r);
    }
    return {};
}

Result<void> fsync_dir(const std::string& dir) {
    UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) return fail_errno("open " + dir);
    if (::fsync(fd.get()) != 0) return fail_errno("fsync " + dir);
    return {};
}

// A temporary file in `dir` (mkstemp), made world-readable: blobs and index.json are public
// content, and mkstemp's 0600 would hide them from a registry server running as another user.
Result<std::pair<std::string, UniqueFd>> make_temp(const std::string& dir, std::string_view stem) {
    std::string tmpl = fmt::format("{}/.{}-XXXXXX", dir, stem);
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    int fd = ::mkostemp(buf.data(), O_CLOEXEC);
    if (fd < 0) return fail_errno("create a temporary file in " + dir);
    UniqueFd ufd(fd);
    std::string path(buf.data());
    if (::fchmod(fd, 0644) != 0) {
        int e = errno;
        ::unlink(path.c_str());
        return fail_errno("chmod " + path, e);
    }
    return std::pair{std::move(path), std::move(ufd)};
}

Result<void> write_file_atomic(const std::string& dir, const std::string& name,
                               std::string_view bytes) {
    auto [tmp, fd] = EROS_TRY(make_temp(dir, name));
    auto cleanup = [&](Error e) -> Result<void> {
        ::unlink(tmp.c_str());
        return std::unexpected(std::move(e));
    };
    if (auto r = write_all(fd.get(), bytes.data(), bytes.size(), tmp); !r) return cleanup(r.error());
    if (::fsync(fd.get()) != 0) return cleanup(Error{errno, "fsync " + tmp});
    std::string final_path = dir + "/" + name;
    if (::rename(tmp.c_str(), final_path.c_str()) != 0)
        return cleanup(Error{errno, fmt::format("rename {} to {}", tmp, final_path)});
    return fsync_dir(dir);
}

bool is_regular_file(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Result<void> check_layout_file(const std::string& dir) {
    std::string path = dir + "/oci-layout";
    if (!is_regular_file(path)) return failf("{}: not an OCI image layout (no oci-layout file)", dir);
    std::string text = EROS_TRY(read_small_file(path, kMaxSmallFile));
    auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return failf("{}: not JSON", path);
    auto it = j.find("imageLayoutVersion");
    if (it == j.end() || !it->is_string()) return failf("{}: imageLayoutVersion: missing", path);
    auto v = it->get<std::string>();
    if (!v.starts_with("1.")) return failf("{}: imageLayoutVersion '{}' is not supported", path, v);
    return {};
}

std::string describe_entry(const Descriptor& d) {
    auto it = d.annotations.find(std::string(annotation::kRefName));
    if (it != d.annotations.end()) return fmt::format("'{}'", it->second);
    return fmt::format("untagged {}", d.digest);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// BlobWriter

BlobWriter::BlobWriter(std::string blobs_dir, std::string tmp_path, UniqueFd fd)
    : blobs_dir_(std::move(blobs_dir)), tmp_path_(std::move(tmp_path)), fd_(std::move(fd)) {}

BlobWriter::BlobWriter(BlobWriter&& o) noexcept
    : blobs_dir_(std::move(o.blobs_dir_)),
      tmp_path_(std::exchange(o.tmp_path_, std::string())),
      fd_(std::move(o.fd_)),
      hash_(std::move(o.hash_)),
      size_(std::exchange(o.size_, 0)) {}

BlobWriter& BlobWriter::operator=(BlobWriter&& o) noexcept {
    if (this != &o) {
        discard();
        blobs_dir_ = std::move(o.blobs_dir_);
        tmp_path_ = std::exchange(o.tmp_path_, std::string());
        fd_ = std::move(o.fd_);
        hash_ = std::move(o.hash_);
        size_ = std::exchange(o.size_, 0);
    }
    return *this;
}

BlobWriter::~BlobWriter() { discard(); }

void BlobWriter::discard() noexcept {
    if (!tmp_path_.empty()) ::unlink(tmp_path_.c_str());
    tmp_path_.clear();
}

Result<void> BlobWriter::write(const void* data, size_t n) {
    if (tmp_path_.empty()) return fail("blob writer: write after commit");
    EROS_TRYV(write_all(fd_.get(), data, n, tmp_path_));
    hash_.update(data, n);
    size_ += n;
    return {};
}

Result<Descriptor> BlobWriter::commit(std::string media_type) {
    if (tmp_path_.empty()) return fail("blob writer: committed twice");
    if (::fsync(fd_.get()) != 0) return fail_errno("fsync " + tmp_path_);
    std::string digest = digest_string(hash_.finish());
    std::string final_path = blobs_dir_ + "/" + digest.substr(7);
    if (::rename(tmp_path_.c_str(), final_path.c_str()) != 0)
        return fail_errno(fmt::format("rename {} to {}", tmp_path_, final_path));
    tmp_path_.clear();
    EROS_TRYV(fsync_dir(blobs_dir_));
    return Descriptor{.media_type = std::move(media_type),
                      .digest = std::move(digest),
                      .size = static_cast<int64_t>(size_)};
}

// ---------------------------------------------------------------------------------------------
// Index lookups

Result<Descriptor> resolve_in_index(const Index& index, const std::optional<std::string>& tag,
                                    const std::optional<std::string>& digest,
                                    std::string_view where) {
    const std::string ref_key(annotation::kRefName);
    if (tag) {
        const Descriptor* found = nullptr;
        for (const auto& d : index.manifests) {
            auto it = d.annotations.find(ref_key);
            if (it == d.annotations.end() || it->second != *tag) continue;
            if (found && found->digest != d.digest)
                return failf("{}: tag '{}' names two manifests ({} and {})", where, *tag,
                             found->digest, d.digest);
            found = &d;
        }
        if (!found) return failf("{}: no manifest tagged '{}'", where, *tag);
        if (digest && found->digest != *digest)
            return failf("{}: tag '{}' is {}, not {}", where, *tag, found->digest, *digest);
        return *found;
    }
    if (digest) {
        for (const auto& d : index.manifests)
            if (d.digest == *digest) return d;
        return failf("{}: no manifest {}", where, *digest);
    }
    if (index.manifests.size() == 1) return index.manifests[0];
    if (index.manifests.empty()) return failf("{}: holds no manifest", where);
    std::string list;
    for (const auto& d : index.manifests) list += (list.empty() ? "" : ", ") + describe_entry(d);
    return failf("{}: holds {} manifests ({}); name one with :TAG or @DIGEST", where,
                 index.manifests.size(), list);
}

// ---------------------------------------------------------------------------------------------
// OciLayout

Result<OciLayout> OciLayout::open(const std::string& dir) {
    EROS_TRYV(check_layout_file(dir));
    if (!is_regular_file(dir + "/index.json"))
        return failf("{}: not an OCI image layout (no index.json)", dir);
    return OciLayout(dir);
}

Result<OciLayout> OciLayout::open_or_create(const std::string& dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir + "/blobs/sha256", ec);
    if (ec) return std::unexpected(Error{ec.value(), "create " + dir + "/blobs/sha256"});
    if (!is_regular_file(dir + "/oci-layout"))
        EROS_TRYV(write_file_atomic(dir, "oci-layout", R"({"imageLayoutVersion":"1.0.0"})"));
    if (!is_regular_file(dir + "/index.json")) {
        Index empty;
        empty.media_type = media_type::kOciIndex;
        EROS_TRYV(write_file_atomic(dir, "index.json", serialize_index(empty)));
    }
    return open(dir);
}

Result<Index> OciLayout::read_index() const {
    std::string path = dir_ + "/index.json";
    std::string text = EROS_TRY(read_small_file(path, kMaxIndexSize));
    auto index = parse_index(text);
    if (!index) index.error().prefix(path);
    return index;
}

std::string OciLayout::blob_path(std::string_view digest) const {
    std::string p = dir_ + "/blobs/";
    size_t colon = digest.find(':');
    if (colon == std::string_view::npos) return p + std::string(digest);
    return p + std::string(digest.substr(0, colon)) + "/" + std::string(digest.substr(colon + 1));
}

bool OciLayout::has_blob(std::string_view digest) const {
    return parse_digest(digest).has_value() && is_regular_file(blob_path(digest));
}

Result<std::string> OciLayout::read_blob(const Descriptor& d, size_t max_size) const {
    auto want = parse_digest(d.digest);
    if (!want) return failf("{}: blob {}", dir_, want.error().message);
    if (d.size < 0 || static_cast<uint64_t>(d.size) > max_size)
        return failf("{}: blob {}: size {} is more than the {} allowed", dir_, d.digest, d.size,
                     max_size);
    std::string bytes = EROS_TRY(read_small_file(blob_path(d.digest), max_size));
    if (bytes.size() != static_cast<uint64_t>(d.size))
        return failf("{}: blob {}: {} bytes, the descriptor says {}", dir_, d.digest, bytes.size(),
                     d.size);
    if (sha256(bytes) != *want) return failf("{}: blob {}: digest mismatch", dir_, d.digest);
    return bytes;
}

Result<UniqueFd> OciLayout::open_blob(std::string_view digest) const {
    if (auto ok = parse_digest(digest); !ok) return failf("{}: blob {}", dir_, ok.error().message);
    std::string path = blob_path(digest);
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return fail_errno(fmt::format("{}: blob {}: open {}", dir_, digest, path));
    return fd;
}

Result<BlobWriter> OciLayout::new_blob() const {
    std::string blobs = dir_ + "/blobs/sha256";
    std::error_code ec;
    std::filesystem::create_directories(blobs, ec);
    if (ec) return std::unexpected(Error{ec.value(), "create " + blobs});
    // The temporary lives in the layout root, not in blobs/sha256, where tools expect only
    // digest-named files.
    auto [tmp, fd] = EROS_TRY(make_temp(dir_, "blob"));
    return BlobWriter(std::move(blobs), std::move(tmp), std::move(fd));
}

Result<Descriptor> OciLayout::put_blob(std::string_view bytes, std::string media_type) const {
    std::string digest = digest_string(sha256(bytes));
    struct stat st {};
    if (::stat(blob_path(digest).c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        static_cast<uint64_t>(st.st_size) == bytes.size())
        return Descriptor{.media_type = std::move(media_type),
                          .digest = std::move(digest),
                          .size = static_cast<int64_t>(bytes.size())};
    BlobWriter w = EROS_TRY(new_blob());
    EROS_TRYV(w.write(bytes));
    return w.commit(std::move(media_type));
}

Result<void> OciLayout::add_manifest(Descriptor manifest, std::optional<std::string> tag) const {
    if (auto ok = parse_digest(manifest.digest); !ok)
        return failf("{}: add manifest: {}", dir_, ok.error().message);
    if (tag && tag->empty()) return failf("{}: add manifest: empty tag", dir_);
    UniqueFd dir_fd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir_fd) return fail_errno("open " + dir_);
    while (::flock(dir_fd.get(), LOCK_EX) != 0)
        if (errno != EINTR) return fail_errno("flock " + dir_);

    Index index = EROS_TRY(read_index());
    if (index.media_type.empty()) index.media_type = media_type::kOciIndex;
    const std::string ref_key(annotation::kRefName);
    if (tag) {
        std::erase_if(index.manifests, [&](const Descriptor& d) {
            auto it = d.annotations.find(ref_key);
            return it != d.annotations.end() && it->second == *tag;
        });
        manifest.annotations[ref_key] = *tag;
        index.manifests.push_back(std::move(manifest));
    } else {
        bool present = false;
        for (const auto& d : index.manifests) present |= d.digest == manifest.digest;
        if (present) return {};
        index.manifests.push_back(std::move(manifest));
    }
    return write_file_atomic(dir_, "index.json", serialize_index(index));
}

Result<Descriptor> OciLayout::resolve(std::optional<std::string> tag,
                                      std::optional<std::string> digest) const {
    Index index = EROS_TRY(read_index());
    if (digest) {
        if (auto ok = parse_digest(*digest); !ok) return failf("{}: {}", dir_, ok.error().message);
    }
    auto found = resolve_in_index(index, tag, digest, dir_);
    if (found || tag || !digest || !has_blob(*digest)) return found;
    // Not listed, but present: describe it from its own bytes.
    struct stat st {};
    if (::stat(blob_path(*digest).c_str(), &st) != 0) return fail_errno("stat " + blob_path(*digest));
    Descriptor d{.media_type = "", .digest = *digest, .size = static_cast<int64_t>(st.st_size)};
    std::string bytes = EROS_TRY(read_blob(d, kMaxIndexSize));
    d.media_type = media_type_of_json(bytes);
    if (!is_manifest_media_type(d.media_type) && !is_index_media_type(d.media_type))
        return failf("{}: blob {} is not a manifest or index", dir_, *digest);
    return d;
}

}  // namespace erostream
