"""Lazy fetching through erostreamd: with --prefetch none a read fetches only the chunks it
needs (checked on the daemon's stats and, independently, on the bytes the registry sent through
the tests' proxy); 32 concurrent readers; a chunk in flight is never requested twice; two images
sharing a base layer share its cache file and its fetched chunks."""

from __future__ import annotations

import os
import re
import subprocess
import threading

import pytest

from daemon_fixtures import *  # noqa: F401,F403
from daemon_fixtures import (KIB, MIB, N_DATA_FILES, ReaderThreads, assert_contents_match, checked_read,
                             data_file_size)

pytestmark = [pytest.mark.kernel, pytest.mark.daemon]


def delta(after: dict, before: dict, key: str) -> int:
    return after[key] - before[key]


def data_blob_requests(proxy, pub, img):
    rx = "|".join(re.escape(d["digest"]) for d in img.data_blobs)
    return [r for r in proxy.requests(method="GET") if re.search(rf"/blobs/({rx})$", r.path)]


def test_one_small_file_fetches_few_chunks(daemon, registry, published, stream_images, proxies, work):
    img, pub = stream_images["a"], published["a"]
    proxy = proxies(registry.host)
    mnt = work / "mnt"
    daemon.mount(pub.artifact_ref(proxy.host), mnt, prefetch="none")
    s0 = daemon.stats()
    proxy.reset_records()

    rel = "data/f03"
    size = data_file_size(3)
    o = checked_read(mnt / rel, img.expected(rel))
    assert o.clean and o.eio == 0, o
    s1 = daemon.stats()
    chunks = delta(s1, s0, "chunks_fetched")
    fetched = delta(s1, s0, "bytes_fetched")
    total = img.data_bytes()
    assert 1 <= chunks <= 2, f"reading one {size}-byte file fetched {chunks} chunks\n{s0}\n{s1}"
    # the file is random bytes: its chunk cannot compress below ~its size
    assert size * 0.9 <= fetched <= size + 256 * KIB, \
        f"reading one {size}-byte file fetched {fetched} bytes (data blobs: {total})\n{s0}\n{s1}"
    assert fetched < total / 20
    assert delta(s1, s0, "cache_misses") >= 1
    # Independent of the daemon's own counters: what the registry sent through the proxy.
    reqs = data_blob_requests(proxy, pub, img)
    sent = sum(r.body_bytes for r in reqs)
    assert 1 <= len(reqs) <= 2, [(r.path, r.headers.get("range"), r.body_bytes) for r in reqs]
    assert all("range" in r.headers for r in reqs), "data blob GETs without a Range header"
    assert sent <= size + 256 * KIB, f"the registry sent {sent} bytes of data blobs for one {size}-byte file"
    # Since start: the metadata blob, manifests, and this one chunk; nothing else.
    assert s1["bytes_fetched"] <= img.meta_blob["size"] + 256 * KIB + fetched, s1

    # 4 KiB in the middle of a 5 MiB file (six 1 MiB chunks): one chunk, maybe its neighbour
    big = img.expected("big/blob")
    off = 2 * MIB + MIB // 2
    o = checked_read(mnt / "big/blob", big, block=4096, offsets=[off])
    assert o.clean and o.ok_bytes == 4096, o
    s2 = daemon.stats()
    assert 1 <= delta(s2, s1, "chunks_fetched") <= 2, (s1, s2)
    assert delta(s2, s1, "bytes_fetched") <= 2 * MIB + 128 * KIB, (s1, s2)

    # Read again with the page cache dropped: served from the cache file, nothing fetched.
    proxy.reset_records()
    o = checked_read(mnt / rel, img.expected(rel), drop_cache=True)
    assert o.clean and o.eio == 0, o
    s3 = daemon.stats()
    assert delta(s3, s2, "bytes_fetched") == 0 and delta(s3, s2, "chunks_fetched") == 0, (s2, s3)
    assert delta(s3, s2, "cache_hits") >= 1, (s2, s3)
    assert data_blob_requests(proxy, pub, img) == []
    daemon.umount(mnt)


def test_one_small_file_reads_few_chunks_from_a_layout(daemon, stream_images, work):
    """The same from a local oci: layout: one chunk (maybe two) per small file, and the
    bytes_fetched counter (registry bytes) grows by one chunk at most."""
    img = stream_images["a"]
    mnt = work / "mnt"
    daemon.mount(img.artifact_ref, mnt, prefetch="none")
    s0 = daemon.stats()
    rel = "data/f05"
    o = checked_read(mnt / rel, img.expected(rel))
    assert o.clean and o.eio == 0, o
    s1 = daemon.stats()
    assert 1 <= delta(s1, s0, "chunks_fetched") <= 2, (s0, s1)
    assert delta(s1, s0, "bytes_fetched") <= data_file_size(5) + 256 * KIB, (s0, s1)
    info = daemon.mount_info(mnt)
    present = sum(d["present_bytes"] for d in info["devices"])
    assert 0 < present <= 2 * MIB, f"{present} bytes present after reading one small file: {info}"
    daemon.umount(mnt)


