#include "reference.h"

#include <cctype>

#include "sha256.h"

namespace erostream {

namespace {

bool is_lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// A path component: [a-z0-9]+ separated by '.', '_', '__' or runs of '-'.
bool is_valid_component(std::string_view c) {
    if (c.empty() || !is_lower_alnum(c.front()) || !is_lower_alnum(c.back())) return false;
    for (size_t i = 0; i < c.size(); ++i) {
        char ch = c[i];
        if (is_lower_alnum(ch)) continue;
        if (ch == '-') continue;
        if (ch == '.' || ch == '_') {
            // "." and "_" separate alphanumeric runs; "__" is allowed, "._" or ".." are not
            char prev = c[i - 1];
            if (!is_lower_alnum(prev) && !(ch == '_' && prev == '_' && i >= 2 && is_lower_alnum(c[i - 2])))
                return false;
            continue;
        }
        return false;
    }
    return true;
}

bool is_valid_registry(std::string_view r) {
    if (r.empty() || r.size() > 255) return false;
    for (char c : r)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' ||
              c == '[' || c == ']'))
            return false;
    return true;
}

}  // namespace

bool is_valid_tag(std::string_view t) {
    if (t.empty() || t.size() > 128) return false;
    auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
    if (!word(t.front())) return false;
    for (char c : t)
        if (!word(c) && c != '.' && c != '-') return false;
    return true;
}

bool is_valid_repository(std::string_view repo) {
    if (repo.empty() || repo.size() > 255) return false;
    size_t i = 0;
    while (i <= repo.size()) {
        size_t j = repo.find('/', i);
        if (j == std::string_view::npos) j = repo.size();
        if (!is_valid_component(repo.substr(i, j - i))) return false;
        i = j + 1;
    }
    return true;
}

std::string ImageReference::api_host() const {
    if (registry == kDockerHubRegistry) return std::string(kDockerHubApiHost);
    return registry;
}

std::string ImageReference::str() const {
    std::string s = registry + "/" + repository;
    if (tag) s += ":" + *tag;
    if (digest) s += "@" + *digest;
    return s;
}

Result<ImageReference> parse_image_reference(std::string_view s) {
    const std::string_view original = s;
    if (s.starts_with("docker://")) s.remove_prefix(9);
    if (s.empty()) return fail("empty image reference");
    ImageReference ref;
    size_t at = s.find('@');
    if (at != std::string_view::npos) {
        std::string_view d = s.substr(at + 1);
        if (!parse_digest(d))
            return failf("image reference '{}': digest must be sha256:<64 lowercase hex>", original);
        ref.digest = std::string(d);
        s = s.substr(0, at);
    }
    // The registry is the first component if it looks like a host.
    size_t slash = s.find('/');
    if (slash != std::string_view::npos) {
        std::string_view first = s.substr(0, slash);
        if (first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos ||
            first == "localhost") {
            if (!is_valid_registry(first))
                return failf("image reference '{}': invalid registry '{}'", original, first);
            ref.registry = std::string(first);
            s = s.substr(slash + 1);
        }
    }
    if (ref.registry.empty()) ref.registry = std::string(kDockerHubRegistry);
    for (auto& c : ref.registry) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (ref.registry == "index.docker.io" || ref.registry == "registry-1.docker.io")
        ref.registry = std::string(kDockerHubRegistry);
    // The tag follows the last ':' of the last path component.
    size_t last_slash = s.rfind('/');
    size_t colon = s.rfind(':');
    if (colon != std::string_view::npos && (last_slash == std::string_view::npos || colon > last_slash)) {
        std::string_view t = s.substr(colon + 1);
        if (!is_valid_tag(t)) return failf("image reference '{}': invalid tag '{}'", original, t);
        ref.tag = std::string(t);
        s = s.substr(0, colon);
    }
    ref.repository = std::string(s);
    if (ref.registry == kDockerHubRegistry && ref.repository.find('/') == std::string::npos)
        ref.repository = "library/" + ref.repository;
    if (!is_valid_repository(ref.repository))
        return failf("image reference '{}': invalid repository name '{}' (lowercase letters, digits, "
                     "and . _ - separators)",
                     original, ref.repository);
    if (!ref.tag && !ref.digest) ref.tag = "latest";
    return ref;
}

}  // namespace erostream
