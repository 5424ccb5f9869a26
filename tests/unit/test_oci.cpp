#include <doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "docker_archive.h"
#include "image_source.h"
#include "oci_layout.h"
#include "oci_types.h"
#include "sha256.h"

using namespace erostream;
namespace fs = std::filesystem;

namespace {

#define REQUIRE_OK(r) REQUIRE_MESSAGE((r).has_value(), ((r).has_value() ? std::string() : (r).error().what()))
#define CHECK_ERR_HAS(r, text)                                                           \
    do {                                                                                 \
        auto&& r_ = (r);                                                                 \
        REQUIRE_FALSE(r_.has_value());                                                   \
        CHECK_MESSAGE(r_.error().what().find(text) != std::string::npos, r_.error().what()); \
    } while (0)

class TempDir {
public:
    TempDir() {
        std::string t = (fs::temp_directory_path() / "erostream-oci-XXXXXX").string();
        REQUIRE(::mkdtemp(t.data()) != nullptr);
        path_ = t;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    const std::string& path() const { return path_; }
    std::string operator/(std::string_view name) const { return path_ + "/" + std::string(name); }

private:
    std::string path_;
};

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}
void spit(const std::string& path, std::string_view bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string digest_of(std::string_view s) { return digest_string(sha256(s)); }

Result<std::string> read_all(ByteStream& s) {
    std::string out;
    char buf[4096];
    for (;;) {
        size_t n = EROS_TRY(s.read(buf, sizeof buf));
        if (n == 0) return out;
        out.append(buf, n);
    }
}

// ---- a hand-written tar writer (ustar, plus GNU long names and PAX paths) ----

void octal(std::string& h, size_t off, size_t width, uint64_t v) {
    std::string s = fmt::format("{:0{}o}", v, width - 1);
    std::memcpy(h.data() + off, s.data(), width - 1);
}

std::string tar_header(std::string_view name, uint64_t size, char type, std::string_view link = "") {
    std::string h(512, '\0');
    std::memcpy(h.data(), name.data(), std::min<size_t>(name.size(), 100));
    octal(h, 100, 8, 0644);
    octal(h, 108, 8, 0);
    octal(h, 116, 8, 0);
    octal(h, 124, 12, size);
    octal(h, 136, 12, 0);
    h[156] = type;
    std::memcpy(h.data() + 157, link.data(), std::min<size_t>(link.size(), 100));
    std::memcpy(h.data() + 257, "ustar\0" "00", 8);
    std::memset(h.data() + 148, ' ', 8);
    unsigned sum = 0;
    for (unsigned char c : h) sum += c;
    std::string cs = fmt::format("{:06o}", sum);
    std::memcpy(h.data() + 148, cs.data(), 6);
    h[154] = '\0';
    return h;
}

void pad(std::string& tar) { tar.append((512 - tar.size() % 512) % 512, '\0'); }

void tar_add(std::string& tar, std::string_view name, std::string_view data, char type = '0',
             std::string_view link = "") {
    tar += tar_header(name, data.size(), type, link);
    tar += data;
    pad(tar);
}
void tar_symlink(std::string& tar, std::string_view name, std::string_view target) {
    tar += tar_header(name, 0, '2', target);
}
void tar_add_gnu_long(std::string& tar, std::string_view name, std::string_view data) {
    std::string n = std::string(name) + '\0';
    tar_add(tar, "././@LongLink", n, 'L');
    tar_add(tar, name.substr(0, 99), data);
}
void tar_add_pax(std::string& tar, std::string_view name, std::string_view data) {
    std::string rec = fmt::format(" path={}\n", name);
    size_t len = rec.size() + 1;
    while (fmt::format("{}{}", len, rec).size() != len) ++len;
    tar_add(tar, "PaxHeaders/x", fmt::format("{}{}", len, rec), 'x');
    tar_add(tar, "truncated-name", data);
}
void tar_end(std::string& tar) { tar.append(1024, '\0'); }

// ---- documents ----

constexpr std::string_view kUmociManifest =
    R"({"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:176039dfbab1b79c3b7be30e693085ca346608e940610cc8c63dc838f31ea9a4","size":292},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:cf5809bcda0c53c93c903234403a398f5f1992ee8d865595e6d3d8f406b125bc","size":102}]})";

constexpr std::string_view kDockerManifestDoc = R"({
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {
      "mediaType": "application/vnd.docker.container.image.v1+json",
      "size": 1469,
      "digest": "sha256:3f57d9401f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741"
   },
   "layers": [
      {
         "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "size": 2479,
         "digest": "sha256:2db29710123e3e53a794f2694094b9b4338aa9ee5c40b930cb8063a1be392c54"
      }
   ]
})";

constexpr std::string_view kDockerList = R"({
  "schemaVersion": 2,
  "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
  "manifests": [
    {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 525,
     "digest": "sha256:7b3ccabffc97de872a30dfd234fd972a66d247c8cfc69b0550f276481852627c",
     "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 527,
     "digest": "sha256:c7b6944911848ce39b44ed660d95fb54d69bbd531de724c7ce6fc9f743c0b861",
     "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}
  ]
})";

std::string hex64(char c) { return std::string(64, c); }
std::string fake_digest(char c) { return "sha256:" + hex64(c); }

}  // namespace

// =============================================================================================
// Types

TEST_CASE("manifests: OCI and Docker schema 2 parse") {
    auto m = parse_manifest(kUmociManifest);
    REQUIRE_OK(m);
    CHECK(m->schema_version == 2);
    CHECK(m->media_type.empty());
    CHECK(m->config.media_type == media_type::kOciConfig);
    CHECK(m->config.size == 292);
    REQUIRE(m->layers.size() == 1);
    CHECK(m->layers[0].digest == "sha256:cf5809bcda0c53c93c903234403a398f5f1992ee8d865595e6d3d8f406b125bc");
    CHECK(*layer_kind(m->layers[0].media_type) == LayerKind::TarGzip);

    auto d = parse_manifest(kDockerManifestDoc);
    REQUIRE_OK(d);
    CHECK(d->media_type == media_type::kDockerManifest);
    CHECK(d->config.media_type == media_type::kDockerConfig);
    CHECK(d->layers[0].size == 2479);
    CHECK(*layer_kind(d->layers[0].media_type) == LayerKind::TarGzip);
}

