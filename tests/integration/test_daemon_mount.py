"""Mounting through erostreamd (fanotify front end) and comparing the mounted tree with
`umoci unpack` of the source image, entry by entry (type, mode, owner, mtime, xattrs, content,
hardlinks): from a local OCI layout (oci:DIR:TAG and oci:DIR@sha256:...), and from Debian's
docker-registry by image reference (discovery through the referrers tag schema) and by
digest-pinned artifact reference."""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest

import erostream_testlib as lib
from daemon_fixtures import *  # noqa: F401,F403
from daemon_fixtures import (assert_contents_match, assert_tree_matches, checked_read, daemon_env, log_tail,
                             push_oci, skopeo_env)

pytestmark = [pytest.mark.kernel, pytest.mark.daemon]


def check_listed(daemon, mnt, img, ref, prefetch):
    info = daemon.mount_info(mnt)
    assert info["ref"] == ref, info
    assert info["artifact"] == img.artifact_digest, info
    assert info["frontend"] == "fanotify", info
    assert info["prefetch"] == prefetch, info
    assert [d["blob"] for d in info["devices"]] == [d["digest"] for d in img.data_blobs], info
    return info


def test_mount_local_layout_by_tag(daemon, stream_images, work):
    """oci:DIR:TAG with the default prefetch (all): the tree is read while the background
    prefetch fills the same cache files."""
    img = stream_images["a"]
    mnt = work / "mnt"
    daemon.mount(img.artifact_ref, mnt, prefetch=None)
    check_listed(daemon, mnt, img, img.artifact_ref, "all")
    assert_tree_matches(img, mnt)
    assert daemon.health()["mounts"] == 1
    daemon.umount(mnt)
    assert daemon.health()["mounts"] == 0


def test_mount_local_layout_by_digest(daemon, stream_images, work):
    img = stream_images["b"]
    mnt = work / "mnt"
    daemon.mount(img.artifact_ref_by_digest, mnt, prefetch="none")
    check_listed(daemon, mnt, img, img.artifact_ref_by_digest, "none")
    assert_tree_matches(img, mnt)
    # a second pass reads from the cache files (page cache dropped): still the same bytes
    assert_contents_match(img, mnt, drop_cache=True)
    daemon.umount(mnt)


def test_two_mounts_of_one_artifact(daemon, stream_images, work):
    img = stream_images["a"]
    m1, m2 = work / "m1", work / "m2"
    daemon.mount(img.artifact_ref, m1, prefetch="none")
    daemon.mount(img.artifact_ref, m2, prefetch="none")
    assert {m["mountpoint"] for m in daemon.list_mounts()} == {str(m1), str(m2)}
    assert_tree_matches(img, m2)
    assert_tree_matches(img, m1)
    daemon.umount(m1)
    assert_contents_match(img, m2)  # the other mount is not disturbed by the umount
    daemon.umount(m2)


@pytest.mark.parametrize("layers", ["kitchen_sink", "demo"])
def test_mount_other_trees(daemon, mkfs, work, layers):
    """Every file type, xattrs, big ids, fractional mtimes, whiteouts, an opaque dir (kitchen
    sink); and the demo image, whose base layer holds only inlined files, so that its data blob
    has no chunk at all (a device of size 0)."""
    make = {"kitchen_sink": lib.kitchen_sink_layers, "demo": lib.demo_layers}[layers]
    image = lib.build_image(work / "layout", "t", make(), workdir=work)
    art = work / "art"
    mkfs("convert", "--quiet", image.ref, f"oci:{art}:art")
    reference = lib.reference_rootfs(image, work)
    mnt = work / "mnt"
    daemon.mount(f"oci:{art}:art", mnt, prefetch="none")
    lib.assert_same_tree(reference, mnt, skip_mtime=lib.implicit_dirs(image.tar_paths))
    daemon.umount(mnt)
    daemon.mount(f"oci:{art}:art", mnt, prefetch="all")
    lib.assert_same_tree(reference, mnt, skip_mtime=lib.implicit_dirs(image.tar_paths))
    daemon.umount(mnt)


