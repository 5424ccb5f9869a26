#include <doctest.h>

#include <filesystem>
#include <fstream>

#include "registry/docker_config.h"
#include "registry/credentials.h"
#include "registry/hosts_config.h"

using namespace erostream;

TEST_CASE("docker config.json: auths, identity tokens, helpers") {
    auto cfg = parse_docker_config(R"({
      "auths": {
        "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
        "localhost:5000": {"username": "u", "password": "p"},
        "http://reg.example:8080/v2/": {"identitytoken": "rt"},
        "myacr.azurecr.io": {"auth": "MDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwOnJlZnJlc2g="},
        "empty.example": {}
      },
      "credsStore": "desktop",
      "credHelpers": {"gcr.io": "gcloud"}
    })");
    REQUIRE(cfg);
    auto hub = lookup_credentials(*cfg, "docker.io");
    CHECK(hub.kind == CredentialSource::Inline);
    CHECK(hub.cred.username == "user");
    CHECK(hub.cred.password == "pass");
    auto local = lookup_credentials(*cfg, "localhost:5000");
    CHECK(local.cred.username == "u");
    CHECK(lookup_credentials(*cfg, "reg.example:8080").cred.identity_token == "rt");
    auto acr = lookup_credentials(*cfg, "myacr.azurecr.io");
    CHECK(acr.cred.username == kAcrRefreshTokenUser);
    CHECK(acr.cred.identity_token == "refresh");
    auto gcr = lookup_credentials(*cfg, "gcr.io");
    CHECK(gcr.kind == CredentialSource::Helper);
    CHECK(gcr.helper == "gcloud");
    // An empty auths entry defers to the store.
    auto empty = lookup_credentials(*cfg, "empty.example");
    CHECK(empty.kind == CredentialSource::Helper);
    CHECK(empty.helper == "desktop");

    auto none = parse_docker_config("{}");
    REQUIRE(none);
    CHECK(lookup_credentials(*none, "x.io").kind == CredentialSource::None);

    CHECK(normalize_registry_host("https://index.docker.io/v1/") == "docker.io");
    CHECK(normalize_registry_host("HTTP://Host:5000/v2") == "host:5000");
    CHECK(credential_helper_server("docker.io") == "https://index.docker.io/v1/");
    CHECK(credential_helper_server("localhost:5000") == "localhost:5000");
}

TEST_CASE("docker config.json: errors never quote secrets") {
    auto bad = parse_docker_config(R"({"auths": {"h": {"auth": "c2VjcmV0"}}, oops})");
    REQUIRE(!bad);
    CHECK(bad.error().message.find("c2VjcmV0") == std::string::npos);
    auto notb64 = parse_docker_config(R"({"auths": {"h": {"auth": "$$secret$$"}}})");
    REQUIRE(!notb64);
    CHECK(notb64.error().message.find("secret") == std::string::npos);
    CHECK(!parse_docker_config(R"({"auths": {"h": {"auth": "bm9jb2xvbg=="}}})"));  // "nocolon"
    CHECK(!parse_docker_config(R"({"auths": []})"));
    CHECK(!parse_docker_config(R"({"credHelpers": {"h": "../../bin/sh"}})"));
    CHECK(!parse_docker_config(R"([1])"));
}

TEST_CASE("credential helper output") {
    auto c = parse_helper_output(R"({"ServerURL":"x","Username":"u","Secret":"s"})");
    REQUIRE(c);
    CHECK(c->username == "u");
    CHECK(c->password == "s");
    c = parse_helper_output(R"({"Username":"<token>","Secret":"idt"})");
    REQUIRE(c);
    CHECK(c->identity_token == "idt");
    CHECK(!c->has_basic());
    CHECK(!parse_helper_output("nope"));
}

TEST_CASE("credential store: files in order, AAD token from the environment") {
    namespace fs = std::filesystem;
    fs::path dir = fs::temp_directory_path() / ("eros-cred-test-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::ofstream(dir / "a.json") << R"({"auths": {"one.example": {"username": "a", "password": "1"}}})";
    std::ofstream(dir / "b.json") << R"({"auths": {"one.example": {"username": "b", "password": "2"},
                                                 "two.example": {"username": "b", "password": "2"}}})";
    CredentialOptions o;
    o.auth_files = {(dir / "missing.json").string(), (dir / "a.json").string(), (dir / "b.json").string()};
    o.getenv = [](const char* n) -> const char* {
        return std::string_view(n) == "EROSTREAM_AAD_TOKEN" ? "aad-token" : nullptr;
    };
    CredentialStore store(o);
    CHECK(store.lookup("one.example")->username == "a");
    CHECK(store.lookup("two.example")->username == "b");
    auto three = store.lookup("three.example");
    REQUIRE(three);
    CHECK(three->aad_access_token == "aad-token");
    CHECK(!three->has_basic());
    fs::remove_all(dir);

    auto files = default_auth_files([](const char* n) -> const char* {
        std::string_view s(n);
        if (s == "DOCKER_CONFIG") return "/cfg";
        if (s == "REGISTRY_AUTH_FILE") return "/auth.json";
        return nullptr;
    });
    REQUIRE(files.size() == 2);
    CHECK(files[0] == "/auth.json");
    CHECK(files[1] == "/cfg/config.json");
}

