#include "docker_archive.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <deque>
#include <map>
#include <span>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "byte_stream.h"
#include "oci_layout.h"
#include "oci_types.h"
#include "sha256.h"

namespace erostream {

namespace {

using json = nlohmann::json;

constexpr size_t kMaxJson = 64 << 20;
constexpr size_t kMaxManifest = 8 << 20;
constexpr size_t kMaxTarExtension = 1 << 20;  // GNU long names and PAX records
constexpr int kMaxLinkHops = 16;
constexpr int kMaxIndexDepth = 4;

// ---------------------------------------------------------------------------------------------
// A minimal tar index: member name -> where its bytes are. Only what finding blobs needs (names,
// sizes, links); the converter reads layer tars with tar_reader, not this.

struct Member {
    uint64_t offset = 0, size = 0;
    char type = '0';
    std::string link;
};
using MemberMap = std::map<std::string, Member>;

struct TarHeader {
    std::string name, link;
    uint64_t size = 0;
    char type = '0';
};

// "a/./b//c/../d" -> "a/b/d"; ".." never climbs above the archive root.
std::string normalize_member_path(std::string_view p) {
    std::vector<std::string_view> parts;
    size_t i = 0;
    while (i <= p.size()) {
        size_t j = p.find('/', i);
        if (j == std::string_view::npos) j = p.size();
        auto c = p.substr(i, j - i);
        if (c == "..") {
            if (!parts.empty()) parts.pop_back();
        } else if (!c.empty() && c != ".") {
            parts.push_back(c);
        }
        i = j + 1;
    }
    std::string out;
    for (auto c : parts) {
        if (!out.empty()) out += '/';
        out += c;
    }
    return out;
}

std::string cstring_field(std::span<const uint8_t> f) {
    auto end = std::find(f.begin(), f.end(), uint8_t{0});
    return std::string(f.begin(), end);
}

// Octal (NUL/space padded) or, with the high bit of the first byte set, GNU base-256.
Result<uint64_t> numeric_field(std::span<const uint8_t> f, std::string_view what) {
    if (!f.empty() && (f[0] & 0x80)) {
        if (f[0] == 0xff) return failf("{}: negative base-256 number", what);
        uint64_t v = f[0] & 0x7f;
        for (size_t i = 1; i < f.size(); ++i) {
            if (v >> 55) return failf("{}: base-256 number too large", what);
            v = v << 8 | f[i];
        }
        return v;
    }
    size_t i = 0;
    while (i < f.size() && (f[i] == ' ' || f[i] == 0)) ++i;
    uint64_t v = 0;
    for (; i < f.size() && f[i] >= '0' && f[i] <= '7'; ++i) {
        if (v >> 60) return failf("{}: octal number too large", what);
        v = v * 8 + (f[i] - '0');
    }
    for (; i < f.size(); ++i)
        if (f[i] != ' ' && f[i] != 0) return failf("{}: not an octal number", what);
    return v;
}

Result<TarHeader> parse_tar_header(std::span<const uint8_t, 512> h) {
    uint64_t stored = EROS_TRY(numeric_field(h.subspan(148, 8), "checksum"));
    uint64_t usum = 0;
    int64_t ssum = 0;
    for (size_t i = 0; i < 512; ++i) {
        uint8_t b = (i >= 148 && i < 156) ? ' ' : h[i];
        usum += b;
        ssum += static_cast<int8_t>(b);
    }
    if (stored != usum && static_cast<int64_t>(stored) != ssum)
        return failf("bad header checksum (stored {}, computed {})", stored, usum);
    TarHeader t;
    t.name = cstring_field(h.subspan(0, 100));
    t.size = EROS_TRY(numeric_field(h.subspan(124, 12), "size"));
    t.type = static_cast<char>(h[156]);
    t.link = cstring_field(h.subspan(157, 100));
    // POSIX ustar keeps a name prefix at 345; GNU's "ustar  " header uses that space otherwise.
    static constexpr uint8_t kUstar[6] = {'u', 's', 't', 'a', 'r', 0};
    if (std::equal(kUstar, kUstar + 6, h.begin() + 257)) {
        std::string prefix = cstring_field(h.subspan(345, 155));
        if (!prefix.empty()) t.name = prefix + "/" + t.name;
    }
    return t;
}

// PAX extended header records: "<len> <key>=<value>\n".
Result<std::map<std::string, std::string>> parse_pax(std::string_view data) {
    std::map<std::string, std::string> out;
    while (!data.empty()) {
        size_t sp = data.find(' ');
        if (sp == std::string_view::npos || sp == 0) return fail("PAX record without length");
        uint64_t len = 0;
        auto [p, ec] = std::from_chars(data.data(), data.data() + sp, len);
        if (ec != std::errc() || p != data.data() + sp || len <= sp + 1 || len > data.size())
            return fail("PAX record with a bad length");
        std::string_view rec = data.substr(sp + 1, len - sp - 1);
        if (rec.empty() || rec.back() != '\n') return fail("PAX record not ended by a newline");
        rec.remove_suffix(1);
        size_t eq = rec.find('=');
        if (eq == std::string_view::npos) return fail("PAX record without '='");
        out[std::string(rec.substr(0, eq))] = std::string(rec.substr(eq + 1));
        data.remove_prefix(len);
    }
    return out;
}

Result<void> pread_exact(int fd, void* buf, size_t n, uint64_t off) {
    auto* p = static_cast<char*>(buf);
    while (n > 0) {
        ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
        if (r < 0) {
            if (errno == EINTR) continue;
            return fail_errno(fmt::format("read at offset {}", off));
        }
        if (r == 0) return failf("unexpected end of file at offset {}", off);
        p += r;
        off += static_cast<uint64_t>(r);
        n -= static_cast<size_t>(r);
    }
    return {};
}

bool header_only_type(char t) { return t >= '1' && t <= '6'; }

Result<MemberMap> index_tar(int fd, uint64_t file_size) {
    MemberMap members;
    std::optional<std::string> long_name, long_link;
    std::map<std::string, std::string> pax;
    std::array<uint8_t, 512> h{};
    uint64_t off = 0;
    while (off < file_size) {
        if (file_size - off < 512) return failf("truncated tar header at offset {}", off);
        EROS_TRYV(pread_exact(fd, h.data(), h.size(), off));
        if (std::all_of(h.begin(), h.end(), [](uint8_t b) { return b == 0; })) break;
        auto hdr = parse_tar_header(h);
        if (!hdr) return std::unexpected(hdr.error().prefix(fmt::format("tar header at offset {}", off)));
        uint64_t size = hdr->size;
        if (auto it = pax.find("size"); it != pax.end()) {
            auto [p, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), size);
            if (ec != std::errc() || p != it->second.data() + it->second.size())
                return failf("tar header at offset {}: bad PAX size '{}'", off, it->second);
        }
        uint64_t data_size = header_only_type(hdr->type) ? 0 : size;
        uint64_t data_off = off + 512;
        if (data_size > file_size - data_off)
            return failf("tar member '{}' at offset {}: {} bytes run past the end of the file",
                         hdr->name, off, data_size);
        auto read_ext = [&]() -> Result<std::string> {
            if (data_size > kMaxTarExtension)
                return failf("tar extension header at offset {} is {} bytes", off, data_size);
            std::string s(data_size, '\0');
            EROS_TRYV(pread_exact(fd, s.data(), s.size(), data_off));
            return s;
        };
        switch (hdr->type) {
            case 'L':
            case 'K': {
                std::string s = EROS_TRY(read_ext());
                s.resize(std::min(s.size(), s.find('\0')));
                (hdr->type == 'L' ? long_name : long_link) = std::move(s);
                break;
            }
            case 'x': {
                std::string s = EROS_TRY(read_ext());
                auto recs = parse_pax(s);
                if (!recs)
                    return std::unexpected(recs.error().prefix(fmt::format("tar header at offset {}", off)));
                for (auto& [k, v] : *recs) pax[k] = std::move(v);
                break;
            }
            case 'g':
                break;
            default: {
                std::string name = hdr->name, link = hdr->link;
                if (long_name) name = *long_name;
                if (long_link) link = *long_link;
                if (auto it = pax.find("path"); it != pax.end()) name = it->second;
                if (auto it = pax.find("linkpath"); it != pax.end()) link = it->second;
                std::string key = normalize_member_path(name);
                if (!key.empty())
                    members[key] = Member{.offset = data_off, .size = data_size, .type = hdr->type,
                                          .link = std::move(link)};
                long_name.reset();
                long_link.reset();
                pax.clear();
            }
        }
        off = data_off + std::min<uint64_t>((data_size + 511) / 512 * 512, file_size - data_off);
    }
    return members;
}

// ---------------------------------------------------------------------------------------------

struct Window {
    uint64_t offset = 0, size = 0;
};

// A window of the archive read through its own descriptor, so that the stream does not depend on
// the source staying alive.
class WindowStream final : public ByteStream {
public:
    WindowStream(UniqueFd fd, Window w) : fd_(std::move(fd)), inner_(fd_.get(), w.offset, w.size) {}
    Result<size_t> read(void* buf, size_t n) override { return inner_.read(buf, n); }

private:
    UniqueFd fd_;
    FdStream inner_;
};

std::string_view path_dir(std::string_view p) {
    size_t s = p.rfind('/');
    return s == std::string_view::npos ? std::string_view() : p.substr(0, s);
}

// "blobs/sha256/<hex>" -> the digest it names.
std::optional<std::string> digest_from_blob_path(std::string_view p) {
    if (!p.starts_with("blobs/sha256/")) return std::nullopt;
    std::string d = "sha256:" + std::string(p.substr(13));
    if (!parse_digest(d)) return std::nullopt;
    return d;
}

bool is_gzip(std::span<const uint8_t> m) { return m.size() >= 2 && m[0] == 0x1f && m[1] == 0x8b; }
bool is_zstd(std::span<const uint8_t> m) {
    return m.size() >= 4 && m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd;
}

struct ArchiveEntry {
    std::string config;
    std::vector<std::string> repo_tags, layers;
};

Result<std::vector<ArchiveEntry>> parse_archive_manifest(std::string_view text) {
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        return failf("manifest.json: invalid JSON: {}", e.what());
    }
    if (!j.is_array() || j.empty()) return fail("manifest.json: not a non-empty array");
    std::vector<ArchiveEntry> out;
    for (size_t i = 0; i < j.size(); ++i) {
        const json& e = j[i];
        if (!e.is_object()) return failf("manifest.json: [{}]: not an object", i);
        ArchiveEntry a;
        auto cfg = e.find("Config");
        if (cfg == e.end() || !cfg->is_string())
            return failf("manifest.json: [{}].Config: missing or not a string", i);
        a.config = cfg->get<std::string>();
        auto strings = [&](const char* key, std::vector<std::string>& dst, bool required) -> Result<void> {
            auto it = e.find(key);
            if (it == e.end() || it->is_null()) {
                if (required) return failf("manifest.json: [{}].{}: missing", i, key);
                return {};
            }
            if (!it->is_array()) return failf("manifest.json: [{}].{}: not an array", i, key);
            for (size_t k = 0; k < it->size(); ++k) {
                if (!(*it)[k].is_string())
                    return failf("manifest.json: [{}].{}[{}]: not a string", i, key, k);
                dst.push_back((*it)[k].get<std::string>());
            }
            return {};
        };
        EROS_TRYV(strings("RepoTags", a.repo_tags, false));
        EROS_TRYV(strings("Layers", a.layers, true));
        out.push_back(std::move(a));
    }
    return out;
}

