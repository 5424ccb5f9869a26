"""The fscache front end end to end from a registry, in the test guest: Debian's docker-registry on
the guest's loopback, the image pushed with skopeo and converted there by erostream-mkfs (artifact
pushed as a referrer, found through the sha256-<hex> tag: docker-registry 2.8 has no referrers
API), mounted by its image reference through the tests' fault proxy. What the registry sent is
counted at the proxy, independently of the daemon's own counters; a registry that keeps failing
ends in EIO for the reader and an answered READ, never a hang; once it recovers, everything reads
back right.

Runs only inside the guest (tests/vm/run-guest-tests)."""

from __future__ import annotations

import re

import pytest

import erostream_testlib as lib
from daemon_fixtures import (KIB, assert_contents_match, assert_tree_matches, checked_read, data_file_size)
from registry.fault_proxy import Rule
from registry.registry import push_oci, skopeo_env

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.daemon]

RETRIES = {"EROSTREAM_RETRY_MAX": "2", "EROSTREAM_RETRY_BASE_MS": "10"}


@pytest.fixture
def converted(registry, vm_images, mkfs, tmp_path):
    """Image a pushed to the guest's registry (vm/a:a) and converted from the registry to the
    registry."""
    img = vm_images["a"]
    push_oci(img.layout, img.tag, registry.host, "vm/a", dest_tag="a", env=skopeo_env(tmp_path))
    r = mkfs("convert", "--quiet", f"docker://{registry.host}/vm/a:a", f"docker://{registry.host}/vm/a",
             check=False, timeout=1200)
    assert r.returncode == 0, f"erostream-mkfs convert from and to the guest's registry failed:\n{r.stderr[-3000:]}"
    return img


def data_blob_gets(proxy, img):
    rx = "|".join(re.escape(d["digest"]) for d in img.data_blobs)
    return [r for r in proxy.requests(method="GET") if re.search(rf"/blobs/({rx})$", r.path)]


def test_registry_image_through_fscache(daemons, registry, converted, proxies, work):
    img = converted
    proxy = proxies(registry.host)
    d = daemons(frontend="fscache", env_extra=RETRIES)
    mnt = work / "mnt"
    d.mount(f"docker://{proxy.host}/vm/a:a", mnt, prefetch="none", frontend="fscache")
    info = d.mount_info(mnt)
    assert info["frontend"] == "fscache", info

    # One small file: its chunk (maybe two), by range requests, as the registry saw it.
    proxy.reset_records()
    s0 = d.stats()
    rel = "data/f04"
    o = checked_read(mnt / rel, img.expected(rel))
    assert o.clean and o.eio == 0, o
    s1 = d.stats()
    gets = data_blob_gets(proxy, img)
    sent = sum(r.body_bytes for r in gets)
    assert 1 <= len(gets) <= 2, [(r.path, r.headers.get("range"), r.body_bytes) for r in gets]
    assert all("range" in r.headers for r in gets), "data blob GETs without a Range header"
    assert sent <= data_file_size(4) + 256 * KIB, f"the registry sent {sent} bytes for one small file"
    assert 1 <= s1["chunks_fetched"] - s0["chunks_fetched"] <= 2, (s0, s1)

    # A registry failing every data request: EIO for the reader, the READ answered, the daemon up.
    proxy.set_rules([Rule("status", method="GET", path=r"/blobs/sha256:[0-9a-f]{64}$", status=500)])
    rel = "data/f11"
    o = checked_read(mnt / rel, img.expected(rel))
    assert not o.wrong and not o.other_errors, o
    assert o.eio > 0 and o.ok_bytes == 0, f"reads succeeded through a registry failing every blob GET: {o}"
    s2 = d.stats()
    assert s2["events_denied"] > s1["events_denied"], (s1, s2)
    assert any("EIO" in l and "[cf-" in l for l in d.log.read_text().splitlines()), d.log_digest()
    d.health()

    # Recovered: everything reads back right; the tree is the image (umoci's unpack of it).
    proxy.clear_rules()
    assert_contents_match(img, mnt, drop_cache=True)
    assert_tree_matches(img, mnt)
    d.umount(mnt)
    assert not lib.is_mountpoint(mnt)