def test_mount_from_registry_published_by_tests(daemon, published, stream_images, work):
    """The registry holds the artifact and the referrers tag index written by the tests' own
    client: discovery by image tag and by image digest, and the digest-pinned artifact."""
    img, pub = stream_images["a"], published["a"]
    refs = [pub.image_ref(), pub.image_ref(by_digest=True), pub.artifact_ref()]
    for i, ref in enumerate(refs):
        mnt = work / f"mnt{i}"
        daemon.mount(ref, mnt, prefetch="none" if i else "all")
        info = check_listed(daemon, mnt, img, ref, "none" if i else "all")
        assert info["artifact"] == pub.artifact_digest
        assert_tree_matches(img, mnt)
        daemon.umount(mnt)


def test_mount_from_registry_after_mkfs_push(daemon, registry, stream_images, mkfs, work, docker_config_dir):
    """The whole path of issue 4: image pushed with skopeo, converted and pushed as a referrer by
    `erostream-mkfs convert docker://... docker://...`, mounted by image reference (discovery)
    and by digest-pinned artifact reference."""
    img = stream_images["b"]
    repo = "mkfs-push/b"
    push_oci(img.layout, img.tag, registry.host, repo, env=skopeo_env(work))
    src = f"docker://{registry.host}/{repo}:{img.tag}"
    dest = f"docker://{registry.host}/{repo}"
    mkfs.require()
    r = lib.run([mkfs.path, "convert", "--quiet", "--json", src, dest], check=False,
                env=daemon_env(docker_config_dir))
    assert r.returncode == 0, (f"erostream-mkfs convert {src} {dest} failed (exit {r.returncode}); the registry "
                               f"push of erostream-mkfs is needed here:\n{r.stderr[-3000:]}")
    doc = json.loads(r.stdout)
    arts = doc["artifacts"] if isinstance(doc, dict) else doc
    assert len(arts) == 1, doc
    artifact = arts[0]["digest"]
    refs = [src, f"docker://{registry.host}/{repo}@{img.image.manifest_digest}",
            f"docker://{registry.host}/{repo}@{artifact}"]
    for i, ref in enumerate(refs):
        mnt = work / f"mnt{i}"
        daemon.mount(ref, mnt, prefetch="none")
        info = daemon.mount_info(mnt)
        assert info["artifact"] == artifact, f"{ref}: mounted {info['artifact']}, pushed {artifact}"
        assert_tree_matches(img, mnt)
        daemon.umount(mnt)
    assert daemon.health()["status"] == "ok", daemon.log_digest()


def test_mount_with_token_auth_and_storage_redirects(daemons, stream_images, proxies, work, docker_config_dir):
    """A registry with token auth (Debian's docker-registry + the tests' token server), the
    credentials in DOCKER_CONFIG, and blob GETs answered with redirects to a storage host with
    signed URLs (the fault proxy, as ACR and Docker Hub do): the mount resolves and reads through
    bearer tokens, the storage host never sees an Authorization header, signed URLs are reused,
    and when they expire the daemon goes back to the registry for new ones."""
    from daemon_fixtures import DockerRegistry, publish, reg_tools
    from registry.fault_proxy import Rule
    from registry.token_server import TokenServer
    img = stream_images["a"]
    user = ("tokenuser", "tokenpass")
    with TokenServer(work / "token", users={user[0]: user[1]}) as ts, \
            DockerRegistry(work / "reg", auth="token", token_server=ts) as reg:
        publish(reg.host, img, "auth/a", work, creds=user)
        proxy = proxies(reg.host)
        blobs = "|".join(re.escape(d["digest"]) for d in img.data_blobs)
        proxy.set_rules([Rule("redirect", method="GET", path=rf"/blobs/({blobs})$", ttl=600)])
        reg_tools.write_docker_config(docker_config_dir, auths={proxy.host: user})
        d = daemons()
        ts.clear()
        mnt = work / "mnt"
        ref = f"docker://{proxy.host}/auth/a:{img.tag}"
        d.mount(ref, mnt, prefetch="none")
        assert d.mount_info(mnt)["artifact"] == img.artifact_digest
        files = img.regular_files("data/")
        half = len(files) // 2
        for rel in files[:half]:
            o = checked_read(mnt / rel, img.expected(rel))
            assert o.clean and o.eio == 0, f"/{rel}: {o}\n{d.log_digest()}"
        assert ts.count() >= 1, "no token was issued: did the daemon authenticate at all?"
        storage = proxy.requests(listener="storage", method="GET")
        assert storage, "no blob bytes came from the storage host: were the redirects followed?"
        assert all(r.status in (200, 206) for r in storage), [(r.path, r.status) for r in storage]
        assert not proxy.violations, proxy.violations
        redirects = proxy.requests(method="GET", path=rf"/blobs/({blobs})$", status=307)
        # Signed URLs are reused for later ranges of the same blob: fewer redirects than ranges.
        assert 1 <= len(redirects) < len(storage), (len(redirects), len(storage))

        # Expired signed URLs: the storage host refuses them, the daemon asks the registry again.
        proxy.expire_signed_urls()
        proxy.reset_records()
        for rel in files[half:] + img.regular_files("app/"):
            o = checked_read(mnt / rel, img.expected(rel))
            assert o.clean and o.eio == 0, f"/{rel}: {o}\n{d.log_digest()}"
        assert proxy.requests(listener="storage", status=403), "the expired URLs were not tried"
        assert proxy.requests(method="GET", path=rf"/blobs/({blobs})$", status=307), "no new redirect"
        assert not proxy.violations, proxy.violations
        assert_tree_matches(img, mnt)
        d.umount(mnt)
        d.stop()