// rootfs.diff_ids of an image config; empty when absent.
Result<std::vector<std::string>> config_diff_ids(std::string_view config) {
    json j;
    try {
        j = json::parse(config);
    } catch (const json::exception& e) {
        return failf("invalid JSON: {}", e.what());
    }
    std::vector<std::string> out;
    if (!j.is_object()) return fail("not a JSON object");
    auto rootfs = j.find("rootfs");
    if (rootfs == j.end() || !rootfs->is_object()) return out;
    auto ids = rootfs->find("diff_ids");
    if (ids == rootfs->end() || !ids->is_array()) return out;
    for (size_t i = 0; i < ids->size(); ++i) {
        const json& d = (*ids)[i];
        if (!d.is_string()) return failf("rootfs.diff_ids[{}]: not a string", i);
        auto s = d.get<std::string>();
        if (auto ok = parse_digest(s); !ok)
            return failf("rootfs.diff_ids[{}]: {}", i, ok.error().message);
        out.push_back(std::move(s));
    }
    return out;
}

std::optional<size_t> parse_source_index(std::string_view name) {
    if (!name.starts_with('@')) return std::nullopt;
    size_t n = 0;
    auto [p, ec] = std::from_chars(name.data() + 1, name.data() + name.size(), n);
    if (ec != std::errc() || p != name.data() + name.size() || name.size() == 1) return std::nullopt;
    return n;
}

