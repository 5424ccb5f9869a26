"""Mounting through erostreamd (fanotify front end) and comparing the mounted tree with
`umoci unpack` of the source image, entry by entry (type, mode, owner, mtime, xattrs, content,
hardlinks): from a local OCI layout (oci:DIR:TAG and oci:DIR@sha256:...), and from Debian's
docker-registry by image reference (discovery through the referrers tag schema) and by
digest-pinned artifact reference."""

from __future__ import annotations

import json

import pytest

import erostream_testlib as lib
from daemon_fixtures import *  # noqa: F401,F403
from daemon_fixtures import (assert_contents_match, assert_tree_matches, daemon_env, log_tail, push_oci,
                             skopeo_env)

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
