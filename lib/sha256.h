// SHA-256 through OpenSSL's EVP interface (SHA-NI where the CPU has it), and the OCI digest
// string form "sha256:<64 hex>".
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "result.h"

typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace erostream {

using Sha256Digest = std::array<uint8_t, 32>;

class Sha256 {
public:
    Sha256();
    ~Sha256();
    Sha256(Sha256&&) noexcept;
    Sha256& operator=(Sha256&&) noexcept;
    Sha256(const Sha256&) = delete;
    Sha256& operator=(const Sha256&) = delete;

    void update(const void* data, size_t n);
    void update(std::string_view s) { update(s.data(), s.size()); }
    Sha256Digest finish();  // resets the context for reuse

private:
    EVP_MD_CTX* ctx_;
};

Sha256Digest sha256(const void* data, size_t n);
inline Sha256Digest sha256(std::string_view s) { return sha256(s.data(), s.size()); }

std::string to_hex(const uint8_t* data, size_t n);
inline std::string to_hex(const Sha256Digest& d) { return to_hex(d.data(), d.size()); }
// "sha256:<hex>"
std::string digest_string(const Sha256Digest& d);
// Parses "sha256:<64 lowercase hex>"; anything else (other algorithms included) is an error.
Result<Sha256Digest> parse_digest(std::string_view s);
Result<Sha256Digest> parse_hex_digest(std::string_view hex);

}  // namespace erostream