class DockerArchiveSource final : public ImageSource {
public:
    DockerArchiveSource(std::string file, std::optional<std::string> name)
        : file_(std::move(file)), name_(std::move(name)) {}

    std::string describe() const override {
        return "docker-archive:" + file_ + (name_ ? ":" + *name_ : "");
    }

    Result<void> load() {
        fd_.reset(::open(file_.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd_) return fail_errno("open " + file_);
        struct stat st {};
        if (::fstat(fd_.get(), &st) != 0) return fail_errno("stat " + file_);
        if (!S_ISREG(st.st_mode)) return fail("not a regular file (the archive is read with pread)");
        file_size_ = static_cast<uint64_t>(st.st_size);
        std::array<uint8_t, 4> magic{};
        size_t mn = std::min<uint64_t>(magic.size(), file_size_);
        EROS_TRYV(pread_exact(fd_.get(), magic.data(), mn, 0));
        if (is_gzip({magic.data(), mn}) || is_zstd({magic.data(), mn}))
            return fail("the archive is compressed; decompress it first");
        members_ = EROS_TRY(index_tar(fd_.get(), file_size_));
        bool has_oci = members_.contains("oci-layout") && members_.contains("index.json");
        if (members_.contains("manifest.json")) return select_from_manifest_json(has_oci);
        if (has_oci) return select_from_oci_index();
        return fail("neither manifest.json nor an OCI layout (index.json) in the archive");
    }

    Result<std::vector<ResolvedManifest>> manifests(const std::optional<Platform>& want) override {
        if (synthesized_) {
            if (want) {
                auto p = platform_of_config(synthesized_->config_bytes);
                if (p && !platform_matches(*want, *p))
                    return failf("{}: the image is for {}, not {}", describe(), p->str(), want->str());
            }
            return std::vector<ResolvedManifest>{*synthesized_};
        }
        SmallBlobReader reader = [this](const Descriptor& d) { return read_small_blob(d); };
        return resolve_manifests(*oci_top_, reader, want, describe());
    }

    Result<std::unique_ptr<ByteStream>> open_blob(const Descriptor& d) override {
        auto w = blob_window(d.digest);
        if (!w) return std::unexpected(w.error().prefix(describe()));
        if (d.size < 0 || w->size != static_cast<uint64_t>(d.size))
            return failf("{}: blob {}: {} bytes in the archive, its descriptor says {}", describe(),
                         d.digest, w->size, d.size);
        UniqueFd dup(::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0));
        if (!dup) return fail_errno(fmt::format("{}: dup", describe()));
        return verify_blob_stream(std::make_unique<WindowStream>(std::move(dup), *w), d);
    }

private:
    // The member's bytes, following symlinks and hard links (classic `docker save` links
    // repeated layers to their first copy).
    Result<Window> member(std::string_view name) const {
        std::string p = normalize_member_path(name);
        for (int hop = 0; hop < kMaxLinkHops; ++hop) {
            auto it = members_.find(p);
            if (it == members_.end()) return failf("no member '{}'", p);
            const Member& m = it->second;
            if (m.type == '2') {
                p = m.link.starts_with('/')
                        ? normalize_member_path(m.link)
                        : normalize_member_path(std::string(path_dir(p)) + "/" + m.link);
                continue;
            }
            if (m.type == '1') {
                p = normalize_member_path(m.link);
                continue;
            }
            if (m.type == '0' || m.type == '\0' || m.type == '7') return Window{m.offset, m.size};
            return failf("member '{}' is not a regular file (type '{}')", p, m.type);
        }
        return failf("member '{}': more than {} links", name, kMaxLinkHops);
    }

