// A fixed pool of worker threads for CPU work (hashing, compression, decompression). Each task
// learns the index of the worker running it, so per-worker state (a zstd context) needs no lock
// and no thread_local. Ownership: the pool joins its threads in the destructor after draining.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace erostream {

class ThreadPool {
public:
    using Task = std::function<void(unsigned worker)>;

    explicit ThreadPool(unsigned workers) {
        if (workers == 0) workers = 1;
        for (unsigned i = 0; i < workers; ++i) threads_.emplace_back([this, i] { run(i); });
    }
    ~ThreadPool() {
        {
            std::lock_guard lk(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : threads_) t.join();
    }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    unsigned size() const { return static_cast<unsigned>(threads_.size()); }

    void submit(Task t) {
        {
            std::lock_guard lk(mu_);
            tasks_.push_back(std::move(t));
        }
        cv_.notify_one();
    }

    static unsigned default_workers() {
        unsigned n = std::thread::hardware_concurrency();
        return n == 0 ? 2 : n;
    }

private:
    void run(unsigned worker) {
        for (;;) {
            Task t;
            {
                std::unique_lock lk(mu_);
                cv_.wait(lk, [this] { return stop_ || !tasks_.empty(); });
                if (tasks_.empty()) return;
                t = std::move(tasks_.front());
                tasks_.pop_front();
            }
            t(worker);
        }
    }

    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Task> tasks_;
    bool stop_ = false;
    std::vector<std::thread> threads_;
};

// Completion flag for one task, waited on by the thread that submitted it.
class Completion {
public:
    void set() {
        {
            std::lock_guard lk(mu_);
            done_ = true;
        }
        cv_.notify_all();
    }
    void wait() {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [this] { return done_; });
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    bool done_ = false;
};

}  // namespace erostream
