"""erostreamd's fscache front end (EROFS over cachefiles on-demand) in the test guest's kernel:
the mounted tree is the image (umoci's unpack of it, entry by entry, and every byte); with
prefetch off a small file fetches only its chunks and cached reads never reach the daemon; two
images sharing a base layer share its cache object and fetch it once; a daemon SIGKILLed in the
middle of reads is replaced without unmounting, and no reader ever sees a wrong byte; a backend
that cannot deliver ends in EIO for the reader, never a hang.

Runs only inside the guest (tests/vm/run-guest-tests, which builds the images first and runs it
through tests/vm/run-in-guest); anywhere else its fixtures fail. test_guest_smoke.py checks the
guest kernel itself (erostreamd's probe finds fscache usable there)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import erostream_testlib as lib
from daemon_fixtures import (KIB, MIB, assert_contents_match, assert_tree_matches, checked_read,
                             data_file_size, drop_file_cache, start_readers)

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.daemon]


def delta(after: dict, before: dict, key: str) -> int:
    return after[key] - before[key]


def erofs_mount_options(mnt: Path) -> str:
    """The super options /proc/self/mountinfo shows for the erofs mount at mnt."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        if f[4] == str(mnt):
            dash = f.index("-")
            assert f[dash + 1] == "erofs", line
            return f[dash + 3]
    raise AssertionError(f"{mnt} is not in /proc/self/mountinfo")


def cache_objects(cache_dir: Path) -> list[Path]:
    """The kernel's cache files under <cache>/fscache: one per cookie, named D<cookie key>.
    cachefiles creates a new object as an unnamed file and links it in when the cookie is
    relinquished: they show up after the umount."""
    return sorted(p for p in (cache_dir / "fscache").rglob("D*") if p.is_file())


def meta_hex(img) -> str:
    return img.meta_blob["digest"].split(":", 1)[1]


def test_mount_is_the_image(fsdaemon, vm_images, work):
    """(a) A mount through the fscache front end: the tree matches umoci's unpack entry by entry
    and every regular file reads back byte for byte; mount(2) got fsid and domain_id."""
    img = vm_images["a"]
    mnt = work / "mnt"
    fsdaemon.mount(img.artifact_ref, mnt, prefetch="none", frontend="fscache")
    info = fsdaemon.mount_info(mnt)
    assert info["frontend"] == "fscache", info
    opts = erofs_mount_options(mnt)
    assert f"fsid={meta_hex(img)}" in opts and "domain_id=erostream" in opts, opts
    assert_tree_matches(img, mnt)
    assert_contents_match(img, mnt)
    s = fsdaemon.stats()
    # The metadata blob and both data blobs were opened; reads came as READ requests.
    assert s["cachefiles_opens"] >= 3, s
    assert s["cachefiles_reads"] >= 1 and s["events_denied"] == 0 and s["errors"] == 0, s
    fsdaemon.umount(mnt)
    # The kernel's cache objects, named by content: the metadata blob (fsid) and each data blob.
    objs = {p.name for p in cache_objects(fsdaemon.cache_dir)}
    for blob in img.data_blobs:
        assert "D" + blob["digest"].split(":", 1)[1] in objs, (blob, objs)
    assert "D" + meta_hex(img) in objs, objs


def test_same_image_mounted_twice(fsdaemon, vm_images, work):
    """The kernel wants a primary fsid once per domain (and a sysfs name, "<domain>,<fsid>" cut to
    36 characters, once): the second mount of one artifact gets fsid 2-<hex> after EEXIST, and
    both mounts read the same bytes, fetched once."""
    img = vm_images["a"]
    m1, m2 = work / "m1", work / "m2"
    fsdaemon.mount(img.artifact_ref, m1, prefetch="none", frontend="fscache")
    fsdaemon.mount(img.artifact_ref, m2, prefetch="none", frontend="fscache")
    assert f"fsid={meta_hex(img)}," in erofs_mount_options(m1) + ","
    assert f"fsid=2-{meta_hex(img)}," in erofs_mount_options(m2) + ","
    rel = "data/f07"
    o = checked_read(m1 / rel, img.expected(rel))
    assert o.clean and o.eio == 0, o
    s1 = fsdaemon.stats()
    o = checked_read(m2 / rel, img.expected(rel), drop_cache=True)
    assert o.clean and o.eio == 0, o
    s2 = fsdaemon.stats()
    assert delta(s2, s1, "chunks_fetched") == 0, (s1, s2)
    fsdaemon.umount(m1)
    o = checked_read(m2 / "etc/mid.bin", img.expected("etc/mid.bin"))
    assert o.clean and o.eio == 0, o
    fsdaemon.umount(m2)