def test_32_concurrent_readers(daemon, source, stream_images, work):
    """32 processes (sha256sum) read 32 different files at once, nothing fetched before."""
    img = stream_images["a"]
    mnt = work / "mnt"
    daemon.mount(source("a"), mnt, prefetch="none")
    s0 = daemon.stats()
    files = [f"data/f{i:02d}" for i in range(32)]
    procs = [subprocess.Popen(["sha256sum", str(mnt / rel)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for rel in files]
    bad = []
    for rel, p in zip(files, procs):
        out, err = p.communicate(timeout=300)
        want = img.files[rel][1]
        got = out.split()[0] if p.returncode == 0 and out else None
        if got != want:
            bad.append(f"/{rel}: exit {p.returncode}, sha256 {got}, expected {want}: {err.strip()}")
    assert not bad, "\n".join(bad)
    s1 = daemon.stats()
    assert delta(s1, s0, "chunks_fetched") >= 32, (s0, s1)
    assert s1["errors"] == s0["errors"], (s0, s1)
    daemon.health()
    daemon.umount(mnt)


def test_chunk_in_flight_is_requested_once(daemon, registry, published, stream_images, proxies, work):
    """32 threads read 64 KiB blocks all over one 5 MiB file at once, through a proxy that adds
    50 ms to every request so that the requests overlap: every chunk is fetched once (none twice;
    readahead may add chunks after the file) and no byte range of the blob is requested twice."""
    img, pub = stream_images["a"], published["a"]
    proxy = proxies(registry.host)
    proxy.set_link(None, latency=0.05)
    mnt = work / "mnt"
    daemon.mount(pub.artifact_ref(proxy.host), mnt, prefetch="none")
    proxy.reset_records()
    s0 = daemon.stats()
    big = img.expected("big/blob")
    n_chunks = -(-len(big) // MIB)
    go = threading.Event()
    readers = ReaderThreads()

    def one(off):
        go.wait(60)
        yield checked_read(mnt / "big/blob", big, block=64 * KIB, offsets=[off])

    for i in range(32):  # from the first block to the last: every chunk is read
        readers.add(one, (i * (len(big) - 1) // 31) // 4096 * 4096)
    readers.start()
    go.set()
    readers.join()
    assert not readers.wrong(), readers.wrong()
    assert sum(o.eio for o in readers.outcomes) == 0
    s1 = daemon.stats()
    # Every chunk of the file once; more only through sequential readahead (readers that go on
    # where another's chunk ends), which may run past the file's end into the next file's chunks.
    extra = delta(s1, s0, "chunks_fetched") - n_chunks
    assert extra >= 0, (n_chunks, s0, s1)
    assert extra == 0 or delta(s1, s0, "readahead_bytes") > 0, (n_chunks, s0, s1)
    ranges = []
    for r in data_blob_requests(proxy, pub, img):
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", r.headers.get("range", ""))
        assert m, f"blob GET without a single byte range: {r.path} {r.headers.get('Range')!r}"
        ranges.append((r.path, int(m.group(1)), int(m.group(2))))
    ranges.sort()
    for (p1, a1, b1), (p2, a2, b2) in zip(ranges, ranges[1:]):
        assert p1 != p2 or a2 > b1, f"byte ranges requested twice: {a1}-{b1} and {a2}-{b2} of {p1}"
    daemon.umount(mnt)


def test_shared_base_layer_shares_cache_file(daemon, source, stream_images, work):
    a, b = stream_images["a"], stream_images["b"]
    base = a.data_blobs[0]
    assert base["digest"] == b.data_blobs[0]["digest"]
    ma, mb = work / "a", work / "b"
    daemon.mount(source("a"), ma, prefetch="none")
    # files both images take unchanged from the base layer
    base_files = [f"data/f{i:02d}" for i in range(N_DATA_FILES - 2)] + ["big/blob", "usr/lib/text", "etc/mid.bin"]
    for rel in base_files:
        o = checked_read(ma / rel, a.expected(rel))
        assert o.clean and o.eio == 0, o
    daemon.mount(source("b"), mb, prefetch="none")
    s0 = daemon.stats()
    for rel in base_files:
        o = checked_read(mb / rel, b.expected(rel))
        assert o.clean and o.eio == 0, o
    s1 = daemon.stats()
    assert delta(s1, s0, "bytes_fetched") == 0 and delta(s1, s0, "chunks_fetched") == 0, \
        f"reading the shared base through the second image fetched again:\n{s0}\n{s1}"
    # b's own layer is fetched (the counters do count)
    for rel in [r for r in b.regular_files("app/")]:
        o = checked_read(mb / rel, b.expected(rel))
        assert o.clean and o.eio == 0, o
    s2 = daemon.stats()
    assert delta(s2, s1, "chunks_fetched") >= 10, (s1, s2)

    # one cache file for the base blob, listed by both mounts with the same presence
    hexd = base["digest"].split(":", 1)[1]
    dev_size = int(base["annotations"]["io.erostream.device.size"])
    named = [p for p in daemon.cache_dir.rglob(f"*{hexd}*") if p.is_file()]
    data_files = [p for p in named if p.stat().st_size == dev_size]
    assert len(data_files) == 1, f"cache files for {base['digest']} of device size {dev_size}: {named}"
    ia, ib = daemon.mount_info(ma), daemon.mount_info(mb)
    da = next(d for d in ia["devices"] if d["blob"] == base["digest"])
    db = next(d for d in ib["devices"] if d["blob"] == base["digest"])
    assert da["present_bytes"] == db["present_bytes"] > 0, (da, db)
    assert da["size"] == db["size"] == dev_size, (da, db)
    assert_contents_match(b, mb)
    assert_contents_match(a, ma)
    daemon.umount(mb)
    daemon.umount(ma)