def test_registry_settings_from_the_config_file(daemons, registry, published, stream_images, proxies, work):
    """The [registry] section of erostreamd's config file: a hosts.toml mirror (hosts_dir) serves
    manifests and the blob ranges (asked with ?ns=REGISTRY), the registry itself is not asked for them;
    http_proxy sends every request (mounting and ranges) through an HTTP proxy."""
    from daemon_fixtures import reg_tools
    img, pub = stream_images["a"], published["a"]
    blobs = "|".join(re.escape(d["digest"]) for d in img.data_blobs)
    origin = proxies(registry.host, name="origin")
    mirror = proxies(registry.host, name="mirror")
    hosts = work / "certs.d"
    reg_tools.write_hosts_toml(hosts, origin.host, origin.url, [(mirror.url, ["pull", "resolve"])])
    cfg = work / "mirror.toml"
    cfg.write_text(f'[registry]\nhosts_dir = "{hosts}"\n')
    d = daemons(name="mirrored", extra_args=["--config", str(cfg)])
    mnt = work / "m1"
    d.mount(pub.image_ref(origin.host), mnt, prefetch="none")
    for rel in ("data/f04", "app/g01"):
        o = checked_read(mnt / rel, img.expected(rel))
        assert o.clean and o.eio == 0, f"/{rel}: {o}\n{d.log_digest()}"
    ranges = mirror.requests(method="GET", path=rf"/blobs/({blobs})$")
    assert ranges, "no blob range came from the mirror"
    assert all(urllib.parse.parse_qs(r.query).get("ns") == [origin.host] for r in ranges), [r.query for r in ranges]
    assert all("range" in r.headers for r in ranges)
    # Only the referrers API may be asked at the origin (the mirror has none: the client then
    # asks upstream before it falls back to the tag schema); manifests and blobs come from the mirror.
    asked = [(r.method, r.path) for r in origin.requests() if "/referrers/" not in r.path]
    assert asked == [], asked
    d.umount(mnt)
    d.stop()

    # An HTTP proxy: requests in absolute form, for the blocking path and the loop alike.
    web_proxy = proxies(registry.host, name="web-proxy")
    cfg = work / "proxy.toml"
    cfg.write_text(f'[registry]\nhosts_dir = ""\nhttp_proxy = "{web_proxy.url}"\n')
    d = daemons(name="proxied", extra_args=["--config", str(cfg)])
    d.mount(pub.image_ref(), mnt, prefetch="none")
    o = checked_read(mnt / "data/f06", img.expected("data/f06"))
    assert o.clean and o.eio == 0, f"{o}\n{d.log_digest()}"
    recs = web_proxy.requests()
    assert any("/manifests/" in r.path for r in recs), [(r.method, r.path) for r in recs]
    assert any(re.search(rf"/blobs/({blobs})$", r.path) and "range" in r.headers for r in recs), \
        [(r.method, r.path) for r in recs]
    assert all(r.proxy_form for r in recs), [(r.path, r.proxy_form) for r in recs]
    d.umount(mnt)
