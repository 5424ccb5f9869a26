// Answers owed to the kernel for cachefiles requests, as RAII tokens, so that no path can forget
// one: a READ is completed (CACHEFILES_IOC_READ_COMPLETE on the object's anonymous fd) and an
// OPEN is answered (copen) when its token is answered explicitly or, failing that, when the last
// copy of the token goes away (an error path that dropped it, a callback that was never called,
// a torn-down scheduler). An OPEN answered by default fails with EIO. A READ completed without
// its bytes in the cache object fails the reader with EIO: the kernel looks at the object again
// after the completion and finds the hole.
//
// The one exception is a clean daemon stop with mounts left (`abandon`): from then on failures are
// not sent and tokens are released without an answer, and the next daemon's `restore` makes the
// kernel send those requests again.
#pragma once

#include <cerrno>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace erostream {

class ReadToken {
public:
    // complete(msg_id) does the ioctl (on the fd the caller captured); abandon, when set to true
    // by the time the token dies unanswered, suppresses it.
    ReadToken(uint32_t msg_id, std::string req_id, std::function<void(uint32_t msg_id, bool ok)> complete,
              std::shared_ptr<const bool> abandon)
        : msg_id_(msg_id), req_id_(std::move(req_id)), complete_(std::move(complete)), abandon_(std::move(abandon)) {}
    ReadToken(const ReadToken&) = delete;
    ReadToken& operator=(const ReadToken&) = delete;
    ~ReadToken() {
        if (answered_ || (abandon_ && *abandon_)) return;
        answer(false);
    }

    // ok: the bytes are in the object. Idempotent: the first call counts. A failure while the
    // daemon stops for a restart is not sent: the next daemon gets the READ again.
    void answer(bool ok) {
        if (answered_) return;
        answered_ = true;
        if (!ok && abandon_ && *abandon_) return;
        if (complete_) complete_(msg_id_, ok);
    }
    bool answered() const { return answered_; }
    uint32_t msg_id() const { return msg_id_; }
    const std::string& req_id() const { return req_id_; }

private:
    uint32_t msg_id_;
    std::string req_id_;
    std::function<void(uint32_t, bool)> complete_;
    std::shared_ptr<const bool> abandon_;
    bool answered_ = false;
};

class OpenToken {
public:
    // reply(msg_id, size or -errno) writes the copen command.
    OpenToken(uint32_t msg_id, std::string req_id, std::function<void(uint32_t, int64_t)> reply,
              std::shared_ptr<const bool> abandon)
        : msg_id_(msg_id), req_id_(std::move(req_id)), reply_(std::move(reply)), abandon_(std::move(abandon)) {}
    OpenToken(const OpenToken&) = delete;
    OpenToken& operator=(const OpenToken&) = delete;
    ~OpenToken() {
        if (answered_ || (abandon_ && *abandon_)) return;
        answer(-EIO);
    }
    void answer(int64_t size_or_negative_errno) {
        if (answered_) return;
        answered_ = true;
        if (size_or_negative_errno < 0 && abandon_ && *abandon_) return;
        if (reply_) reply_(msg_id_, size_or_negative_errno);
    }
    bool answered() const { return answered_; }
    const std::string& req_id() const { return req_id_; }

private:
    uint32_t msg_id_;
    std::string req_id_;
    std::function<void(uint32_t, int64_t)> reply_;
    std::shared_ptr<const bool> abandon_;
    bool answered_ = false;
};

}  // namespace erostream