TEST_CASE("manifests: errors name the field") {
    CHECK_ERR_HAS(parse_manifest("{"), "manifest: invalid JSON");
    CHECK_ERR_HAS(parse_manifest("[]"), "manifest: not a JSON object");
    CHECK_ERR_HAS(parse_manifest(R"({"config":{}})"), "manifest: schemaVersion: missing");
    CHECK_ERR_HAS(parse_manifest(R"({"schemaVersion":1})"), "manifest: schemaVersion: 1 is not supported");
    CHECK_ERR_HAS(parse_manifest(R"({"schemaVersion":2,"layers":[]})"), "manifest: config: missing");

    std::string base = std::string(kUmociManifest);
    auto with_layers = [&](std::string layers) {
        std::string s = base;
        size_t at = s.find("\"layers\":");
        s = s.substr(0, at) + "\"layers\":" + layers + "}";
        return s;
    };
    std::string good = R"({"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:)" +
                       hex64('a') + R"(","size":1})";
    std::string no_digest = R"({"mediaType":"application/vnd.oci.image.layer.v1.tar","size":1})";
    CHECK_ERR_HAS(parse_manifest(with_layers("[" + good + "," + good + "," + no_digest + "]")),
                  "manifest: layers[2].digest: missing");
    CHECK_ERR_HAS(parse_manifest(with_layers(R"([{"mediaType":"x","digest":"sha256:abc","size":1}])")),
                  "manifest: layers[0].digest: digest 'abc' is not 64 hex digits");
    CHECK_ERR_HAS(parse_manifest(with_layers(R"([{"mediaType":"x","digest":"sha512:)" + hex64('a') +
                                             R"(","size":1}])")),
                  "layers[0].digest");
    CHECK_ERR_HAS(parse_manifest(with_layers(R"([{"mediaType":"x","digest":"sha256:)" + hex64('a') +
                                             R"(","size":-1}])")),
                  "manifest: layers[0].size: -1 is negative");
    CHECK_ERR_HAS(parse_manifest(with_layers(R"([{"mediaType":"x","digest":"sha256:)" + hex64('a') +
                                             R"(","size":"1"}])")),
                  "manifest: layers[0].size: not an integer");
    CHECK_ERR_HAS(parse_manifest(with_layers(R"([{"mediaType":"x","digest":"sha256:)" + hex64('a') +
                                             R"(","size":1.5}])")),
                  "manifest: layers[0].size: not an integer");
    CHECK_ERR_HAS(parse_manifest(with_layers(R"([{"digest":"sha256:)" + hex64('a') + R"(","size":1}])")),
                  "manifest: layers[0].mediaType: missing");
    CHECK_ERR_HAS(parse_manifest(with_layers(R"([{"mediaType":"x","digest":"sha256:)" + hex64('a') +
                                             R"(","size":1,"annotations":{"k":1}}])")),
                  "manifest: layers[0].annotations.k: not a string");
    CHECK_ERR_HAS(parse_manifest(with_layers("{}")), "manifest: layers: not an array");
    CHECK_ERR_HAS(parse_manifest(R"({"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:)" +
                                 hex64('a') + R"(","size":1}})"),
                  "manifest: layers: missing");
    // An index is not a manifest.
    CHECK_ERR_HAS(parse_manifest(R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]})"),
                  "is not an image manifest");
    // Sizes past int64 are refused, not wrapped.
    CHECK_ERR_HAS(parse_manifest(with_layers(R"([{"mediaType":"x","digest":"sha256:)" + hex64('a') +
                                             R"(","size":18446744073709551615}])")),
                  "too large");
}

TEST_CASE("indexes: OCI and Docker manifest list parse") {
    auto x = parse_index(kDockerList);
    REQUIRE_OK(x);
    CHECK(x->media_type == media_type::kDockerManifestList);
    REQUIRE(x->manifests.size() == 2);
    REQUIRE(x->manifests[1].platform);
    CHECK(x->manifests[1].platform->str() == "linux/arm64/v8");

    auto empty = parse_index(R"({"schemaVersion":2,"manifests":[]})");
    REQUIRE_OK(empty);
    CHECK(empty->manifests.empty());

    CHECK_ERR_HAS(parse_index(R"({"schemaVersion":2})"), "index: manifests: missing");
    CHECK_ERR_HAS(parse_index(R"({"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"sha256:)" +
                              hex64('1') + R"(","size":3,"platform":{"os":"linux"}}]})"),
                  "index: manifests[0].platform.architecture: missing");
    CHECK_ERR_HAS(parse_index(kUmociManifest.substr(0, 20)), "index: invalid JSON");
    CHECK_ERR_HAS(parse_index(R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]})"),
                  "is not an image index");
}

TEST_CASE("serialization is deterministic, ordered and round-trips") {
    Manifest m;
    m.media_type = media_type::kOciManifest;
    m.artifact_type = media_type::kErostreamArtifact;
    m.config = {.media_type = std::string(media_type::kOciEmpty), .digest = fake_digest('e'), .size = 2};
    m.layers.push_back({.media_type = std::string(media_type::kErostreamMeta),
                        .digest = fake_digest('1'),
                        .size = 4096,
                        .annotations = {{"z", "last"}, {"a", "first"}}});
    m.layers.push_back({.media_type = std::string(media_type::kErostreamData), .digest = fake_digest('2'), .size = 7});
    m.subject = Descriptor{.media_type = std::string(media_type::kOciManifest), .digest = fake_digest('3'), .size = 345};
    m.annotations = {{"org.opencontainers.image.created", "1970-01-01T00:00:00Z"}};

    std::string s = serialize_manifest(m);
    CHECK(s == serialize_manifest(m));
    CHECK(s.find(' ') == std::string::npos);
    CHECK(s.find('\n') == std::string::npos);
    // Key order: schemaVersion, mediaType, artifactType, config, layers, subject, annotations.
    CHECK(s.starts_with(R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.erostream.v1","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:)"));
    CHECK(s.find(R"("annotations":{"a":"first","z":"last"})") != std::string::npos);
    CHECK(s.find("\"subject\"") < s.rfind("\"annotations\""));
    auto back = parse_manifest(s);
    REQUIRE_OK(back);
    CHECK(*back == m);

    // Empty optional fields are left out.
    Manifest bare;
    bare.config = {.media_type = std::string(media_type::kOciConfig), .digest = fake_digest('c'), .size = 10};
    std::string b = serialize_manifest(bare);
    CHECK(b == R"({"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:)" +
                   hex64('c') + R"(","size":10},"layers":[]})");

    // Re-serializing the umoci document gives the same bytes: same order, same omissions.
    auto um = parse_manifest(kUmociManifest);
    REQUIRE_OK(um);
    CHECK(serialize_manifest(*um) == kUmociManifest);

    Index x = *parse_index(kDockerList);
    x.manifests[0].annotations[std::string(annotation::kRefName)] = "t";
    x.manifests[0].platform->os_version = "10.0";
    std::string xs = serialize_index(x);
    CHECK(xs == serialize_index(x));
    CHECK(xs.find(R"("platform":{"architecture":"amd64","os":"linux","os.version":"10.0"})") != std::string::npos);
    auto xb = parse_index(xs);
    REQUIRE_OK(xb);
    CHECK(*xb == x);

    Descriptor d{.media_type = "m", .digest = fake_digest('d'), .size = 1, .urls = {"https://x/y"}, .artifact_type = "a"};
    auto db = parse_descriptor(serialize_descriptor(d));
    REQUIRE_OK(db);
    CHECK(*db == d);
}

