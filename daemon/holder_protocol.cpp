#include "holder_protocol.h"

#include <sys/socket.h>

#include <cstring>

#include "fanotify_abi.h"

namespace erostream {

namespace {
constexpr uint32_t kMagic = 0x484f5245;  // "EROH"
constexpr size_t kHeader = 4 + 2 + 2 + 6 * 8 + 4 + 4;

template <class T>
void put(std::string& s, size_t& off, T v) {
    std::memcpy(s.data() + off, &v, sizeof v);
    off += sizeof v;
}
template <class T>
T get(std::string_view s, size_t& off) {
    T v;
    std::memcpy(&v, s.data() + off, sizeof v);
    off += sizeof v;
    return v;
}

std::string unescape_mountinfo(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7' &&
            s[i + 2] >= '0' && s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
            out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
            i += 3;
        } else {
            out += s[i];
        }
    }
    return out;
}
}  // namespace

std::string encode_holder_msg(const HolderMsg& m) {
    std::string s(kHeader + m.text.size(), '\0');
    size_t off = 0;
    put<uint32_t>(s, off, kMagic);
    put<uint16_t>(s, off, kHolderProtocolVersion);
    put<uint16_t>(s, off, static_cast<uint16_t>(m.op));
    for (uint64_t v : {m.id, m.a, m.b, m.c, m.d, m.e}) put<uint64_t>(s, off, v);
    put<uint32_t>(s, off, static_cast<uint32_t>(m.text.size()));
    put<uint32_t>(s, off, 0);
    std::memcpy(s.data() + off, m.text.data(), m.text.size());
    return s;
}

Result<HolderMsg> decode_holder_msg(std::string_view bytes) {
    if (bytes.size() < kHeader) return failf("holder message: {} bytes, shorter than its header", bytes.size());
    size_t off = 0;
    if (get<uint32_t>(bytes, off) != kMagic) return fail("holder message: bad magic");
    uint16_t version = get<uint16_t>(bytes, off);
    if (version != kHolderProtocolVersion)
        return failf("holder message: protocol version {} (this program speaks {})", version, kHolderProtocolVersion);
    uint16_t op = get<uint16_t>(bytes, off);
    if (op < static_cast<uint16_t>(HolderOp::Hello) || op > static_cast<uint16_t>(HolderOp::Cachefiles))
        return failf("holder message: unknown operation {}", op);
    HolderMsg m;
    m.op = static_cast<HolderOp>(op);
    m.id = get<uint64_t>(bytes, off);
    m.a = get<uint64_t>(bytes, off);
    m.b = get<uint64_t>(bytes, off);
    m.c = get<uint64_t>(bytes, off);
    m.d = get<uint64_t>(bytes, off);
    m.e = get<uint64_t>(bytes, off);
    uint32_t len = get<uint32_t>(bytes, off);
    off += 4;
    if (bytes.size() - kHeader != len)
        return failf("holder message: text of {} bytes announced, {} present", len, bytes.size() - kHeader);
    m.text.assign(bytes.substr(kHeader));
    return m;
}

Result<void> send_holder_msg(int sock, const HolderMsg& m, int fd) {
    std::string bytes = encode_holder_msg(m);
    if (bytes.size() > kHolderMaxMessage) return failf("holder message of {} bytes is too long", bytes.size());
    iovec iov{bytes.data(), bytes.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
    if (fd >= 0) {
        std::memset(cbuf, 0, sizeof cbuf);
        mh.msg_control = cbuf;
        mh.msg_controllen = sizeof cbuf;
        cmsghdr* c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    for (;;) {
        ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
        if (n >= 0) return {};
        if (errno == EINTR) continue;
        return fail_errno("send to the holder socket");
    }
}

Result<std::optional<ReceivedHolderMsg>> recv_holder_msg(int sock) {
    std::string buf(kHolderMaxMessage, '\0');
    iovec iov{buf.data(), buf.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 8)];
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    ssize_t n;
    for (;;) {
        n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n >= 0) break;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return std::nullopt;
        return fail_errno("receive from the holder socket");
    }
    ReceivedHolderMsg out;
    // Take ownership of every fd that came, whatever follows.
    std::vector<UniqueFd> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t k = 0; k < count; ++k) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
            fds.emplace_back(fd);
        }
    }
    if (n == 0) return fail("the holder socket's peer is gone", ECONNRESET);
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return fail("holder message truncated", EMSGSIZE);
    auto m = decode_holder_msg(std::string_view(buf.data(), static_cast<size_t>(n)));
    if (!m) return std::unexpected(m.error());
    out.msg = std::move(*m);
    if (!fds.empty()) out.fd = std::move(fds.front());
    return std::optional<ReceivedHolderMsg>(std::move(out));
}

FanEvents parse_fanotify_events(std::string_view buf) {
    FanEvents out;
    size_t off = 0;
    while (off < buf.size()) {
        if (buf.size() - off < sizeof(fanotify_event_metadata)) {
            out.error = Error{0, fmt::format("fanotify: {} stray bytes at the end of a read", buf.size() - off)};
            return out;
        }
        fanotify_event_metadata md;
        std::memcpy(&md, buf.data() + off, sizeof md);
        if (md.vers != FANOTIFY_METADATA_VERSION) {
            out.error = Error{0, fmt::format("fanotify: metadata version {}", md.vers)};
            return out;
        }
        if (md.event_len < sizeof md || md.event_len > buf.size() - off || md.metadata_len < sizeof md ||
            md.metadata_len > md.event_len) {
            out.error = Error{0, fmt::format("fanotify: bad event length {} at byte {}", md.event_len, off)};
            return out;
        }
        FanEvent ev;
        ev.fd = md.fd;
        ev.mask = md.mask;
        ev.pid = md.pid;
        size_t info = off + md.metadata_len;
        size_t end = off + md.event_len;
        while (info + sizeof(fanotify_event_info_header) <= end) {
            fanotify_event_info_header h;
            std::memcpy(&h, buf.data() + info, sizeof h);
            if (h.len < sizeof h || h.len > end - info) break;
            if (h.info_type == fan::kEventInfoTypeRange && h.len >= sizeof(fan::event_info_range)) {
                fan::event_info_range r;
                std::memcpy(&r, buf.data() + info, sizeof r);
                ev.has_range = true;
                ev.offset = r.offset;
                ev.count = r.count;
            }
            info += h.len;
        }
        out.events.push_back(ev);
        off = end;
    }
    return out;
}

std::vector<MountInfoEntry> parse_mountinfo(std::string_view text) {
    std::vector<MountInfoEntry> out;
    while (!text.empty()) {
        size_t nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        // id parent major:minor root mount_point options [optional...] - fstype source superopts
        std::vector<std::string_view> f;
        size_t pos = 0;
        while (pos < line.size()) {
            size_t sp = line.find(' ', pos);
            if (sp == std::string_view::npos) sp = line.size();
            f.push_back(line.substr(pos, sp - pos));
            pos = sp + 1;
        }
        if (f.size() < 7) continue;
        size_t dash = 6;
        while (dash < f.size() && f[dash] != "-") ++dash;
        if (dash + 2 >= f.size()) continue;
        out.push_back({unescape_mountinfo(f[4]), std::string(f[dash + 1]), unescape_mountinfo(f[dash + 2])});
    }
    return out;
}

}  // namespace erostream