    Result<std::string> read_window(Window w, size_t max_size, std::string_view what) const {
        if (w.size > max_size)
            return failf("{} is {} bytes, more than the {} allowed", what, w.size, max_size);
        std::string s(w.size, '\0');
        EROS_TRYV(pread_exact(fd_.get(), s.data(), s.size(), w.offset));
        return s;
    }

    Result<Sha256Digest> hash_window(Window w) const {
        Sha256 h;
        std::vector<char> buf(1 << 20);
        uint64_t done = 0;
        while (done < w.size) {
            size_t n = std::min<uint64_t>(buf.size(), w.size - done);
            EROS_TRYV(pread_exact(fd_.get(), buf.data(), n, w.offset + done));
            h.update(buf.data(), n);
            done += n;
        }
        return h.finish();
    }

    Result<Window> blob_window(std::string_view digest) const {
        if (auto ok = parse_digest(digest); !ok) return failf("blob {}", ok.error().message);
        if (auto it = blobs_.find(std::string(digest)); it != blobs_.end()) return it->second;
        auto w = member("blobs/sha256/" + std::string(digest.substr(7)));
        if (!w) return failf("blob {} is not in the archive", digest);
        return w;
    }

    Result<std::string> read_small_blob(const Descriptor& d) const {
        Window w = EROS_TRY(blob_window(d.digest));
        if (d.size < 0 || w.size != static_cast<uint64_t>(d.size))
            return failf("blob {}: {} bytes in the archive, its descriptor says {}", d.digest,
                         w.size, d.size);
        size_t max = is_image_config_media_type(d.media_type) ? kMaxJson : kMaxManifest;
        std::string bytes = EROS_TRY(read_window(w, max, "blob " + d.digest));
        if (digest_string(sha256(bytes)) != d.digest) return failf("blob {}: digest mismatch", d.digest);
        return bytes;
    }

