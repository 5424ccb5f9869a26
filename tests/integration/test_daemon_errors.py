"""Errors that users meet: bad REF, unreachable registry, missing artifact, bad mountpoints, a
full cache disk. erostreamctl exits 1 with a message naming the problem, nothing is left
mounted, the daemon stays up, and a mount that existed before keeps working."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import erostream_testlib as lib
from daemon_fixtures import *  # noqa: F401,F403
from daemon_fixtures import (LoopExt4, assert_contents_match, checked_read, fill_disk, free_bytes, log_tail,
                             push_oci, skopeo_env)

pytestmark = [pytest.mark.kernel, pytest.mark.daemon]


@pytest.fixture
def with_other_mount(daemon, stream_images, work):
    """The daemon with image a mounted from its local layout and read completely."""
    img = stream_images["a"]
    mnt = work / "other"
    daemon.mount(img.artifact_ref, mnt, prefetch="none")
    assert_contents_match(img, mnt, drop_cache=False)
    return daemon, img, mnt


def other_mount_still_works(d, img, mnt) -> None:
    d.health()
    assert str(mnt) in [m["mountpoint"] for m in d.list_mounts()]
    assert lib.is_mountpoint(mnt)
    assert_contents_match(img, mnt, drop_cache=True)


def assert_clear_error(d, r, words, what) -> None:
    assert r.returncode == 1, f"{what}: expected exit 1\n{d.describe(r)}"
    err = r.stderr.strip()
    assert err, f"{what}: failed without a message\n{d.describe(r)}"
    assert any(w.lower() in err.lower() for w in words), \
        f"{what}: the message names none of {words}:\n{d.describe(r)}"
    assert "Traceback" not in err and "terminate called" not in err, d.describe(r)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return port


def test_bad_refs(with_other_mount, stream_images, work):
    d, img, other = with_other_mount
    layout = img.artifact_layout
    cases = [
        ("not-a-ref", ("not-a-ref", "reference", "invalid", "unsupported")),
        ("docker://", ("docker://", "reference", "invalid", "empty")),
        ("ftp://example.com/x:y", ("ftp", "unsupported", "transport", "scheme")),
        (f"oci:{work}/no-such-layout:art", ("no-such-layout", "no such file", "not found")),
        (f"oci:{layout}:no-such-tag", ("no-such-tag",)),
        (f"oci:{layout}@sha256:{'0' * 64}", ("0000000000", "not found")),
        (f"oci:{layout}@sha256:abc", ("sha256:abc", "digest", "invalid")),
        # the source image is no erostream artifact
        (img.source_ref, ("artifact", "erostream", "artifactType", "media type")),
    ]
    mnt = work / "mnt"
    mnt.mkdir()
    for ref, words in cases:
        r = d.mount(ref, mnt, ok=False)
        assert_clear_error(d, r, words, f"mount {ref}")
        assert not lib.is_mountpoint(mnt), f"{ref}: left a mount"
        d.health()
    other_mount_still_works(d, img, other)


def test_registry_errors(with_other_mount, registry, published, stream_images, work):
    d, img, other = with_other_mount
    mnt = work / "mnt"
    mnt.mkdir()
    port = closed_port()
    bare = "daemon-errors/bare"
    push_oci(img.layout, img.tag, registry.host, bare, env=skopeo_env(work))
    pub = published["a"]
    cases = [
        (f"docker://127.0.0.1:{port}/daemon/a:a", (f"127.0.0.1:{port}", "connect", "refused"), "unreachable registry"),
        (f"docker://{registry.host}/{bare}:{img.tag}", ("artifact", "referrer", "no erostream"),
         "image without artifact"),
        (f"docker://{registry.host}/{bare}@{img.image.manifest_digest}", ("artifact", "referrer", "no erostream"),
         "image digest without artifact"),
        (f"docker://{registry.host}/daemon/a@sha256:{'0' * 64}", ("not found", "unknown", "404", "0000000000"),
         "missing artifact digest"),
        (f"docker://{registry.host}/daemon/a:no-such-tag", ("no-such-tag", "not found", "unknown", "404"),
         "missing tag"),
        (f"docker://{registry.host}/no/such/repo:a", ("not found", "unknown", "404", "no/such/repo"),
         "missing repository"),
        # the artifact digest asked for in a repository that does not have it
        (f"docker://{registry.host}/{bare}@{pub.artifact_digest}", ("not found", "unknown", "404"),
         "artifact of another repository"),
    ]
    for ref, words, what in cases:
        r = d.mount(ref, mnt, ok=False)
        assert_clear_error(d, r, words, what)
        assert not lib.is_mountpoint(mnt), f"{what}: left a mount"
        d.health()
    s = d.stats()
    assert s["errors"] >= 1, s
    # The control API's statuses: a bad reference is the client's fault (400), an image without
    # artifact is not found (404, saying how to make one), an unreachable registry is a bad
    # gateway (502, naming the host and what went wrong).
    for ref, status, words, what in [
        (f"docker://{registry.host}/Bad_Repo:x", 400, ("Bad_Repo", "reference"), "bad repository name"),
        (f"docker://{registry.host}/{bare}:{img.tag}", 404, ("erostream-mkfs convert",), "image without artifact"),
        (f"docker://127.0.0.1:{port}/daemon/a:a", 502, (f"127.0.0.1:{port}",), "unreachable registry"),
    ]:
        r = d.api("POST", "/v1/mounts", {"ref": ref, "mountpoint": str(mnt), "prefetch": "none"})
        assert r.status == status, f"{what}: POST /v1/mounts {ref}: {r.status} {r.text}"
        err = r.json()["error"]
        assert all(w in err for w in words), f"{what}: the error names not all of {words}: {err}"
        assert not lib.is_mountpoint(mnt), f"{what}: left a mount"
    assert "refused" in d.api("POST", "/v1/mounts", {"ref": f"docker://127.0.0.1:{port}/daemon/a:a",
                                                     "mountpoint": str(mnt)}).json()["error"].lower()
    other_mount_still_works(d, img, other)


def test_bad_mountpoints_and_umounts(with_other_mount, stream_images, work):
    d, img, other = with_other_mount
    b = stream_images["b"]
    missing = work / "no-such-dir"
    afile = work / "a-file"
    afile.write_text("not a directory\n")
    for target, words, what in [
        (missing, ("no-such-dir", "no such file", "not found", "does not exist"), "missing mountpoint"),
        (afile, ("a-file", "not a directory"), "mountpoint is a file"),
        (other, (str(other), "already", "busy", "mounted"), "mountpoint in use"),
    ]:
        r = d.ctl("mount", b.artifact_ref, str(target), "--prefetch", "none")
        assert_clear_error(d, r, words, what)
    assert not missing.exists() or not lib.is_mountpoint(missing)
    # the other mount still shows image a, not b
    o = checked_read(other / "app/name", img.expected("app/name"), drop_cache=True)
    assert o.clean and o.eio == 0, o
    r = d.ctl("umount", str(work / "never-mounted"))
    assert_clear_error(d, r, ("never-mounted", "not mounted", "no mount", "unknown"), "umount of no mount")
    r = d.ctl("mount", "relative/ref")  # too few arguments: usage
    assert r.returncode == 2, d.describe(r)
    r = d.ctl("frobnicate")
    assert r.returncode == 2, d.describe(r)
    other_mount_still_works(d, img, other)


def test_daemon_not_running(daemon, work):
    """erostreamctl against a socket nobody listens on: exit 1 naming the socket."""
    daemon.stop()
    r = daemon.ctl("list")
    assert_clear_error(daemon, r, (str(daemon.socket), "connect", "erostreamd"), "no daemon")


def test_full_cache_disk(daemons, source, stream_images, work):
    """A 64 MiB ext4 cache disk: image a is mounted and read (cached); the disk is then filled.
    Mounting image b fails with a message naming the lack of space, or its reads fail with EIO,
    never with wrong bytes; image a keeps working; once space is back, b reads correctly. From
    local layouts and from the registry."""
    a, b = stream_images["a"], stream_images["b"]
    fs = LoopExt4(work / "cache.ext4", work / "cache", 64 << 20)
    with fs:
        d = daemons(fs.mountpoint, name="small")
        try:
            ma, mb = work / "ma", work / "mb"
            d.mount(source("a"), ma, prefetch="none")
            assert_contents_match(a, ma, drop_cache=False)
            filler = fill_disk(fs.mountpoint)
            assert free_bytes(fs.mountpoint) < 64 << 10
            s0 = d.stats()
            r = d.mount(source("b"), mb, prefetch="none", ok=False)
            failed_reads = 0
            if r.returncode != 0:
                assert_clear_error(d, r, ("space", "ENOSPC", "full"), "mount with a full cache disk")
                assert not lib.is_mountpoint(mb)
                api = d.api("POST", "/v1/mounts", {"ref": source("b"), "mountpoint": str(mb), "prefetch": "none"})
                assert api.status == 507, f"a full cache disk is 507 Insufficient Storage: {api.status} {api.text}"
                assert not lib.is_mountpoint(mb)
            else:
                for rel in b.regular_files("app/") + b.regular_files("data/"):
                    o = checked_read(mb / rel, b.expected(rel))
                    assert not o.wrong and not o.other_errors, f"full disk: /{rel}: {o}"
                    failed_reads += o.eio
                assert failed_reads, "every read of b succeeded on a full cache disk: where did the bytes go?"
                assert d.stats()["errors"] > s0["errors"]
            # a is unharmed: it was cached before the disk filled up
            other_mount_still_works(d, a, ma)

            filler.unlink()
            if not lib.is_mountpoint(mb):
                d.mount(source("b"), mb, prefetch="none")
            assert_contents_match(b, mb, drop_cache=True)
            lib.assert_same_tree(b.reference, mb, skip_mtime=b.skip_mtime)
            other_mount_still_works(d, a, ma)
            d.umount(mb)
            d.umount(ma)
            d.stop()
        finally:
            d.cleanup()  # before the cache file system goes away
