"""Mirrors in containerd's hosts.toml form (--hosts-dir) and HTTP proxies from the environment.

Two fault proxies stand in front of the same docker-registry: "origin" is the registry address
used in image references, "mirror" is listed in hosts.toml for it. Both record every request,
so the tests see which host served what."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.checks import local_artifact_matches  # noqa: E402
from registry.fault_proxy import FaultProxy  # noqa: E402
from registry.fixtures import *  # noqa: E402,F401,F403
from registry.fixtures import REPO, TAG  # noqa: E402
from registry import tools  # noqa: E402


@pytest.fixture
def origin_and_mirror(proxy_factory, plain_registry):
    return (proxy_factory(plain_registry.host, name="origin"),
            proxy_factory(plain_registry.host, name="mirror"))


def convert_with_hosts(mkfs, origin, hosts_dir, tmp_path, **env):
    out = tmp_path / "out"
    r = mkfs.run("convert", "--quiet", "--hosts-dir", str(hosts_dir),
                 f"docker://{origin.host}/{REPO}:{TAG}", f"oci:{out}:art",
                 env=mkfs.env(EROSTREAM_RETRY_MAX="2", **env))
    return r, out


def blob_gets(px, test_image, status=None):
    return [r for r in px.requests(method="GET", path="/blobs/sha256:", status=status)
            if r.path.rsplit("/", 1)[-1] in test_image.blob_digests]


def layers_served(px, test_image) -> set:
    """Layer digests px answered with 200 (the config blob is not required: a converter may not
    need it)."""
    return {r.path.rsplit("/", 1)[-1] for r in blob_gets(px, test_image, 200)} & set(test_image.layer_digests)


def test_mirror_serves_pull_and_resolve(mkfs, origin_and_mirror, test_image, reference, tmp_path):
    origin, mirror = origin_and_mirror
    hosts = tmp_path / "certs.d"
    tools.write_hosts_toml(hosts, origin.host, origin.url, [(mirror.url, ["pull", "resolve"])])
    r, out = convert_with_hosts(mkfs, origin, hosts, tmp_path)
    assert r.returncode == 0, r.describe()
    assert mirror.count(method="GET", path=f"/v2/{REPO}/manifests/{TAG}$") + \
        mirror.count(method="HEAD", path=f"/v2/{REPO}/manifests/{TAG}$") >= 1, "tag not resolved at the mirror"
    assert layers_served(mirror, test_image) == set(test_image.layer_digests)
    assert blob_gets(origin, test_image) == [], "blobs came from the origin although the mirror works"
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_pull_only_mirror_resolves_tags_at_origin(mkfs, origin_and_mirror, test_image, reference, tmp_path):
    origin, mirror = origin_and_mirror
    hosts = tmp_path / "certs.d"
    tools.write_hosts_toml(hosts, origin.host, origin.url, [(mirror.url, ["pull"])])
    r, out = convert_with_hosts(mkfs, origin, hosts, tmp_path)
    assert r.returncode == 0, r.describe()
    assert mirror.count(path=f"/manifests/{TAG}$") == 0, "a pull-only mirror must not resolve tags"
    assert origin.count(path=f"/manifests/{TAG}$") >= 1
    assert layers_served(mirror, test_image) == set(test_image.layer_digests)
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


@pytest.mark.parametrize("failure", ["503", "reset", "404"])
def test_failing_mirror_falls_back_to_origin(failure, mkfs, origin_and_mirror, test_image, reference,
                                             tmp_path):
    origin, mirror = origin_and_mirror
    if failure == "503":
        mirror.add_rule("status", path="^/v2/", status=503)
    elif failure == "reset":
        mirror.add_rule("reset", path="^/v2/")
    else:  # a mirror that does not have the blobs (a cold pull-through cache refusing them)
        mirror.add_rule("status", path="/blobs/", status=404)
    hosts = tmp_path / "certs.d"
    tools.write_hosts_toml(hosts, origin.host, origin.url, [(mirror.url, ["pull", "resolve"])])
    r, out = convert_with_hosts(mkfs, origin, hosts, tmp_path)
    assert r.returncode == 0, r.describe()
    assert mirror.count(listener="proxy") >= 1, "the mirror was never tried"
    assert len({r.path for r in blob_gets(origin, test_image, 200)}) >= 1
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_mirror_for_another_registry_is_not_used(mkfs, origin_and_mirror, test_image, reference, tmp_path):
    origin, mirror = origin_and_mirror
    hosts = tmp_path / "certs.d"
    tools.write_hosts_toml(hosts, "127.0.0.1:1", "http://127.0.0.1:1", [(mirror.url, ["pull", "resolve"])])
    r, out = convert_with_hosts(mkfs, origin, hosts, tmp_path)
    assert r.returncode == 0, r.describe()
    assert mirror.count(listener=None) == 0
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


# -- HTTP proxies from the environment ----------------------------------------------------------

@pytest.fixture
def forward_proxy():
    with FaultProxy(None, name="http-proxy") as px:  # forwards absolute-form requests only
        yield px


def _convert(mkfs, registry, tmp_path, env):
    out = tmp_path / "out"
    r = mkfs.run("convert", "--quiet", f"docker://{registry.host}/{REPO}:{TAG}", f"oci:{out}:art",
                 env=mkfs.env(**env))
    assert r.returncode == 0, r.describe()
    return out


@pytest.mark.parametrize("names", [("http_proxy",), ("HTTP_PROXY",), ("http_proxy", "HTTP_PROXY")])
def test_http_proxy_from_environment(names, mkfs, plain_registry, forward_proxy, test_image, reference,
                                     tmp_path):
    """HTTP_PROXY is honoured (libcurl itself reads only lower-case http_proxy for http:// URLs,
    so upper case needs the client's own handling)."""
    env = {n: forward_proxy.url for n in names}
    out = _convert(mkfs, plain_registry, tmp_path, env)
    recs = forward_proxy.requests()
    assert recs and all(r.proxy_form for r in recs)
    assert layers_served(forward_proxy, test_image) == set(test_image.layer_digests)
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.1,localhost", "*"])
def test_no_proxy_bypasses_proxy(no_proxy, mkfs, plain_registry, forward_proxy, reference, tmp_path):
    env = {"http_proxy": forward_proxy.url, "HTTP_PROXY": forward_proxy.url,
           "NO_PROXY": no_proxy, "no_proxy": no_proxy}
    out = _convert(mkfs, plain_registry, tmp_path, env)
    assert forward_proxy.count(listener=None) == 0
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)
