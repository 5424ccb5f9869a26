#include "sha256.h"

#include <openssl/evp.h>

#include <stdexcept>
#include <utility>

namespace erostream {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("OpenSSL: cannot initialise sha256");
}
Sha256::~Sha256() {
    if (ctx_) EVP_MD_CTX_free(ctx_);
}
Sha256::Sha256(Sha256&& o) noexcept : ctx_(std::exchange(o.ctx_, nullptr)) {}
Sha256& Sha256::operator=(Sha256&& o) noexcept {
    if (this != &o) {
        if (ctx_) EVP_MD_CTX_free(ctx_);
        ctx_ = std::exchange(o.ctx_, nullptr);
    }
    return *this;
}
void Sha256::update(const void* data, size_t n) { EVP_DigestUpdate(ctx_, data, n); }
Sha256Digest Sha256::finish() {
    Sha256Digest d{};
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, d.data(), &len);
    EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr);
    return d;
}

Sha256Digest sha256(const void* data, size_t n) {
    Sha256Digest d{};
    unsigned int len = 0;
    EVP_Digest(data, n, d.data(), &len, EVP_sha256(), nullptr);
    return d;
}

std::string to_hex(const uint8_t* data, size_t n) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string s(n * 2, '\0');
    for (size_t i = 0; i < n; ++i) {
        s[2 * i] = kHex[data[i] >> 4];
        s[2 * i + 1] = kHex[data[i] & 15];
    }
    return s;
}

std::string digest_string(const Sha256Digest& d) { return "sha256:" + to_hex(d); }

Result<Sha256Digest> parse_hex_digest(std::string_view hex) {
    if (hex.size() != 64) return failf("digest '{}' is not 64 hex digits", hex);
    Sha256Digest d{};
    for (size_t i = 0; i < 32; ++i) {
        auto nib = [](char c) -> int {
            if (c >= '0' && c <= '9') return c - '0';
            if (c >= 'a' && c <= 'f') return c - 'a' + 10;
            return -1;
        };
        int hi = nib(hex[2 * i]), lo = nib(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return failf("digest '{}' is not lowercase hex", hex);
        d[i] = static_cast<uint8_t>(hi << 4 | lo);
    }
    return d;
}

Result<Sha256Digest> parse_digest(std::string_view s) {
    if (!s.starts_with("sha256:")) return failf("digest '{}' is not of the form sha256:<hex>", s);
    return parse_hex_digest(s.substr(7));
}

}  // namespace erostream