    Result<void> select_from_manifest_json(bool has_oci) {
        Window mw = EROS_TRY(member("manifest.json"));
        std::string text = EROS_TRY(read_window(mw, kMaxJson, "manifest.json"));
        auto entries = parse_archive_manifest(text);
        if (!entries) return std::unexpected(std::move(entries.error()));
        size_t pick = EROS_TRY(pick_entry(*entries));
        const ArchiveEntry& e = (*entries)[pick];

        Window cw = EROS_TRY(member(e.config));
        std::string config = EROS_TRY(read_window(cw, kMaxJson, "config " + e.config));
        std::string config_digest = digest_string(sha256(config));
        if (has_oci) {
            auto found = EROS_TRY(find_oci_manifest_with_config(config_digest));
            if (found) {
                oci_top_ = std::move(*found);
                return {};
            }
        }
        return synthesize(e, cw, std::move(config), config_digest);
    }

    Result<size_t> pick_entry(const std::vector<ArchiveEntry>& entries) const {
        auto list = [&] {
            std::string s;
            for (size_t i = 0; i < entries.size(); ++i) {
                std::string tags;
                for (const auto& t : entries[i].repo_tags) tags += (tags.empty() ? "" : " ") + t;
                s += fmt::format("{}@{} {}", s.empty() ? "" : ", ", i, tags.empty() ? "(untagged)" : tags);
            }
            return s;
        };
        if (!name_) {
            if (entries.size() == 1) return 0;
            return failf("holds {} images ({}); name one with :NAME or :@INDEX", entries.size(),
                         list());
        }
        if (auto n = parse_source_index(*name_)) {
            if (*n >= entries.size())
                return failf("no image @{} (there are {})", *n, entries.size());
            return *n;
        }
        std::string want = normalize_docker_name(*name_);
        std::optional<size_t> found;
        for (size_t i = 0; i < entries.size(); ++i) {
            bool match = std::any_of(entries[i].repo_tags.begin(), entries[i].repo_tags.end(),
                                     [&](const std::string& t) { return normalize_docker_name(t) == want; });
            if (!match) continue;
            if (found) return failf("more than one image is named '{}'", *name_);
            found = i;
        }
        if (!found) return failf("no image named '{}' (there are: {})", *name_, list());
        return *found;
    }