TEST_CASE("media type sniffing and layer kinds") {
    CHECK(media_type_of_json(kDockerManifestDoc) == media_type::kDockerManifest);
    CHECK(media_type_of_json(kUmociManifest) == media_type::kOciManifest);
    CHECK(media_type_of_json(R"({"schemaVersion":2,"manifests":[]})") == media_type::kOciIndex);
    CHECK(media_type_of_json("{}") == "");
    CHECK(media_type_of_json("not json") == "");

    CHECK(*layer_kind(media_type::kOciLayer) == LayerKind::Tar);
    CHECK(*layer_kind(media_type::kDockerLayer) == LayerKind::Tar);
    CHECK(*layer_kind(media_type::kOciLayerNondistGzip) == LayerKind::TarGzip);
    CHECK(*layer_kind(media_type::kDockerLayerForeignGzip) == LayerKind::TarGzip);
    CHECK(*layer_kind(media_type::kOciLayerZstd) == LayerKind::TarZstd);
    CHECK(*layer_kind(media_type::kOciLayerNondistZstd) == LayerKind::TarZstd);
    CHECK_ERR_HAS(layer_kind("application/vnd.oci.image.config.v1+json"),
                  "unknown layer media type 'application/vnd.oci.image.config.v1+json'");
    CHECK(is_manifest_media_type(media_type::kDockerManifest));
    CHECK(is_index_media_type(media_type::kDockerManifestList));
    CHECK_FALSE(is_index_media_type(media_type::kOciManifest));
}

TEST_CASE("platforms") {
    auto p = parse_platform("linux/amd64");
    REQUIRE_OK(p);
    CHECK(p->os == "linux");
    CHECK(p->architecture == "amd64");
    CHECK(p->str() == "linux/amd64");
    auto a = parse_platform("linux/arm64/v8");
    REQUIRE_OK(a);
    CHECK(a->variant == "v8");
    CHECK(a->str() == "linux/arm64/v8");
    CHECK(parse_platform("linux/x86_64")->architecture == "amd64");
    CHECK(parse_platform("linux/armhf")->str() == "linux/arm/v7");
    CHECK_ERR_HAS(parse_platform("linux"), "expected os/architecture");
    CHECK_ERR_HAS(parse_platform("linux//v8"), "bad component");
    CHECK_ERR_HAS(parse_platform("a/b/c/d"), "expected os/architecture");
    CHECK_ERR_HAS(parse_platform("linux/am d64"), "bad component");

    Platform arm64{"linux", "arm64", "", ""}, arm64v8{"linux", "arm64", "v8", ""};
    Platform armv6{"linux", "arm", "v6", ""}, armv7{"linux", "arm", "v7", ""}, arm{"linux", "arm", "", ""};
    Platform amd64{"linux", "amd64", "", ""}, win{"windows", "amd64", "", "10.0.17763"};
    CHECK(platform_matches(arm64, arm64v8));
    CHECK(platform_matches(arm64v8, arm64));
    CHECK(platform_matches(armv7, arm));
    CHECK_FALSE(platform_matches(armv7, armv6));
    CHECK(platform_matches(arm, armv6));
    CHECK_FALSE(platform_matches(amd64, arm64));
    CHECK_FALSE(platform_matches(amd64, win));
    CHECK(platform_matches(Platform{"windows", "amd64", "", ""}, win));
    CHECK_FALSE(platform_matches(Platform{"windows", "amd64", "", "10.0.1"}, win));
    CHECK(platform_matches(Platform{"linux", "aarch64", "", ""}, arm64v8));

    Platform h = host_platform();
    CHECK(h.os == "linux");
    CHECK_FALSE(h.architecture.empty());
    CHECK(parse_platform(h.str()).has_value());

    auto pc = platform_of_config(R"({"architecture":"arm64","os":"linux","variant":"v8"})");
    REQUIRE(pc);
    CHECK(pc->str() == "linux/arm64/v8");
    CHECK_FALSE(platform_of_config(R"({"config":{}})"));
    CHECK_FALSE(platform_of_config("]"));
}