def test_prefetch_none_fetches_only_what_is_read(fsdaemon, vm_images, work):
    """(b) With prefetch off, one small file costs one chunk (maybe two); read again after its
    page cache is dropped, it comes from the kernel's cache object: no fetch, no READ at all."""
    img = vm_images["a"]
    mnt = work / "mnt"
    fsdaemon.mount(img.artifact_ref, mnt, prefetch="none", frontend="fscache")
    s0 = fsdaemon.stats()
    rel = "data/f05"
    o = checked_read(mnt / rel, img.expected(rel))
    assert o.clean and o.eio == 0, o
    s1 = fsdaemon.stats()
    assert 1 <= delta(s1, s0, "chunks_fetched") <= 2, (s0, s1)
    assert delta(s1, s0, "bytes_fetched") <= data_file_size(5) + 256 * KIB, (s0, s1)
    assert delta(s1, s0, "bytes_fetched") < img.data_bytes() / 10, (s0, s1, img.data_bytes())
    present = sum(d["present_bytes"] for d in fsdaemon.mount_info(mnt)["devices"])
    assert 0 < present <= 2 * MIB, present

    o = checked_read(mnt / rel, img.expected(rel), drop_cache=True)
    assert o.clean and o.eio == 0, o
    s2 = fsdaemon.stats()
    assert delta(s2, s1, "bytes_fetched") == 0 and delta(s2, s1, "chunks_fetched") == 0, (s1, s2)
    assert delta(s2, s1, "cachefiles_reads") == 0, f"cached bytes went through the daemon again: {s1} {s2}"

    # 4 KiB in the middle of the 5 MiB file: its chunk, maybe a neighbour.
    big = img.expected("big/blob")
    o = checked_read(mnt / "big/blob", big, block=4096, offsets=[2 * MIB + MIB // 2])
    assert o.clean and o.ok_bytes == 4096, o
    s3 = fsdaemon.stats()
    assert 1 <= delta(s3, s2, "chunks_fetched") <= 2, (s2, s3)
    fsdaemon.umount(mnt)


def test_shared_base_layer_is_one_cache_object_fetched_once(fsdaemon, vm_images, work):
    """(c) Images a and b share their base layer's data blob: one cookie in erostream's domain,
    hence one cache object; what a's readers fetched, b's readers get without a fetch."""
    a, b = vm_images["a"], vm_images["b"]
    shared = {d["digest"] for d in a.data_blobs} & {d["digest"] for d in b.data_blobs}
    assert len(shared) == 1, "the test images should share exactly their base layer"
    base_hex = next(iter(shared)).split(":", 1)[1]
    ma, mb = work / "a", work / "b"
    fsdaemon.mount(a.artifact_ref, ma, prefetch="none", frontend="fscache")
    fsdaemon.mount(b.artifact_ref, mb, prefetch="none", frontend="fscache")
    # Files both images take from the base layer, unchanged.
    common = [rel for rel in a.regular_files() if rel in b.files and a.files[rel] == b.files[rel]
              and not rel.startswith("app/")]
    assert len(common) > 30, common
    for rel in common:
        o = checked_read(ma / rel, a.expected(rel))
        assert o.clean and o.eio == 0, o
    s1 = fsdaemon.stats()
    drop_file_cache(mb)
    for rel in common:
        o = checked_read(mb / rel, b.expected(rel))
        assert o.clean and o.eio == 0, o
    s2 = fsdaemon.stats()
    assert delta(s2, s1, "chunks_fetched") == 0 and delta(s2, s1, "bytes_fetched") == 0, (s1, s2)
    assert delta(s2, s1, "cachefiles_reads") == 0, f"b's reads of the shared blob reached the daemon: {s1} {s2}"
    # b's own layer is fetched for b.
    o = checked_read(mb / "app/g03", b.expected("app/g03"))
    assert o.clean and o.eio == 0, o
    assert fsdaemon.stats()["chunks_fetched"] > s2["chunks_fetched"]
    fsdaemon.umount(ma)
    fsdaemon.umount(mb)
    objs = [p for p in cache_objects(fsdaemon.cache_dir) if p.name == "D" + base_hex]
    assert len(objs) == 1, cache_objects(fsdaemon.cache_dir)


def test_sigkill_in_the_middle_of_reads_then_restart(fsdaemon, vm_images, work):
    """(d) SIGKILL while readers wait on READs: /dev/cachefiles stays open in the fd holder, the
    restarted daemon writes `restore`, answers the re-sent READs and the re-OPENs of objects
    whose anonymous fds died; no reader sees a wrong byte, everything reads back right, the
    mount was never unmounted. Then a clean stop (SIGTERM) and start keep serving too."""
    a, b = vm_images["a"], vm_images["b"]
    ma, mb = work / "a", work / "b"
    fsdaemon.mount(a.artifact_ref, ma, prefetch="none", frontend="fscache")
    fsdaemon.mount(b.artifact_ref, mb, prefetch="all", frontend="fscache")
    readers = start_readers(a, ma, 8)
    assert readers.first_block.wait(300), "no reader finished a file within 300 s"
    busy = sum(t.is_alive() for t in readers.threads)
    assert busy > 0, "all readers were done before the kill: the test killed an idle daemon"
    assert fsdaemon.kill() == -9
    holder_log = (fsdaemon.cache_dir / "holder.log").read_text()
    assert "keeping /dev/cachefiles" in holder_log, holder_log[-2000:]
    fsdaemon.start()
    readers.join()
    wrong = readers.wrong()
    assert not wrong, f"{len(wrong)} read(s) saw wrong bytes across the crash:\n  " + "\n  ".join(wrong[:40])
    eio = [o for o in readers.outcomes if o.eio]
    assert not eio, f"reads failed across the restart: {[(o.path, o.eio) for o in eio][:20]}"
    log = fsdaemon.log.read_text()
    assert "restore: the kernel sends again" in log, fsdaemon.log_digest()
    # The readers that were waiting were served by the new daemon (re-OPENs, then their READs).
    assert " READ object " in log and " OPEN object " in log, fsdaemon.log_digest()
    assert lib.is_mountpoint(ma) and lib.is_mountpoint(mb)
    assert {m["mountpoint"] for m in fsdaemon.list_mounts()} == {str(ma), str(mb)}
    assert_contents_match(a, ma)
    assert_contents_match(b, mb)

    # A clean stop with readers of uncached data: they are answered by the next daemon.
    drop_file_cache(mb)
    readers = start_readers(b, mb, n_threads=4)
    assert fsdaemon.stop() == 0
    fsdaemon.start()
    readers.join()
    assert not readers.wrong(), readers.wrong()[:20]
    assert not [o for o in readers.outcomes if o.eio]
    assert_tree_matches(b, mb)
    s = fsdaemon.stats()
    assert s["errors"] == 0 and s["events_denied"] == 0, s
    fsdaemon.umount(ma)
    fsdaemon.umount(mb)


def test_a_backend_that_cannot_deliver_ends_in_eio(fsdaemon, vm_images, work):
    """(e) One data blob of the layout replaced by garbage of its size, the other deleted after
    the mount: reads of files in either end in EIO (after the scheduler's retries), every READ is
    answered (no reader hangs), no wrong byte is ever returned, and the daemon says why with the
    request id."""
    img = vm_images["a"]
    layout = work / "layout"
    shutil.copytree(img.artifact_layout, layout)
    blobs = [d["digest"].split(":", 1)[1] for d in img.data_blobs]
    assert len(blobs) == 2
    bad = layout / "blobs" / "sha256" / blobs[0]
    size = bad.stat().st_size
    bad.unlink()  # the layout's files are read-only copies: replace rather than write
    bad.write_bytes(os.urandom(size))
    mnt = work / "mnt"
    fsdaemon.mount(f"oci:{layout}:{img.artifact_tag}", mnt, prefetch="none", frontend="fscache")
    (layout / "blobs" / "sha256" / blobs[1]).unlink()
    s0 = fsdaemon.stats()
    readers = start_readers(img, mnt, n_threads=4)
    readers.join(timeout=600)
    wrong = readers.wrong()
    assert not wrong, wrong[:20]
    failed = [o.path for o in readers.outcomes if o.eio]
    assert failed, "no read failed although no data blob can be fetched"
    ok = [o.path for o in readers.outcomes if not o.eio and o.ok_bytes > 0]
    # Only files inlined in the metadata blob (or empty) can be read.
    for p in ok:
        assert os.path.getsize(p) <= 4096, f"{p} read fine although its data blob is gone"
    s1 = fsdaemon.stats()
    assert delta(s1, s0, "events_denied") >= 1 and delta(s1, s0, "verify_failures") >= 1, (s0, s1)
    log = fsdaemon.log.read_text()
    assert any("EIO" in l and "[cf-" in l for l in log.splitlines()), fsdaemon.log_digest()
    fsdaemon.umount(mnt)