TEST_CASE("hosts.toml: mirrors in file order, then the server") {
    auto eps = parse_hosts_toml(R"(
server = "https://registry-1.docker.io"

[host."https://zz-mirror.example"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  ca = "certs/mirror.pem"
  [host."https://zz-mirror.example".header]
    x-custom = "1"
    x-multi = ["a", "b"]

[host."http://aa-mirror.example:5000/cache"]
  capabilities = ["pull"]
  override_path = true
)",
                                "docker.io", "/etc/containerd/certs.d/docker.io");
    REQUIRE(eps);
    REQUIRE(eps->size() == 3);
    const auto& m1 = (*eps)[0];
    CHECK(m1.api.origin() == "https://zz-mirror.example");
    CHECK(m1.api.path == "/v2");
    CHECK(m1.mirror);
    CHECK(m1.capabilities == (kCapPull | kCapResolve));
    CHECK(m1.skip_verify);
    REQUIRE(m1.ca_files.size() == 1);
    CHECK(m1.ca_files[0] == "/etc/containerd/certs.d/docker.io/certs/mirror.pem");
    CHECK(m1.headers.get("x-custom") == "1");
    CHECK(m1.headers.get_all("x-multi").size() == 2);
    const auto& m2 = (*eps)[1];
    CHECK(m2.api.origin() == "http://aa-mirror.example:5000");
    CHECK(m2.api.path == "/cache");
    CHECK(m2.capabilities == kCapPull);
    CHECK(m2.url_for("library/x/blobs/sha256:1") == "http://aa-mirror.example:5000/cache/library/x/blobs/sha256:1");
    const auto& server = (*eps)[2];
    CHECK(!server.mirror);
    CHECK(server.api.origin() == "https://registry-1.docker.io");
    CHECK(server.capabilities == kCapAll);
    CHECK(server.url_for("library/x/manifests/1") == "https://registry-1.docker.io/v2/library/x/manifests/1");
}

TEST_CASE("hosts.toml: defaults and errors") {
    auto eps = parse_hosts_toml("", "localhost:5000", "");
    REQUIRE(eps);
    REQUIRE(eps->size() == 1);
    CHECK((*eps)[0].api.origin() == "http://localhost:5000");
    eps = parse_hosts_toml("[host.\"mirror:5000\"]\n", "reg.example", "");
    REQUIRE(eps);
    CHECK((*eps)[0].api.origin() == "https://mirror:5000");
    CHECK((*eps)[1].api.origin() == "https://reg.example");
    CHECK(!parse_hosts_toml("[host.\"https://m\"]\ncapabilities = [\"fly\"]\n", "r", ""));
    CHECK(!parse_hosts_toml("skip_verify = \"yes\"\n", "r", ""));
    auto syn = parse_hosts_toml("[host.\"https://m\"]\nheader = { authorization = \"Bearer s3cr3t\" \n", "r", "");
    REQUIRE(!syn);
    CHECK(syn.error().message.find("s3cr3t") == std::string::npos);
    CHECK(!parse_hosts_toml("server = \"https://x/?q=1\"\n", "r", ""));

    auto def = default_endpoint("docker.io");
    CHECK(def.api.origin() == "https://registry-1.docker.io");
    CHECK(default_endpoint("127.0.0.1:5000").api.scheme == "http");
    CHECK(default_endpoint("[::1]:5000").api.scheme == "http");
}

TEST_CASE("resolve_endpoints: per-host dir, _default, --insecure, --ca-file") {
    namespace fs = std::filesystem;
    fs::path dir = fs::temp_directory_path() / ("eros-hosts-test-" + std::to_string(::getpid()));
    fs::create_directories(dir / "reg.example:5000");
    fs::create_directories(dir / "_default");
    std::ofstream(dir / "reg.example:5000" / "hosts.toml") << "[host.\"http://127.0.0.1:6000\"]\n";
    std::ofstream(dir / "_default" / "hosts.toml") << "[host.\"https://cache.local\"]\ncapabilities=[\"pull\"]\n";
    EndpointOptions o;
    o.hosts_dir = dir.string();
    auto a = resolve_endpoints("reg.example:5000", o);
    REQUIRE(a);
    REQUIRE(a->size() == 2);
    CHECK((*a)[0].api.origin() == "http://127.0.0.1:6000");
    auto b = resolve_endpoints("other.example", o);
    REQUIRE(b);
    REQUIRE(b->size() == 2);
    CHECK((*b)[0].api.origin() == "https://cache.local");
    CHECK((*b)[1].api.origin() == "https://other.example");
    o.insecure = true;
    o.ca_file = "/ca.pem";
    auto c = resolve_endpoints("far.example", o);
    REQUIRE(c);
    CHECK(c->back().skip_verify);
    CHECK(c->back().http_fallback);
    CHECK(c->back().ca_files.back() == "/ca.pem");
    auto l = resolve_endpoints("localhost:5000", o);
    REQUIRE(l);
    CHECK(!l->back().http_fallback);  // loopback is plain http already
    fs::remove_all(dir);
}