TEST_CASE("oci refs") {
    auto r = parse_oci_ref("/tmp/x:latest");
    REQUIRE_OK(r);
    CHECK(r->dir == "/tmp/x");
    CHECK(r->tag == "latest");
    CHECK_FALSE(r->digest);
    r = parse_oci_ref("/tmp/x:a:b");
    REQUIRE_OK(r);
    CHECK(r->tag == "a:b");
    r = parse_oci_ref("rel/dir");
    REQUIRE_OK(r);
    CHECK(r->dir == "rel/dir");
    CHECK_FALSE(r->tag);
    r = parse_oci_ref("/tmp/x@" + fake_digest('a'));
    REQUIRE_OK(r);
    CHECK(r->dir == "/tmp/x");
    CHECK(r->digest == fake_digest('a'));
    CHECK(r->str() == "/tmp/x@" + fake_digest('a'));
    r = parse_oci_ref("/tmp/a@b:tag");  // '@' in DIR with a tag
    REQUIRE_OK(r);
    CHECK(r->dir == "/tmp/a@b");
    CHECK(r->tag == "tag");
    CHECK_ERR_HAS(parse_oci_ref("/tmp/x@sha256:abc"), "not 64 hex");
    CHECK_ERR_HAS(parse_oci_ref("/tmp/x:"), "bad tag");
    CHECK_ERR_HAS(parse_oci_ref("/tmp/x:a b"), "bad tag");
    CHECK_ERR_HAS(parse_oci_ref(":t"), "no directory");
    CHECK_ERR_HAS(open_image_source("dir:/tmp/x"), "unknown transport");
    CHECK_ERR_HAS(open_image_source("oci:/nonexistent/erostream:t"), "oci:/nonexistent/erostream:t: ");
    CHECK_ERR_HAS(open_image_source("docker-archive:/nonexistent/x.tar"), "docker-archive:/nonexistent/x.tar: open");

    CHECK(normalize_docker_name("busybox") == "docker.io/library/busybox:latest");
    CHECK(normalize_docker_name("repo:t") == "docker.io/library/repo:t");
    CHECK(normalize_docker_name("docker.io/library/repo:t") == "docker.io/library/repo:t");
    CHECK(normalize_docker_name("index.docker.io/me/x") == "docker.io/me/x:latest");
    CHECK(normalize_docker_name("localhost:5000/x") == "localhost:5000/x:latest");
    CHECK(normalize_docker_name("quay.io/a/b:1") == "quay.io/a/b:1");
}

// =============================================================================================
// Layout

TEST_CASE("layout: create, put, add, resolve") {
    TempDir t;
    std::string dir = t / "layout";
    CHECK_ERR_HAS(OciLayout::open(t.path()), "no oci-layout file");
    auto l = OciLayout::open_or_create(dir);
    REQUIRE_OK(l);
    CHECK(slurp(dir + "/oci-layout") == R"({"imageLayoutVersion":"1.0.0"})");
    CHECK(fs::is_directory(dir + "/blobs/sha256"));
    auto idx = l->read_index();
    REQUIRE_OK(idx);
    CHECK(idx->manifests.empty());
    CHECK_ERR_HAS(l->resolve(std::nullopt, std::nullopt), "holds no manifest");

    auto b = l->put_blob("hello", "text/plain");
    REQUIRE_OK(b);
    CHECK(b->digest == digest_of("hello"));
    CHECK(b->size == 5);
    CHECK(l->has_blob(b->digest));
    CHECK(l->blob_path(b->digest) == dir + "/blobs/sha256/" + b->digest.substr(7));
    CHECK(slurp(l->blob_path(b->digest)) == "hello");
    struct stat st {};
    REQUIRE(::stat(l->blob_path(b->digest).c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0644);
    CHECK(*l->read_blob(*b) == "hello");
    CHECK_FALSE(l->has_blob(fake_digest('0')));
    CHECK_FALSE(l->has_blob("sha256:../../etc"));
    CHECK_ERR_HAS(l->open_blob("sha256:../x"), "not 64 hex");
    // put_blob again: nothing to write, same answer.
    CHECK(*l->put_blob("hello", "text/plain") == *b);

    // read_blob checks what it reads.
    Descriptor wrong_size = *b;
    wrong_size.size = 4;
    CHECK_ERR_HAS(l->read_blob(wrong_size), "the descriptor says 4");
    CHECK_ERR_HAS(l->read_blob(*b, 3), "more than the 3 allowed");
    spit(l->blob_path(b->digest), "jello");
    CHECK_ERR_HAS(l->read_blob(*b), "digest mismatch");

    auto cfg = *l->put_blob("{}", std::string(media_type::kOciConfig));
    Manifest m;
    m.media_type = media_type::kOciManifest;
    m.config = cfg;
    auto m1 = *l->put_blob(serialize_manifest(m), std::string(media_type::kOciManifest));
    m.annotations["v"] = "2";
    auto m2 = *l->put_blob(serialize_manifest(m), std::string(media_type::kOciManifest));
    m.annotations["v"] = "3";
    auto m3 = *l->put_blob(serialize_manifest(m), std::string(media_type::kOciManifest));

    REQUIRE_OK(l->add_manifest(m1, "a"));
    auto only = l->resolve(std::nullopt, std::nullopt);
    REQUIRE_OK(only);
    CHECK(only->digest == m1.digest);
    CHECK(only->annotations.at(std::string(annotation::kRefName)) == "a");

    REQUIRE_OK(l->add_manifest(m2, "b"));
    REQUIRE_OK(l->add_manifest(m3, std::nullopt));
    REQUIRE_OK(l->add_manifest(m3, std::nullopt));  // already there: not added twice
    CHECK(l->read_index()->manifests.size() == 3);
    CHECK_ERR_HAS(l->resolve(std::nullopt, std::nullopt), "holds 3 manifests ('a', 'b', untagged sha256:");
    CHECK(l->resolve("a", std::nullopt)->digest == m1.digest);
    CHECK(l->resolve("b", std::nullopt)->digest == m2.digest);
    CHECK(l->resolve(std::nullopt, m3.digest)->digest == m3.digest);
    CHECK(l->resolve("a", m1.digest)->digest == m1.digest);
    CHECK_ERR_HAS(l->resolve("a", m2.digest), "tag 'a' is sha256:");
    CHECK_ERR_HAS(l->resolve("zz", std::nullopt), "no manifest tagged 'zz'");
    CHECK_ERR_HAS(l->resolve(std::nullopt, fake_digest('9')), "no manifest sha256:9999");

    // Retagging replaces; the old manifest stays only if another entry names it.
    REQUIRE_OK(l->add_manifest(m2, "a"));
    auto x = *l->read_index();
    CHECK(x.manifests.size() == 3);
    CHECK(l->resolve("a", std::nullopt)->digest == m2.digest);
    // A manifest blob that index.json does not list is still found by digest.
    auto unlisted = l->resolve(std::nullopt, m1.digest);
    REQUIRE_OK(unlisted);
    CHECK(unlisted->media_type == media_type::kOciManifest);
    CHECK(unlisted->size == m1.size);
    CHECK_ERR_HAS(l->resolve(std::nullopt, cfg.digest), "is not a manifest or index");

    // index.json is written whole: it parses and is the canonical serialization.
    CHECK(slurp(dir + "/index.json") == serialize_index(*l->read_index()));
    // No temporary files are left behind.
    for (const auto& e : fs::directory_iterator(dir)) CHECK_FALSE(e.path().filename().string().starts_with("."));

    // open() of the created layout works; a layout with a foreign version does not.
    REQUIRE_OK(OciLayout::open(dir));
    spit(dir + "/oci-layout", R"({"imageLayoutVersion":"2.0.0"})");
    CHECK_ERR_HAS(OciLayout::open(dir), "imageLayoutVersion '2.0.0' is not supported");
}

TEST_CASE("layout: blob writer commit and abandon") {
    TempDir t;
    auto l = OciLayout::open_or_create(t.path());
    REQUIRE_OK(l);
    auto count_files = [&] {
        size_t n = 0;
        for (const auto& e : fs::recursive_directory_iterator(t.path())) n += e.is_regular_file();
        return n;
    };
    size_t base = count_files();  // oci-layout, index.json
    {
        auto w = l->new_blob();
        REQUIRE_OK(w);
        REQUIRE_OK(w->write("abc", 3));
        CHECK(count_files() == base + 1);
        // Abandoned: destroyed without commit.
    }
    CHECK(count_files() == base);

    auto w = l->new_blob();
    REQUIRE_OK(w);
    std::string big(300000, 'x');
    REQUIRE_OK(w->write(big.data(), big.size()));
    REQUIRE_OK(w->write("tail"));
    CHECK(w->size() == big.size() + 4);
    char first = 0;
    CHECK(::pread(w->fd(), &first, 1, 0) == 1);
    CHECK(first == 'x');
    BlobWriter moved = std::move(*w);
    auto d = moved.commit("application/octet-stream");
    REQUIRE_OK(d);
    CHECK(d->digest == digest_of(big + "tail"));
    CHECK(d->size == static_cast<int64_t>(big.size() + 4));
    CHECK(d->media_type == "application/octet-stream");
    CHECK(slurp(l->blob_path(d->digest)) == big + "tail");
    CHECK(count_files() == base + 1);
    CHECK_ERR_HAS(moved.commit("x"), "committed twice");
    CHECK_ERR_HAS(moved.write("y", 1), "write after commit");
}

// =============================================================================================
// OCI image source

namespace {

struct BuiltImage {
    Descriptor manifest, layer, config;
    std::string layer_bytes;
};

// One image in `l`: a "layer" (any bytes: the source does not look inside) and a config.
BuiltImage put_image(const OciLayout& l, std::string_view arch, std::string layer_bytes,
                     bool docker = false) {
    BuiltImage b;
    b.layer_bytes = std::move(layer_bytes);
    b.layer = *l.put_blob(b.layer_bytes, std::string(docker ? media_type::kDockerLayerGzip : media_type::kOciLayerGzip));
    std::string cfg = fmt::format(R"({{"architecture":"{}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}})", arch);
    b.config = *l.put_blob(cfg, std::string(docker ? media_type::kDockerConfig : media_type::kOciConfig));
    Manifest m;
    m.media_type = docker ? media_type::kDockerManifest : media_type::kOciManifest;
    m.config = b.config;
    m.layers = {b.layer};
    b.manifest = *l.put_blob(serialize_manifest(m), m.media_type);
    return b;
}

}  // namespace