    // The manifest of the archive's OCI layout whose config is `config_digest`, searching nested
    // indexes; blobs the archive lacks (other platforms of a multi-platform image) are skipped.
    Result<std::optional<Descriptor>> find_oci_manifest_with_config(const std::string& config_digest) {
        Index top = EROS_TRY(read_archive_index());
        std::deque<std::pair<Descriptor, int>> todo;
        for (auto& d : top.manifests) todo.emplace_back(std::move(d), 0);
        while (!todo.empty()) {
            auto [d, depth] = std::move(todo.front());
            todo.pop_front();
            auto bytes = read_small_blob(d);
            if (!bytes) continue;
            if (is_index_media_type(d.media_type)) {
                auto idx = parse_index(*bytes);
                if (!idx || depth >= kMaxIndexDepth) continue;
                for (auto& c : idx->manifests) todo.emplace_back(std::move(c), depth + 1);
            } else if (is_manifest_media_type(d.media_type)) {
                auto m = parse_manifest(*bytes);
                if (m && m->config.digest == config_digest) return d;
            }
        }
        return std::nullopt;
    }

    Result<Index> read_archive_index() const {
        Window w = EROS_TRY(member("index.json"));
        std::string text = EROS_TRY(read_window(w, kMaxJson, "index.json"));
        auto idx = parse_index(text);
        if (!idx) return std::unexpected(idx.error().prefix("index.json"));
        return idx;
    }

    Result<void> select_from_oci_index() {
        Index index = EROS_TRY(read_archive_index());
        if (!name_) {
            oci_top_ = EROS_TRY(resolve_in_index(index, std::nullopt, std::nullopt, "index.json"));
            return {};
        }
        if (auto n = parse_source_index(*name_)) {
            if (*n >= index.manifests.size())
                return failf("no image @{} (there are {})", *n, index.manifests.size());
            oci_top_ = index.manifests[*n];
            return {};
        }
        std::string want = normalize_docker_name(*name_);
        for (const auto& d : index.manifests) {
            auto ref = d.annotations.find(std::string(annotation::kRefName));
            auto full = d.annotations.find("io.containerd.image.name");
            bool match = (ref != d.annotations.end() && ref->second == *name_) ||
                         (full != d.annotations.end() && normalize_docker_name(full->second) == want);
            if (!match) continue;
            if (oci_top_ && oci_top_->digest != d.digest)
                return failf("more than one image is named '{}'", *name_);
            oci_top_ = d;
        }
        if (!oci_top_) return failf("no image named '{}'", *name_);
        return {};
    }

