"""Crash safety of erostreamd: SIGKILL while readers read. No reader may ever see wrong bytes or
zeros for data that was not fetched (an error is acceptable); the fanotify group lives on in the
holder, so a restarted daemon brings the mounts back to full service without remounting, and a
read that was waiting during the restart is answered. A clean stop (SIGTERM) keeps the mounts
too, and the presence of fetched chunks survives it: nothing is fetched twice."""

from __future__ import annotations

import threading

import pytest

import erostream_testlib as lib
from daemon_fixtures import *  # noqa: F401,F403
from daemon_fixtures import (ReaderThreads, assert_contents_match, assert_tree_matches, checked_read,
                             proc_alive, start_readers)

pytestmark = [pytest.mark.kernel, pytest.mark.daemon]


def shaped_mount(daemon, registry, published, proxies, work, *, bytes_per_second=8e6, latency=0.02):
    """Image a mounted from the registry through a proxy shaped to a slow link, so that reads
    are still waiting for the registry when the daemon is killed."""
    proxy = proxies(registry.host)
    proxy.set_link(bytes_per_second, latency=latency)
    mnt = work / "mnt"
    daemon.mount(published["a"].artifact_ref(proxy.host), mnt, prefetch="none")
    return proxy, mnt


def test_sigkill_while_reading_then_restart(daemon, registry, published, stream_images, proxies, work):
    img = stream_images["a"]
    proxy, mnt = shaped_mount(daemon, registry, published, proxies, work)
    readers = start_readers(img, mnt, 16)
    assert readers.first_block.wait(120), "no reader finished a file within 120 s"
    busy = sum(t.is_alive() for t in readers.threads)
    assert busy > 0, "all readers were done before the kill: the test killed an idle daemon"
    code = daemon.kill()
    assert code == -9, code
    # Readers go on: they get right bytes, EIO, or wait until the daemon is back.
    daemon.start()
    readers.join()
    wrong = readers.wrong()
    assert not wrong, f"{len(wrong)} read(s) saw wrong bytes across the crash:\n  " + "\n  ".join(wrong[:40])
    # Back to full service without a remount.
    assert lib.is_mountpoint(mnt)
    assert str(mnt) in [m["mountpoint"] for m in daemon.list_mounts()], \
        f"the restarted daemon does not list {mnt}\n{daemon.log_digest()}"
    assert daemon.health()["mounts"] == 1
    proxy.set_link(None)
    assert_contents_match(img, mnt, drop_cache=True)
    assert_tree_matches(img, mnt)


def test_sigkill_twice_and_a_read_waiting_across_the_restart(daemon, source, stream_images, proxies, request, work):
    img = stream_images["a"]
    if source.kind == "registry":
        proxy, mnt = shaped_mount(daemon, request.getfixturevalue("registry"), request.getfixturevalue("published"),
                                  proxies, work, bytes_per_second=2e6)
    else:
        proxy, mnt = None, work / "mnt"
        daemon.mount(source("a"), mnt, prefetch="none")
    rel = "data/f37"  # kept unread for the read that waits across the restart
    readers = start_readers(img, mnt, 8, exclude=(rel,))
    assert readers.first_block.wait(120)
    daemon.kill()
    daemon.start()
    daemon.kill()  # again, before anything settled
    # A read started while no daemon runs waits for the next one: never zeros.
    started = threading.Event()
    waiting = ReaderThreads()

    def one():
        started.set()
        yield checked_read(mnt / rel, img.expected(rel), drop_cache=True)

    waiting.add(one)
    waiting.start()
    assert started.wait(60)
    daemon.start()
    waiting.join()
    readers.join()
    assert not waiting.wrong() and not readers.wrong(), waiting.wrong() + readers.wrong()
    assert waiting.outcomes and waiting.outcomes[0].eio == 0, \
        f"the read that waited across the restart failed: {waiting.outcomes}\n{daemon.log_digest()}"
    if proxy:
        proxy.set_link(None)
    assert_contents_match(img, mnt, drop_cache=True)
    daemon.health()


def test_sigterm_while_registry_reads_wait(daemon, registry, published, stream_images, proxies, work):
    """SIGTERM while readers wait for a slow registry: the daemon cancels its transfers, answers
    every waiting read (right bytes or EIO, never wrong bytes, no reader left hanging) and exits 0
    at once; the next daemon serves the mount."""
    img = stream_images["a"]
    proxy, mnt = shaped_mount(daemon, registry, published, proxies, work, bytes_per_second=1e6)
    readers = start_readers(img, mnt, 8)
    assert readers.first_block.wait(120), "no reader finished a file within 120 s"
    assert sum(t.is_alive() for t in readers.threads) > 0, "all readers were done before the stop"
    import time
    t0 = time.monotonic()
    code = daemon.stop()
    took = time.monotonic() - t0
    assert code == 0, f"exit status {code} after SIGTERM\n{daemon.log_digest()}"
    assert took < 10, f"the daemon took {took:.1f} s to stop with registry reads in flight\n{daemon.log_digest()}"
    daemon.start()
    proxy.set_link(None)
    readers.join()
    assert not readers.wrong(), readers.wrong()
    assert_contents_match(img, mnt, drop_cache=True)
    daemon.health()


def test_sigterm_keeps_mounts_and_presence(daemon, source, stream_images, work):
    """A clean stop exits 0 and unmounts nothing; the next daemon serves the mount, and the
    chunks fetched before the stop are not fetched again (presence survived)."""
    img = stream_images["a"]
    mnt = work / "mnt"
    daemon.mount(source("a"), mnt, prefetch="none")
    first = [r for r in img.regular_files() if r.startswith("data/")]
    for rel in first:
        o = checked_read(mnt / rel, img.expected(rel))
        assert o.clean and o.eio == 0, o
    holders = daemon.other_processes()
    assert daemon.stop() == 0, daemon.log_digest()
    assert lib.is_mountpoint(mnt), "SIGTERM must not unmount"
    assert any(proc_alive(p, s) for p, s in holders), \
        f"no process holds the cache files after the daemon stopped (holder? {holders})"
    daemon.start()
    assert str(mnt) in [m["mountpoint"] for m in daemon.list_mounts()]
    s0 = daemon.stats()
    for rel in first:
        o = checked_read(mnt / rel, img.expected(rel), drop_cache=True)
        assert o.clean and o.eio == 0, o
    s1 = daemon.stats()
    assert s1["bytes_fetched"] - s0["bytes_fetched"] == 0 and s1["chunks_fetched"] == s0["chunks_fetched"], \
        f"chunks fetched before the restart were fetched again:\n{s0}\n{s1}"
    assert_contents_match(img, mnt, drop_cache=True)
    assert_tree_matches(img, mnt)
    daemon.umount(mnt)