TEST_CASE("oci source: single manifest, blobs verified") {
    TempDir t;
    auto l = *OciLayout::open_or_create(t.path());
    auto img = put_image(l, "amd64", "layer-bytes");
    REQUIRE_OK(l.add_manifest(img.manifest, "t"));

    auto src = open_image_source("oci:" + t.path() + ":t");
    REQUIRE_OK(src);
    CHECK((*src)->describe() == "oci:" + t.path() + ":t");
    auto ms = (*src)->manifests(std::nullopt);
    REQUIRE_OK(ms);
    REQUIRE(ms->size() == 1);
    const auto& rm = (*ms)[0];
    CHECK(rm.desc.digest == img.manifest.digest);
    CHECK(digest_of(rm.bytes) == img.manifest.digest);
    CHECK(rm.manifest.layers.at(0) == img.layer);
    CHECK(digest_of(rm.config_bytes) == img.config.digest);

    auto s = (*src)->open_blob(img.layer);
    REQUIRE_OK(s);
    auto bytes = read_all(**s);
    REQUIRE_OK(bytes);
    CHECK(*bytes == "layer-bytes");
    // Reading past the verified end stays at the end.
    char c;
    CHECK(*(*s)->read(&c, 1) == 0);

    // The same source by digest, and with no tag (one manifest in the layout).
    REQUIRE_OK(open_image_source("oci:" + t.path() + "@" + img.manifest.digest).value()->manifests(std::nullopt));
    REQUIRE_OK(open_image_source("oci:" + t.path()).value()->manifests(std::nullopt));
    CHECK_ERR_HAS(open_image_source("oci:" + t.path() + ":nope").value()->manifests(std::nullopt),
                  "no manifest tagged 'nope'");

    // Asking for another platform than the config's is an error for a single manifest.
    CHECK_ERR_HAS((*src)->manifests(Platform{"linux", "arm64", "", ""}),
                  "the image is for linux/amd64, not linux/arm64");
    REQUIRE_OK((*src)->manifests(Platform{"linux", "amd64", "", ""}));

    // A corrupted blob fails at the end of its stream, naming it.
    spit(l.blob_path(img.layer.digest), "layer-bytez");
    auto bad = (*src)->open_blob(img.layer);
    REQUIRE_OK(bad);
    CHECK_ERR_HAS(read_all(**bad), "layer " + img.layer.digest + ": digest mismatch");
    spit(l.blob_path(img.layer.digest), "layer-bytes+more");
    bad = (*src)->open_blob(img.layer);
    REQUIRE_OK(bad);
    CHECK_ERR_HAS(read_all(**bad), "size mismatch: expected 11 bytes, got more");
    spit(l.blob_path(img.layer.digest), "layer");
    bad = (*src)->open_blob(img.layer);
    REQUIRE_OK(bad);
    CHECK_ERR_HAS(read_all(**bad), "size mismatch: expected 11 bytes, got 5");
    Descriptor missing = img.layer;
    missing.digest = fake_digest('7');
    CHECK_ERR_HAS((*src)->open_blob(missing), "open");
    // A corrupted config is caught when the manifests are resolved.
    spit(l.blob_path(img.config.digest), std::string(img.config.size, ' '));
    CHECK_ERR_HAS((*src)->manifests(std::nullopt), "config " + img.config.digest);
}