    // Docker's v1.2 layout has no distribution manifest: make a schema 2 one. Layer digests
    // come from the member name (blobs/sha256/...), from the config's diff_ids for uncompressed
    // layers (checked when the layer is read), or from hashing the member.
    Result<void> synthesize(const ArchiveEntry& e, Window config_window, std::string config,
                            const std::string& config_digest) {
        auto diff_ids = config_diff_ids(config);
        if (!diff_ids) return std::unexpected(diff_ids.error().prefix("config " + e.config));
        if (!diff_ids->empty() && diff_ids->size() != e.layers.size())
            return failf("config {} has {} diff_ids for {} layers", e.config,
                         diff_ids->size(), e.layers.size());
        Manifest m;
        m.media_type = media_type::kDockerManifest;
        m.config = Descriptor{.media_type = std::string(media_type::kDockerConfig),
                              .digest = config_digest,
                              .size = static_cast<int64_t>(config_window.size)};
        blobs_[config_digest] = config_window;
        for (size_t i = 0; i < e.layers.size(); ++i) {
            Window w = EROS_TRY(member(e.layers[i]));
            std::array<uint8_t, 4> magic{};
            size_t mn = std::min<uint64_t>(magic.size(), w.size);
            EROS_TRYV(pread_exact(fd_.get(), magic.data(), mn, w.offset));
            std::span<const uint8_t> ms(magic.data(), mn);
            Descriptor d;
            d.size = static_cast<int64_t>(w.size);
            bool compressed = true;
            if (is_gzip(ms)) d.media_type = media_type::kDockerLayerGzip;
            else if (is_zstd(ms)) d.media_type = media_type::kDockerLayerZstd;
            else {
                d.media_type = media_type::kDockerLayer;
                compressed = false;
            }
            if (auto named = digest_from_blob_path(normalize_member_path(e.layers[i])))
                d.digest = *named;
            else if (!compressed && !diff_ids->empty())
                d.digest = (*diff_ids)[i];
            else
                d.digest = digest_string(EROS_TRY(hash_window(w)));
            blobs_[d.digest] = w;
            m.layers.push_back(std::move(d));
        }
        ResolvedManifest rm;
        rm.bytes = serialize_manifest(m);
        rm.desc = Descriptor{.media_type = std::string(media_type::kDockerManifest),
                             .digest = digest_string(sha256(rm.bytes)),
                             .size = static_cast<int64_t>(rm.bytes.size())};
        rm.manifest = std::move(m);
        rm.config_bytes = std::move(config);
        synthesized_ = std::move(rm);
        return {};
    }

    std::string file_;
    std::optional<std::string> name_;
    UniqueFd fd_;
    uint64_t file_size_ = 0;
    MemberMap members_;
    std::map<std::string, Window> blobs_;  // classic layout: digest -> member
    std::optional<Descriptor> oci_top_;
    std::optional<ResolvedManifest> synthesized_;
};

}  // namespace

std::string normalize_docker_name(std::string_view name) {
    std::string_view rest = name;
    std::string digest;
    if (size_t at = rest.find('@'); at != std::string_view::npos) {
        digest = rest.substr(at);
        rest = rest.substr(0, at);
    }
    std::string domain, path;
    if (size_t slash = rest.find('/'); slash != std::string_view::npos) {
        std::string_view first = rest.substr(0, slash);
        if (first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos ||
            first == "localhost") {
            domain = first;
            path = rest.substr(slash + 1);
        }
    }
    if (domain.empty()) {
        domain = "docker.io";
        path = rest;
    }
    if (domain == "index.docker.io") domain = "docker.io";
    if (domain == "docker.io" && path.find('/') == std::string::npos) path = "library/" + path;
    size_t last_slash = path.rfind('/');
    size_t colon = path.find(':', last_slash == std::string::npos ? 0 : last_slash);
    if (colon == std::string::npos && digest.empty()) path += ":latest";
    return domain + "/" + path + digest;
}

Result<std::unique_ptr<ImageSource>> open_docker_archive(const std::string& file,
                                                         std::optional<std::string> name) {
    auto src = std::make_unique<DockerArchiveSource>(file, std::move(name));
    if (auto r = src->load(); !r) {
        r.error().prefix(src->describe());
        return std::unexpected(std::move(r.error()));
    }
    return std::unique_ptr<ImageSource>(std::move(src));
}

}  // namespace erostream