TEST_CASE("oci source: index with platforms") {
    TempDir t;
    auto l = *OciLayout::open_or_create(t.path());
    auto amd = put_image(l, "amd64", "amd");
    auto arm = put_image(l, "arm64", "arm");
    auto noplat = put_image(l, "s390x", "s390x");
    Index x;
    x.media_type = media_type::kOciIndex;
    Descriptor a = amd.manifest, b = arm.manifest, c = noplat.manifest;
    a.platform = Platform{"linux", "amd64", "", ""};
    b.platform = Platform{"linux", "arm64", "v8", ""};
    // An attestation manifest, as buildkit writes them: skipped.
    Descriptor att = amd.manifest;
    att.platform = Platform{"unknown", "unknown", "", ""};
    att.annotations["vnd.docker.reference.type"] = "attestation-manifest";
    x.manifests = {a, b, c, att};
    auto xd = *l.put_blob(serialize_index(x), std::string(media_type::kOciIndex));
    REQUIRE_OK(l.add_manifest(xd, "multi"));

    auto src = *open_image_source("oci:" + t.path() + ":multi");
    auto all = src->manifests(std::nullopt);
    REQUIRE_OK(all);
    REQUIRE(all->size() == 3);
    CHECK((*all)[0].desc.platform->str() == "linux/amd64");
    CHECK((*all)[1].desc.digest == arm.manifest.digest);
    CHECK_FALSE((*all)[2].desc.platform);

    auto arm_only = src->manifests(*parse_platform("linux/arm64"));
    REQUIRE_OK(arm_only);
    REQUIRE(arm_only->size() == 1);
    CHECK(arm_only->at(0).desc.digest == arm.manifest.digest);
    // No platform in the descriptor: the config decides.
    auto s390 = src->manifests(*parse_platform("linux/s390x"));
    REQUIRE_OK(s390);
    REQUIRE(s390->size() == 1);
    CHECK(s390->at(0).desc.digest == noplat.manifest.digest);
    CHECK_ERR_HAS(src->manifests(*parse_platform("linux/riscv64")),
                  "no manifest for platform linux/riscv64 (there are: linux/amd64, linux/arm64/v8, linux/s390x)");

    // A platform manifest addressed by digest, although index.json lists only the index.
    auto one = open_image_source("oci:" + t.path() + "@" + arm.manifest.digest);
    REQUIRE_OK(one);
    auto r = (*one)->manifests(std::nullopt);
    REQUIRE_OK(r);
    CHECK(r->at(0).manifest.layers.at(0).digest == arm.layer.digest);
}

// =============================================================================================
// docker-archive

namespace {

std::string image_config(std::string_view arch, const std::vector<std::string>& diff_ids) {
    std::string ids;
    for (const auto& d : diff_ids) ids += (ids.empty() ? "\"" : ",\"") + d + "\"";
    return fmt::format(R"({{"architecture":"{}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}})",
                       arch, ids);
}

std::string fake_tar_layer(std::string_view file, std::string_view content) {
    std::string t;
    tar_add(t, file, content);
    tar_end(t);
    return t;
}

}  // namespace

TEST_CASE("docker-archive: classic v1.2 layout") {
    TempDir t;
    std::string l1 = fake_tar_layer("a.txt", "first layer");
    std::string l2 = fake_tar_layer("b.txt", "second layer");
    std::string l3("\x1f\x8b\x08\x00 pretend gzip", 17);  // sniffed, never inflated here
    std::string cfg = image_config("amd64", {digest_of(l1), digest_of(l2), fake_digest('3')});
    std::string cfg_name = digest_of(cfg).substr(7) + ".json";
    std::string other_cfg = image_config("arm64", {digest_of(l1)});
    std::string l2_name = std::string(60, 'd') + "/layer-with-a-very-long-directory-name-to-need-gnu-long-names/layer.tar";
    std::string manifest_json = fmt::format(
        R"([{{"Config":"{}","RepoTags":["docker.io/library/repo:t"],"Layers":["aaaa/layer.tar","{}","cccc/layer.tar"]}},)"
        R"({{"Config":"other.json","RepoTags":["other:1","other:latest"],"Layers":["bbbb.tar"]}}])",
        cfg_name, l2_name);

    std::string tar;
    tar_add(tar, "bbbb.tar", l1);
    tar_add(tar, "aaaa/VERSION", "1.0");
    tar_symlink(tar, "aaaa/layer.tar", "../bbbb.tar");
    tar_add_gnu_long(tar, l2_name, l2);
    tar_add_pax(tar, "cccc/layer.tar", l3);
    tar_add(tar, cfg_name, cfg);
    tar_add(tar, "other.json", other_cfg);
    tar_add(tar, "manifest.json", manifest_json);
    tar_end(tar);
    std::string file = t / "img.tar";
    spit(file, tar);

    auto src = open_image_source("docker-archive:" + file + ":repo:t");
    REQUIRE_OK(src);
    CHECK((*src)->describe() == "docker-archive:" + file + ":repo:t");
    auto ms = (*src)->manifests(std::nullopt);
    REQUIRE_OK(ms);
    REQUIRE(ms->size() == 1);
    const ResolvedManifest& rm = ms->at(0);
    CHECK(rm.desc.media_type == media_type::kDockerManifest);
    CHECK(rm.desc.digest == digest_of(rm.bytes));
    CHECK(rm.desc.size == static_cast<int64_t>(rm.bytes.size()));
    CHECK(rm.config_bytes == cfg);
    CHECK(rm.manifest.config.digest == digest_of(cfg));
    CHECK(rm.manifest.config.media_type == media_type::kDockerConfig);
    REQUIRE(rm.manifest.layers.size() == 3);
    CHECK(rm.manifest.layers[0].media_type == media_type::kDockerLayer);
    CHECK(rm.manifest.layers[0].digest == digest_of(l1));
    CHECK(rm.manifest.layers[1].digest == digest_of(l2));
    CHECK(rm.manifest.layers[1].size == static_cast<int64_t>(l2.size()));
    CHECK(rm.manifest.layers[2].media_type == media_type::kDockerLayerGzip);
    CHECK(rm.manifest.layers[2].digest == digest_of(l3));  // hashed, not the diff_id
    CHECK(*parse_manifest(rm.bytes) == rm.manifest);

    for (size_t i = 0; i < 3; ++i) {
        auto s = (*src)->open_blob(rm.manifest.layers[i]);
        REQUIRE_OK(s);
        auto b = read_all(**s);
        REQUIRE_OK(b);
        CHECK(*b == (i == 0 ? l1 : i == 1 ? l2 : l3));
    }
    auto cs = (*src)->open_blob(rm.manifest.config);
    REQUIRE_OK(cs);
    CHECK(*read_all(**cs) == cfg);

    // Names and indexes select the image; without one, two images are an error.
    auto other = open_image_source("docker-archive:" + file + ":other");
    REQUIRE_OK(other);
    auto oms = (*other)->manifests(std::nullopt);
    REQUIRE_OK(oms);
    CHECK(oms->at(0).config_bytes == other_cfg);
    CHECK_ERR_HAS((*other)->manifests(*parse_platform("linux/amd64")), "the image is for linux/arm64");
    REQUIRE_OK(open_image_source("docker-archive:" + file + ":docker.io/library/other:1"));
    auto by_index = open_image_source("docker-archive:" + file + ":@1");
    REQUIRE_OK(by_index);
    CHECK((*by_index)->manifests(std::nullopt)->at(0).config_bytes == other_cfg);
    CHECK_ERR_HAS(open_image_source("docker-archive:" + file + ":@2"), "no image @2");
    CHECK_ERR_HAS(open_image_source("docker-archive:" + file),
                  "holds 2 images (@0 docker.io/library/repo:t, @1 other:1 other:latest)");
    CHECK_ERR_HAS(open_image_source("docker-archive:" + file + ":nope"), "no image named 'nope'");
}

TEST_CASE("docker-archive: wrong diff_id and damaged archives") {
    TempDir t;
    std::string l1 = fake_tar_layer("a.txt", "content");
    std::string cfg = image_config("amd64", {fake_digest('f')});  // lies about the layer
    std::string tar;
    tar_add(tar, "l.tar", l1);
    tar_add(tar, "c.json", cfg);
    tar_add(tar, "manifest.json", R"([{"Config":"c.json","RepoTags":null,"Layers":["l.tar"]}])");
    tar_end(tar);
    std::string file = t / "img.tar";
    spit(file, tar);

    auto src = open_image_source("docker-archive:" + file);
    REQUIRE_OK(src);
    auto ms = (*src)->manifests(std::nullopt);
    REQUIRE_OK(ms);
    auto s = (*src)->open_blob(ms->at(0).manifest.layers.at(0));
    REQUIRE_OK(s);
    CHECK_ERR_HAS(read_all(**s), "layer " + fake_digest('f') + ": digest mismatch");

    // Truncated archive: a member runs past the end.
    spit(file, tar.substr(0, 512 + 100));
    CHECK_ERR_HAS(open_image_source("docker-archive:" + file), "run past the end");
    // A flipped header byte breaks the checksum.
    std::string bad = tar;
    bad[10] ^= 1;
    spit(file, bad);
    CHECK_ERR_HAS(open_image_source("docker-archive:" + file), "tar header at offset 0: bad header checksum");
    // Compressed archives are refused with a reason.
    spit(file, std::string("\x1f\x8b\x08\x00rest", 8));
    CHECK_ERR_HAS(open_image_source("docker-archive:" + file), "compressed");
    // No manifest.json and no OCI layout.
    std::string plain;
    tar_add(plain, "x", "y");
    tar_end(plain);
    spit(file, plain);
    CHECK_ERR_HAS(open_image_source("docker-archive:" + file), "neither manifest.json nor an OCI layout");
    // manifest.json naming a member that is not there.
    std::string missing;
    tar_add(missing, "manifest.json", R"([{"Config":"c.json","RepoTags":[],"Layers":["l.tar"]}])");
    tar_end(missing);
    spit(file, missing);
    CHECK_ERR_HAS(open_image_source("docker-archive:" + file), "no member 'c.json'");
    std::string badjson;
    tar_add(badjson, "manifest.json", R"([{"Config":"c.json","Layers":[3]}])");
    tar_end(badjson);
    spit(file, badjson);
    CHECK_ERR_HAS(open_image_source("docker-archive:" + file), "manifest.json: [0].Layers[0]: not a string");
}

TEST_CASE("docker-archive: Docker 25 layout with an OCI layout inside") {
    TempDir t;
    std::string layer = fake_tar_layer("f", "oci-in-docker");
    std::string cfg = image_config("amd64", {digest_of(layer)});
    Manifest m;
    m.media_type = media_type::kOciManifest;
    m.config = {.media_type = std::string(media_type::kOciConfig), .digest = digest_of(cfg), .size = static_cast<int64_t>(cfg.size())};
    m.layers = {{.media_type = std::string(media_type::kOciLayer), .digest = digest_of(layer), .size = static_cast<int64_t>(layer.size())}};
    std::string mbytes = serialize_manifest(m);
    Index x;
    x.media_type = media_type::kOciIndex;
    Descriptor md{.media_type = std::string(media_type::kOciManifest), .digest = digest_of(mbytes),
                  .size = static_cast<int64_t>(mbytes.size())};
    md.annotations["io.containerd.image.name"] = "docker.io/library/busybox:latest";
    md.annotations[std::string(annotation::kRefName)] = "latest";
    x.manifests = {md};
    auto blob = [](const std::string& b) { return "blobs/sha256/" + digest_of(b).substr(7); };

    std::string tar;
    tar_add(tar, "blobs/", "", '5');
    tar_add(tar, blob(layer), layer);
    tar_add(tar, blob(cfg), cfg);
    tar_add(tar, blob(mbytes), mbytes);
    tar_add(tar, "index.json", serialize_index(x));
    tar_add(tar, "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
    std::string with_manifest_json = tar;
    tar_add(with_manifest_json, "manifest.json",
            fmt::format(R"([{{"Config":"{}","RepoTags":["busybox:latest"],"Layers":["{}"]}}])", blob(cfg), blob(layer)));
    tar_end(with_manifest_json);
    tar_end(tar);

    std::string file = t / "d25.tar";
    spit(file, with_manifest_json);
    auto src = open_image_source("docker-archive:" + file + ":busybox");
    REQUIRE_OK(src);
    auto ms = (*src)->manifests(std::nullopt);
    REQUIRE_OK(ms);
    REQUIRE(ms->size() == 1);
    // The archive's real manifest, not a synthesized one.
    CHECK(ms->at(0).desc.digest == md.digest);
    CHECK(ms->at(0).bytes == mbytes);
    CHECK(ms->at(0).config_bytes == cfg);
    auto s = (*src)->open_blob(ms->at(0).manifest.layers.at(0));
    REQUIRE_OK(s);
    CHECK(*read_all(**s) == layer);

    // Only the OCI layout (an oci-archive, or a docker save without manifest.json).
    std::string oci_only = t / "oci.tar";
    spit(oci_only, tar);
    for (std::string name : {"", ":latest", ":busybox:latest", ":docker.io/library/busybox", ":@0"}) {
        auto o = open_image_source("docker-archive:" + oci_only + name);
        REQUIRE_OK(o);
        auto om = (*o)->manifests(std::nullopt);
        REQUIRE_OK(om);
        CHECK(om->at(0).desc.digest == md.digest);
    }
    CHECK_ERR_HAS(open_image_source("docker-archive:" + oci_only + ":nope"), "no image named 'nope'");
}

// =============================================================================================
// Real tools: umoci writes the layout, skopeo writes the docker archive.

namespace {

void run(const std::string& cmd) {
    INFO("command: " << cmd);
    int rc = std::system((cmd + " >/dev/null").c_str());
    REQUIRE(rc == 0);
}

}  // namespace

TEST_CASE("umoci layout and skopeo docker-archive open through image sources") {
    TempDir t;
    std::string layout = t / "layout", archive = t / "img.tar";
    spit(t / "hello.txt", "hello from umoci\n");
    run("umoci init --layout " + layout);
    run("umoci new --image " + layout + ":t");
    run("umoci insert --rootless --image " + layout + ":t " + (t / "hello.txt") + " /hello.txt");
    run("skopeo copy oci:" + layout + ":t docker-archive:" + archive + ":repo:t");

    auto oci = open_image_source("oci:" + layout + ":t");
    REQUIRE_OK(oci);
    auto om = (*oci)->manifests(host_platform());
    REQUIRE_OK(om);
    REQUIRE(om->size() == 1);
    const auto& o = om->at(0);
    REQUIRE(o.manifest.layers.size() == 1);
    CHECK(*layer_kind(o.manifest.layers[0].media_type) == LayerKind::TarGzip);
    auto os = (*oci)->open_blob(o.manifest.layers[0]);
    REQUIRE_OK(os);
    auto gz = read_all(**os);
    REQUIRE_OK(gz);
    CHECK(gz->size() == static_cast<size_t>(o.manifest.layers[0].size));
    CHECK(static_cast<unsigned char>((*gz)[0]) == 0x1f);

    auto da = open_image_source("docker-archive:" + archive + ":repo:t");
    REQUIRE_OK(da);
    auto dm = (*da)->manifests(host_platform());
    REQUIRE_OK(dm);
    REQUIRE(dm->size() == 1);
    const auto& d = dm->at(0);
    // skopeo keeps the config byte for byte and stores the layer uncompressed: its digest is the
    // config's diff_id.
    CHECK(d.config_bytes == o.config_bytes);
    REQUIRE(d.manifest.layers.size() == 1);
    CHECK(d.manifest.layers[0].media_type == media_type::kDockerLayer);
    CHECK(o.config_bytes.find(d.manifest.layers[0].digest) != std::string::npos);
    auto ds = (*da)->open_blob(d.manifest.layers[0]);
    REQUIRE_OK(ds);
    auto tarbytes = read_all(**ds);
    REQUIRE_OK(tarbytes);
    CHECK(tarbytes->find("hello from umoci") != std::string::npos);
    // Single image: no name needed.
    REQUIRE_OK(open_image_source("docker-archive:" + archive).value()->manifests(std::nullopt));

    // And the other way: what we write, skopeo reads.
    auto l = *OciLayout::open(layout);
    REQUIRE_OK(l.add_manifest(o.desc, "copy"));
    run("skopeo inspect --raw oci:" + layout + ":copy");
    run("skopeo copy oci:" + layout + ":copy oci:" + (t / "layout2") + ":x");
    REQUIRE_OK(open_image_source("oci:" + (t / "layout2") + ":x").value()->manifests(std::nullopt));
}

// =============================================================================================
// Untrusted input: mutated documents and archives give errors, never crashes or exceptions.

TEST_CASE("parsers survive mutated and hostile input") {
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    auto next = [&] {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        return seed;
    };
    const std::string docs[] = {std::string(kUmociManifest), std::string(kDockerManifestDoc),
                                std::string(kDockerList)};
    size_t ok = 0;
    for (int i = 0; i < 3000; ++i) {
        std::string s = docs[i % 3];
        for (int k = 0, n = 1 + next() % 3; k < n; ++k) s[next() % s.size()] = static_cast<char>(next());
        ok += parse_manifest(s).has_value() + parse_index(s).has_value();
        (void)media_type_of_json(s);
        (void)platform_of_config(s);
    }
    CHECK(ok < 3000);  // most mutations must be caught

    std::string deep(200000, '[');
    CHECK_ERR_HAS(parse_manifest(deep), "invalid JSON");
    CHECK_ERR_HAS(parse_manifest(deep + std::string(200000, ']')), "not a JSON object");

    TempDir t;
    std::string layer = fake_tar_layer("a", "b");
    std::string cfg = image_config("amd64", {digest_of(layer)});
    std::string tar;
    tar_add(tar, "l/layer.tar", layer);
    tar_add(tar, "c.json", cfg);
    tar_add_pax(tar, "manifest.json", R"([{"Config":"c.json","RepoTags":["x:y"],"Layers":["l/layer.tar"]}])");
    tar_end(tar);
    std::string file = t / "m.tar";
    size_t opened = 0;
    for (int i = 0; i < 400; ++i) {
        std::string s = tar;
        for (int k = 0, n = 1 + next() % 2; k < n; ++k) {
            size_t at = next() % s.size();
            // Aim at headers and the JSON most of the time.
            if (next() % 4 != 0) at = (next() % (s.size() / 512)) * 512 + next() % 512 % 300;
            s[at] = static_cast<char>(next());
        }
        spit(file, s);
        auto src = open_image_source("docker-archive:" + file);
        if (!src) continue;
        ++opened;
        auto ms = (*src)->manifests(std::nullopt);
        if (!ms) continue;
        for (const auto& l : ms->at(0).manifest.layers) {
            auto st = (*src)->open_blob(l);
            if (st) (void)read_all(**st);
        }
    }
    CHECK(opened < 400);
}
