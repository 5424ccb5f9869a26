"""The registry test infrastructure itself: docker-registry variants, the token server, the fault
proxy with its storage host, and the referrers server, exercised with skopeo, curl and the tests'
own client. None of this needs erostream-mkfs."""

import base64
import hashlib
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.client import RegistryClient, parse_challenge  # noqa: E402
from registry.fault_proxy import FaultProxy, TokenBucket  # noqa: E402
from registry.fixtures import *  # noqa: E402,F401,F403
from registry.fixtures import REPO, TAG, INDEX_REPO  # noqa: E402
from registry.images import (MT_INDEX, MT_MANIFEST, make_test_image, read_layout_manifest,  # noqa: E402
                             sha256_digest, verify_layout_blobs)
from registry.referrers_server import ReferrersServer  # noqa: E402
from registry.registry import DockerRegistry, RegistryError, skopeo_copy, skopeo_env, to_yaml  # noqa: E402
from registry.token_server import TokenServer, decode_jwt, libtrust_key_id  # noqa: E402
from registry import tools  # noqa: E402

CURL = "/usr/bin/curl"


def curl(*args, timeout=60):
    """(exit code, status, headers dict, body bytes) of one curl call."""
    cmd = [CURL, "-s", "-S", "-D", "-", "--max-time", "30", *args]
    r = subprocess.run(cmd, capture_output=True, timeout=timeout)
    out = r.stdout
    status, headers = None, {}
    # curl -D - prints every header block (100 Continue, redirects) before the body
    while out.startswith(b"HTTP/"):
        head, _, out = out.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers[k.strip().lower()] = v.strip()
    return r.returncode, status, headers, out


def raw_get(host: str, path: str, headers=None):
    """One GET on a fresh connection: (status, headers, body or the exception that ended it)."""
    h, _, p = host.rpartition(":")
    c = http.client.HTTPConnection(h, int(p), timeout=30)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        try:
            body = r.read()
        except Exception as e:  # noqa: BLE001 - the test inspects the failure kind
            body = e
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


# -- images -------------------------------------------------------------------------------------

def test_images_are_deterministic_and_valid(tmp_path, test_image):
    d2 = make_test_image(tmp_path / "again", TAG)
    assert d2["digest"] == test_image.digest
    assert verify_layout_blobs(test_image.layout) == []
    assert len(test_image.manifest["layers"]) == 3
    r = subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{test_image.layout}:{TAG}",
                        str(tmp_path / "bundle")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "bundle" / "rootfs"
    assert (root / "etc/hostname").read_text() == "erostream-test-upper\n"
    assert not (root / "etc/removed").exists()
    assert sorted(p.name for p in (root / "opt/old").iterdir()) == ["new"]
    assert (root / "usr/bin/sh").is_symlink()
    assert (root / "usr/bin/tool").stat().st_ino == (root / "usr/bin/tool-link").stat().st_ino
    assert (root / "usr/bin/tool").stat().st_size > 3 << 20


# -- docker-registry ----------------------------------------------------------------------------

def test_to_yaml_nests_maps_and_lists():
    y = to_yaml({"a": {"b": 1, "c": "x:y", "d": True, "e": ["p", "q"]}})
    assert y == 'a:\n  b: 1\n  c: "x:y"\n  d: true\n  e:\n    - "p"\n    - "q"\n'


def test_plain_registry_serves_the_pushed_image(plain_registry, test_image, index_image):
    assert plain_registry.port > 0
    rc, st, h, _ = curl(f"{plain_registry.url}/v2/")
    assert (rc, st) == (0, 200)
    assert h["docker-distribution-api-version"] == "registry/2.0"
    c = RegistryClient(plain_registry.host)
    data, ct, d = c.get_manifest(REPO, TAG)
    assert d == test_image.digest and data == test_image.manifest_bytes and ct == MT_MANIFEST
    data, ct, d = c.get_manifest(INDEX_REPO, index_image.tag)
    assert d == index_image.digest and ct == MT_INDEX


def test_docker_registry_needs_oci_accept_header(plain_registry):
    """2.8 answers 404 MANIFEST_UNKNOWN for an OCI manifest unless Accept names the OCI type."""
    rc, st, _, body = curl(f"{plain_registry.url}/v2/{REPO}/manifests/{TAG}")
    assert st == 404 and b"accept header does not support OCI manifests" in body
    rc, st, _, _ = curl("-H", f"Accept: {MT_MANIFEST}", f"{plain_registry.url}/v2/{REPO}/manifests/{TAG}")
    assert st == 200


def test_docker_registry_range_requests(plain_registry, test_image):
    layer = test_image.layer_digests[0]
    full = (test_image.layout / "blobs" / layer.replace(":", "/")).read_bytes()
    url = f"{plain_registry.url}/v2/{REPO}/blobs/{layer}"
    rc, st, h, body = curl("-H", "Range: bytes=100-199", url)
    assert st == 206 and body == full[100:200]
    assert h["content-range"] == f"bytes 100-199/{len(full)}"
    rc, st, h, body = curl("-H", "Range: bytes=-10", url)
    assert st == 206 and body == full[-10:]
    # 416 declares the whole blob's Content-Length but sends a short text body and closes:
    # a client must look at the status before treating the short body as a transfer error.
    rc, st, h, body = curl("-H", f"Range: bytes={len(full) + 10}-", url)
    assert st == 416 and h["content-range"] == f"bytes */{len(full)}"
    assert int(h["content-length"]) == len(full) and len(body) < 100 and rc == 18
    # no referrers API in 2.8
    rc, st, _, _ = curl(f"{plain_registry.url}/v2/{REPO}/referrers/{test_image.digest}")
    assert st == 404


def test_htpasswd_provisioned_by_the_registry(tmp_path):
    with DockerRegistry(tmp_path / "reg", auth="htpasswd") as reg:
        assert reg.provisioned is not None
        user, password = reg.credentials()
        assert user == "docker" and len(password) >= 20
        line = reg.htpasswd_path.read_text().strip()
        assert line.startswith("docker:$2")  # bcrypt
        rc, st, h, _ = curl(f"{reg.url}/v2/")
        assert st == 401 and h["www-authenticate"].startswith("Basic ")
        rc, st, _, _ = curl("-u", f"{user}:{password}", f"{reg.url}/v2/")
        assert st == 200
        rc, st, _, _ = curl("-u", f"{user}:wrong", f"{reg.url}/v2/")
        assert st == 401


def test_htpasswd_own_users_with_skopeo(htpasswd_registry, test_image, tmp_path):
    c = RegistryClient(htpasswd_registry.host, ("alice", "wonderland"))
    assert c.get_manifest(REPO, TAG)[2] == test_image.digest
    with pytest.raises(RegistryError):
        skopeo_copy(f"docker://{htpasswd_registry.host}/{REPO}:{TAG}", f"oci:{tmp_path}/x:{TAG}",
                    src_creds=("alice", "nope"), env=skopeo_env(tmp_path))
    skopeo_copy(f"docker://{htpasswd_registry.host}/{REPO}:{TAG}", f"oci:{tmp_path}/y:{TAG}",
                src_creds=("alice", "wonderland"), env=skopeo_env(tmp_path))
    assert read_layout_manifest(tmp_path / "y", TAG)[0]["digest"] == test_image.digest


def test_registry_start_failure_reports_log(tmp_path):
    ts_dir = tmp_path / "ts"
    ts_dir.mkdir()

    class BadTokenServer:  # a rootcertbundle that does not exist
        realm, service, issuer = "http://127.0.0.1:1/token", "s", "i"
        cert_path = ts_dir / "missing.pem"
    reg = DockerRegistry(tmp_path / "reg", auth="token", token_server=BadTokenServer())
    with pytest.raises(RegistryError, match="rootcertbundle|certificate bundle|missing.pem"):
        reg.start()
    assert reg.proc is None


# -- token server -------------------------------------------------------------------------------

def _challenge(reg_url, path):
    rc, st, h, _ = curl(reg_url + path)
    assert st == 401
    scheme, params = parse_challenge(h["www-authenticate"])
    assert scheme == "bearer"
    return params


def _get_token(params, user=None, password=None, scope=None):
    q = {"service": params["service"], "scope": scope or params.get("scope", "")}
    args = ["-u", f"{user}:{password}"] if user else []
    rc, st, h, body = curl(*args, params["realm"] + "?" + urllib.parse.urlencode(q))
    return st, (json.loads(body) if body else {})


def test_token_flow_with_curl(token_registry, fresh_token_server, test_image):
    ts = fresh_token_server
    params = _challenge(token_registry.url, f"/v2/{REPO}/manifests/{TAG}")
    assert params["realm"] == ts.realm and params["service"] == ts.service
    assert params["scope"] == f"repository:{REPO}:pull"
    st, _ = _get_token(params)
    assert st == 401, "anonymous clients get no token"
    st, _ = _get_token(params, "tokenuser", "bad")
    assert st == 401
    st, tok = _get_token(params, "tokenuser", "tokenpass")
    assert st == 200 and tok["expires_in"] == ts.expires_in and tok["token"] == tok["access_token"]
    header, claims = decode_jwt(tok["token"])
    assert header["alg"] == "RS256" and header["x5c"]
    assert claims["access"] == [{"type": "repository", "name": REPO, "actions": ["pull"]}]
    rc, st, h, body = curl("-H", f"Authorization: Bearer {tok['token']}", "-H", f"Accept: {MT_MANIFEST}",
                           f"{token_registry.url}/v2/{REPO}/manifests/{TAG}")
    assert st == 200 and body == test_image.manifest_bytes
    # a pull token does not allow a push
    rc, st, h, _ = curl("-X", "POST", "-H", f"Authorization: Bearer {tok['token']}",
                        f"{token_registry.url}/v2/{REPO}/blobs/uploads/")
    assert st == 401 and 'error="insufficient_scope"' in h["www-authenticate"]
    assert ts.count("get") == 1 and ts.count("get", status=401) == 2


@pytest.mark.parametrize("alg,mode", [("RS256", "x5c"), ("ES256", "kid"), ("ES256", "x5c"),
                                      ("RS256", "kid")])
def test_token_signing_variants_accepted_by_registry(tmp_path, test_image, alg, mode):
    with TokenServer(tmp_path / "ts", alg=alg, key_id_mode=mode) as ts, \
            DockerRegistry(tmp_path / "reg", auth="token", token_server=ts) as reg:
        tok, _ = ts.make_token("tokenuser", [f"repository:{REPO}:pull,push"])
        h = decode_jwt(tok)[0]
        assert h["alg"] == alg and (("kid" in h) == (mode == "kid"))
        c = RegistryClient(reg.host, ("tokenuser", "tokenpass"))
        rc, st, _, _ = curl("-H", f"Authorization: Bearer {tok}", f"{reg.url}/v2/")
        assert st == 200
        d = c.put_blob(REPO, b"hello")
        assert d == sha256_digest(b"hello")


def test_libtrust_key_id_format():
    kid = libtrust_key_id(b"anything")
    groups = kid.split(":")
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)


def test_token_expiry_is_enforced_by_registry(token_registry, fresh_token_server):
    """2.8 accepts tokens up to 60 s past exp; the server's compensation moves exp so that the
    registry rejects a token when expires_in says it is over."""
    ts = fresh_token_server
    url = f"{token_registry.url}/v2/{REPO}/tags/list"
    scope = [f"repository:{REPO}:pull"]
    fresh, _ = ts.make_token("tokenuser", scope, expires_in=30)
    over, _ = ts.make_token("tokenuser", scope, expires_in=-1)
    assert curl("-H", f"Authorization: Bearer {fresh}", url)[1] == 200
    rc, st, h, _ = curl("-H", f"Authorization: Bearer {over}", url)
    assert st == 401 and 'error="invalid_token"' in h["www-authenticate"]
    ts.compensate_leeway = False
    lenient, _ = ts.make_token("tokenuser", scope, expires_in=-1)
    assert curl("-H", f"Authorization: Bearer {lenient}", url)[1] == 200, \
        "without compensation 2.8's 60 s leeway accepts an expired token"


def test_token_oauth2_post_grants(token_registry, fresh_token_server):
    ts = fresh_token_server
    params = _challenge(token_registry.url, f"/v2/{REPO}/tags/list")
    form = {"grant_type": "password", "username": "tokenuser", "password": "tokenpass",
            "service": ts.service, "scope": params["scope"], "client_id": "erostream-test",
            "access_type": "offline"}
    rc, st, _, body = curl("-X", "POST", "--data", urllib.parse.urlencode(form), params["realm"])
    j = json.loads(body)
    assert st == 200 and j["access_token"] and j["refresh_token"]
    form2 = {"grant_type": "refresh_token", "refresh_token": j["refresh_token"],
             "service": ts.service, "scope": params["scope"], "client_id": "erostream-test"}
    rc, st, _, body = curl("-X", "POST", "--data", urllib.parse.urlencode(form2), params["realm"])
    j2 = json.loads(body)
    assert st == 200 and j2["access_token"] != j["access_token"]
    assert curl("-H", f"Authorization: Bearer {j2['access_token']}",
                f"{token_registry.url}/v2/{REPO}/tags/list")[1] == 200
    bad = dict(form2, refresh_token="rt-unknown")
    assert curl("-X", "POST", "--data", urllib.parse.urlencode(bad), params["realm"])[1] == 401
    wrong = dict(form, password="nope")
    assert curl("-X", "POST", "--data", urllib.parse.urlencode(wrong), params["realm"])[1] == 401
    assert ts.count("password") == 1 and ts.count("refresh_token") == 1
    assert ts.count("refresh_token", status=401) == 1


def test_token_permissions_limit_actions(tmp_path):
    with TokenServer(tmp_path / "ts", users={"ro": "pw"}, permissions={"ro": ["pull"]},
                     anonymous_actions=["pull"]) as ts:
        _, claims = ts.make_token("ro", ["repository:a/b:pull,push"])
        assert claims["access"] == [{"type": "repository", "name": "a/b", "actions": ["pull"]}]
        _, claims = ts.make_token(None, ["repository:a/b:push"])
        assert claims["access"][0]["actions"] == []


# -- fault proxy --------------------------------------------------------------------------------

def test_proxy_passthrough_skopeo_push_and_pull(plain_registry, proxy_factory, test_image, tmp_path):
    px = proxy_factory(plain_registry.host)
    env = skopeo_env(tmp_path)
    skopeo_copy(test_image.oci_ref, f"docker://{px.host}/via-proxy/img:{TAG}", env=env)
    assert px.count(method="PUT", path=r"/manifests/") == 1
    assert px.count(method="PATCH") + px.count(method="PUT", path="/uploads/") >= 4
    skopeo_copy(f"docker://{px.host}/via-proxy/img:{TAG}", f"oci:{tmp_path}/back:{TAG}", env=env)
    assert read_layout_manifest(tmp_path / "back", TAG)[0]["digest"] == test_image.digest
    assert verify_layout_blobs(tmp_path / "back") == []
    for layer in test_image.layer_digests:
        assert px.count(method="GET", path=f"/blobs/{layer}$", status=200) == 1


def test_proxy_rule_skip_and_times(plain_proxy):
    px = plain_proxy
    rule = px.add_rule("status", path=r"^/v2/$", status=503, skip=1, times=2)
    got = [raw_get(px.host, "/v2/")[0] for _ in range(5)]
    assert got == [200, 503, 503, 200, 200]
    assert rule.matches == 5 and rule.fired == 2
    assert [r.fault for r in px.requests(path=r"^/v2/$")] == [None, "status", "status", None, None]


def test_proxy_retry_after(plain_proxy):
    px = plain_proxy
    px.add_rule("status", method="GET", path=r"^/v2/$", status=429, headers={"Retry-After": "3"},
                times=1)
    st, h, _ = raw_get(px.host, "/v2/")
    assert st == 429 and h["retry-after"] == "3"
    assert raw_get(px.host, "/v2/")[0] == 200


def test_proxy_reset_cut_corrupt(plain_proxy, test_image):
    px = plain_proxy
    layer = test_image.layer_digests[0]
    full = (test_image.layout / "blobs" / layer.replace(":", "/")).read_bytes()
    path = f"/v2/{REPO}/blobs/{layer}"
    px.add_rule("reset", path=f"/blobs/{layer}$", times=1)
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        raw_get(px.host, path)
    px.add_rule("cut", path=f"/blobs/{layer}$", times=1, after_bytes=1000)
    st, h, body = raw_get(px.host, path)
    assert st == 200 and int(h["content-length"]) == len(full)
    assert isinstance(body, http.client.IncompleteRead) and len(body.partial) == 1000
    px.add_rule("reset", path=f"/blobs/{layer}$", times=1, after_bytes=5000)
    st, h, body = raw_get(px.host, path)
    assert st == 200 and isinstance(body, (ConnectionResetError, http.client.IncompleteRead))
    px.add_rule("corrupt", path=f"/blobs/{layer}$", times=1, offset=12345)
    st, h, body = raw_get(px.host, path)
    assert st == 200 and len(body) == len(full) and body != full
    assert [i for i in range(len(full)) if body[i] != full[i]] == [12345]
    st, h, body = raw_get(px.host, path)
    assert st == 200 and body == full
    # the same faults on a ranged GET apply to the partial body
    px.add_rule("corrupt", path=f"/blobs/{layer}$", times=1, offset=3)
    st, h, body = raw_get(px.host, path, {"Range": "bytes=10-19"})
    assert st == 206 and len(body) == 10 and body != full[10:20] and body[:3] == full[10:13]


def test_proxy_delay_and_link_shaping(plain_proxy, test_image):
    px = plain_proxy
    layer = test_image.layer_digests[1]  # about 1 MiB
    size = (test_image.layout / "blobs" / layer.replace(":", "/")).stat().st_size
    rate = 2_000_000
    px.set_link(rate, latency=0.05)
    t = time.monotonic()
    st, _, body = raw_get(px.host, f"/v2/{REPO}/blobs/{layer}")
    took = time.monotonic() - t
    assert st == 200 and len(body) == size
    expected = size / rate + 0.05
    assert took >= expected * 0.85, (took, expected)
    assert took <= expected * 2 + 0.5, (took, expected)
    px.set_link(None)
    px.add_rule("delay", path=r"^/v2/$", seconds=0.3, times=1)
    t = time.monotonic()
    assert raw_get(px.host, "/v2/")[0] == 200
    assert time.monotonic() - t >= 0.3
    px.add_rule("slow", path=f"/blobs/{layer}$", bytes_per_second=4_000_000, times=1)
    t = time.monotonic()
    raw_get(px.host, f"/v2/{REPO}/blobs/{layer}")
    assert time.monotonic() - t >= size / 4_000_000 * 0.85


def test_token_bucket_shares_one_link():
    b = TokenBucket(1_000_000, burst=10_000)
    t = time.monotonic()
    threads = [threading.Thread(target=lambda: [b.consume(10_000) for _ in range(10)]) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    took = time.monotonic() - t
    assert took >= 0.27, took  # 300 kB through a 1 MB/s link, minus the burst


def test_proxy_range_rules(plain_proxy, test_image):
    px = plain_proxy
    layer = test_image.layer_digests[0]
    full = (test_image.layout / "blobs" / layer.replace(":", "/")).read_bytes()
    path = f"/v2/{REPO}/blobs/{layer}"
    st, h, body = raw_get(px.host, path, {"Range": "bytes=0-9"})
    assert st == 206 and body == full[:10]
    px.add_rule("strip_range", path="/blobs/", times=1)
    st, h, body = raw_get(px.host, path, {"Range": "bytes=0-9"})
    assert st == 200 and body == full
    px.add_rule("range_416", path="/blobs/", when_range=True)
    st, h, body = raw_get(px.host, path, {"Range": "bytes=0-9"})
    assert st == 416 and h["content-range"] == f"bytes */{len(full)}"
    st, h, body = raw_get(px.host, path)
    assert st == 200 and body == full


def test_proxy_redirect_to_storage_host(htpasswd_registry, proxy_factory, test_image):
    px = proxy_factory(htpasswd_registry.host)
    layer = test_image.layer_digests[0]
    full = (test_image.layout / "blobs" / layer.replace(":", "/")).read_bytes()
    px.add_rule("redirect", method="GET", path="/blobs/sha256:", expire_first=1)
    auth = {"Authorization": htpasswd_registry.basic_auth_header()}
    path = f"/v2/{REPO}/blobs/{layer}"
    # without credentials the registry's 401 comes through, not a redirect
    st, h, _ = raw_get(px.host, path)
    assert st == 401 and "location" not in h
    st, h, _ = raw_get(px.host, path, auth)
    assert st == 307
    first = urllib.parse.urlsplit(h["location"])
    assert f"{first.hostname}:{first.port}" == px.storage_host
    st, _, _ = raw_get(px.storage_host, first.path + "?" + first.query)
    assert st == 403, "the first URL for each blob is issued already expired"
    st, h, _ = raw_get(px.host, path, auth)
    loc = urllib.parse.urlsplit(h["location"])
    target = loc.path + "?" + loc.query
    st, h, body = raw_get(px.storage_host, target)
    assert st == 200 and body == full
    st, h, body = raw_get(px.storage_host, target, {"Range": "bytes=5-14"})
    assert st == 206 and body == full[5:15] and h["content-range"] == f"bytes 5-14/{len(full)}"
    px.storage_range_mode = "ignore"
    st, h, body = raw_get(px.storage_host, target, {"Range": "bytes=5-14"})
    assert st == 200 and body == full
    px.storage_range_mode = "416"
    st, h, body = raw_get(px.storage_host, target, {"Range": "bytes=5-14"})
    assert st == 416
    px.storage_range_mode = "honour"
    st, h, body = raw_get(px.storage_host, target.replace("sig=", "sig=0"))
    assert st == 403
    assert px.violations == []
    st, h, body = raw_get(px.storage_host, target, auth)
    assert st == 400 and len(px.violations) == 1
    px.expire_signed_urls()
    assert raw_get(px.storage_host, target)[0] == 403
    # curl follows the redirect itself and (since 7.58) drops credentials on the host change
    rc, st, h, body = curl("-L", "-u", "alice:wonderland", f"{px.url}{path}")
    assert st == 200 and body == full and len(px.violations) == 1
    assert px.count(listener="storage") >= 7


def test_proxy_unauthorized_rule_relays_registry_challenge(token_registry, proxy_factory,
                                                           fresh_token_server):
    px = proxy_factory(token_registry.host)
    tok, _ = fresh_token_server.make_token("tokenuser", [f"repository:{REPO}:pull"])
    auth = {"Authorization": f"Bearer {tok}", "Accept": MT_MANIFEST}
    px.add_rule("unauthorized", path="/manifests/", skip=1, times=1)
    assert raw_get(px.host, f"/v2/{REPO}/manifests/{TAG}", auth)[0] == 200
    st, h, _ = raw_get(px.host, f"/v2/{REPO}/manifests/{TAG}", auth)
    assert st == 401
    scheme, params = parse_challenge(h["www-authenticate"])
    assert scheme == "bearer" and params["realm"] == fresh_token_server.realm
    assert params["scope"] == f"repository:{REPO}:pull"
    assert raw_get(px.host, f"/v2/{REPO}/manifests/{TAG}", auth)[0] == 200


def test_proxy_as_http_proxy(plain_registry):
    with FaultProxy(None) as px:  # no upstream: only absolute-form requests are forwarded
        rc, st, _, _ = curl("-x", px.url, f"{plain_registry.url}/v2/")
        assert st == 200
        recs = px.requests()
        assert len(recs) == 1 and recs[0].proxy_form and recs[0].path == "/v2/"
        st, _, _ = raw_get(px.host, "/v2/")
        assert st == 502


def test_proxy_chunked_upload_passthrough(plain_proxy):
    """A chunked PATCH body (what Go clients send) is forwarded with its bytes intact."""
    px = plain_proxy
    data = bytes(range(256)) * 300
    c = http.client.HTTPConnection("127.0.0.1", px.port, timeout=30)
    c.request("POST", "/v2/chunked/test/blobs/uploads/", body=b"")
    r = c.getresponse()
    r.read()
    assert r.status == 202
    loc = urllib.parse.urlsplit(r.getheader("Location"))
    c.request("PATCH", loc.path + "?" + loc.query, body=iter([data[:1000], data[1000:]]),
              headers={"Content-Type": "application/octet-stream"}, encode_chunked=True)
    r = c.getresponse()
    r.read()
    assert r.status == 202
    loc = urllib.parse.urlsplit(r.getheader("Location"))
    d = sha256_digest(data)
    c.request("PUT", loc.path + "?" + loc.query + "&digest=" + d, body=b"")
    r = c.getresponse()
    r.read()
    assert r.status == 201
    c.close()
    st, _, body = raw_get(px.host, f"/v2/chunked/test/blobs/{d}")
    assert st == 200 and body == data


# -- referrers server ---------------------------------------------------------------------------

def _push_referrer(c, repo, subject, artifact_type, annotations=None):
    empty = c.put_blob(repo, b"{}")
    m = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "artifactType": artifact_type,
         "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
         "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}],
         "subject": {"mediaType": MT_MANIFEST, "digest": subject["digest"], "size": subject["size"]},
         "annotations": annotations or {}}
    data = json.dumps(m).encode()
    _, h = c.put_manifest(repo, sha256_digest(data), data, MT_MANIFEST)
    return sha256_digest(data), h


def test_referrers_server_push_pull_and_query(referrers_server, test_image, tmp_path):
    rs = referrers_server
    skopeo_copy(f"docker://{rs.host}/{REPO}:{TAG}", f"oci:{tmp_path}/back:{TAG}",
                env=skopeo_env(tmp_path))
    assert read_layout_manifest(tmp_path / "back", TAG)[0]["digest"] == test_image.digest
    c = RegistryClient(rs.host)
    subject = {"digest": test_image.digest, "size": len(test_image.manifest_bytes)}
    d1, h = _push_referrer(c, REPO, subject, "application/vnd.example.one", {"k": "v"})
    assert h["oci-subject"] == test_image.digest
    d2, _ = _push_referrer(c, REPO, subject, "application/vnd.example.two")
    rc, st, h, body = curl(f"{rs.url}/v2/{REPO}/referrers/{test_image.digest}")
    idx = json.loads(body)
    assert st == 200 and h["content-type"] == MT_INDEX and idx["mediaType"] == MT_INDEX
    assert sorted(m["digest"] for m in idx["manifests"]) == sorted([d1, d2])
    one = [m for m in idx["manifests"] if m["digest"] == d1][0]
    assert one["artifactType"] == "application/vnd.example.one" and one["annotations"] == {"k": "v"}
    rc, st, h, body = curl(f"{rs.url}/v2/{REPO}/referrers/{test_image.digest}"
                           "?artifactType=application/vnd.example.two")
    assert h["oci-filters-applied"] == "artifactType"
    assert [m["digest"] for m in json.loads(body)["manifests"]] == [d2]
    rc, st, h, body = curl(f"{rs.url}/v2/{REPO}/referrers/sha256:{'0' * 64}")
    assert st == 200 and json.loads(body)["manifests"] == []
    assert not any(t.startswith("sha256-") for t in rs.tags(REPO))


def test_referrers_server_uploads_ranges_and_mount(tmp_path):
    with ReferrersServer(referrers_api=False) as rs:
        c = RegistryClient(rs.host)
        data = b"x" * 5000 + b"y" * 5000
        d = sha256_digest(data)
        # session upload with two chunked PATCHes and a final PUT
        conn = http.client.HTTPConnection("127.0.0.1", rs.port, timeout=30)
        conn.request("POST", "/v2/a/b/blobs/uploads/", body=b"")
        r = conn.getresponse(); r.read()
        loc = r.getheader("Location")
        assert r.status == 202
        conn.request("PATCH", loc, body=iter([data[:4000]]), encode_chunked=True,
                     headers={"Content-Range": "0-3999"})
        r = conn.getresponse(); r.read()
        assert r.status == 202 and r.getheader("Range") == "0-3999"
        conn.request("PATCH", loc, body=data[4000:], headers={"Content-Range": "0-10"})
        r = conn.getresponse(); r.read()
        assert r.status == 416, "a PATCH that does not continue the upload is refused"
        conn.request("PATCH", loc, body=data[4000:])
        r = conn.getresponse(); r.read()
        conn.request("PUT", loc + "?digest=" + sha256_digest(b"other"), body=b"")
        r = conn.getresponse(); r.read()
        assert r.status == 400
        conn.close()
        assert c.put_blob("a/b", data) == d
        st, h, body = c.get_blob("a/b", d, "bytes=4990-5009")
        assert st == 206 and body == b"x" * 10 + b"y" * 10
        st, h, body = c.get_blob("a/b", d, "bytes=20000-")
        assert st == 416
        st, h, body = c.request("POST", f"/v2/c/d/blobs/uploads/?mount={d}&from=a/b", body=b"")
        assert st == 201 and h["docker-content-digest"] == d
        st, h, body = c.request("POST", f"/v2/e/f/blobs/uploads/?mount={d}&from=nowhere", body=b"")
        assert st == 202, "an impossible mount starts an ordinary upload"
        st, _, body = c.get_blob("c/d", d)
        assert st == 200 and body == data
        assert c.get_blob("e/f", d)[0] == 404
        assert c.referrers("a/b", d)[0] == 404
        # a manifest whose blobs are missing is refused
        m = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                        "config": {"mediaType": "x", "digest": sha256_digest(b"nope"), "size": 4},
                        "layers": []}).encode()
        st, h, body = c.request("PUT", "/v2/a/b/manifests/t", body=m,
                                headers={"Content-Type": MT_MANIFEST})
        assert st == 400 and b"MANIFEST_BLOB_UNKNOWN" in body


# -- tools --------------------------------------------------------------------------------------

def test_credential_helper_script(tmp_path):
    log = tmp_path / "helper.log"
    helper = tools.write_credential_helper(tmp_path / "bin", "test",
                                           {"127.0.0.1:5000": ("u", "s")}, log)
    r = subprocess.run([str(helper), "get"], input="127.0.0.1:5000\n", capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout) == {"Username": "u", "Secret": "s",
                                                          "ServerURL": "127.0.0.1:5000"}
    r = subprocess.run([str(helper), "get"], input="http://127.0.0.1:5000", capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["Secret"] == "s"
    r = subprocess.run([str(helper), "get"], input="other:1", capture_output=True, text=True)
    assert r.returncode == 1 and "credentials not found" in r.stdout
    assert [e["action"] for e in tools.read_helper_log(log)] == ["get", "get", "get"]


def test_docker_config_and_hosts_toml(tmp_path):
    p = tools.write_docker_config(tmp_path / "dc", auths={"h:1": ("u", "p")}, creds_store="x",
                                  cred_helpers={"h:2": "y"}, identity_tokens={"h:3": "rt"})
    cfg = json.loads(p.read_text())
    assert base64.b64decode(cfg["auths"]["h:1"]["auth"]) == b"u:p"
    assert cfg["credsStore"] == "x" and cfg["credHelpers"] == {"h:2": "y"}
    assert cfg["auths"]["h:3"] == {"identitytoken": "rt"}
    t = tools.write_hosts_toml(tmp_path / "certs.d", "127.0.0.1:5000", "http://127.0.0.1:5000",
                               [("http://127.0.0.1:6000", ["pull", "resolve"])]).read_text()
    assert t == ('server = "http://127.0.0.1:5000"\n\n[host."http://127.0.0.1:6000"]\n'
                 '  capabilities = ["pull", "resolve"]\n')
    assert (tmp_path / "certs.d" / "127.0.0.1:5000" / "hosts.toml").exists()


def test_tree_digests_and_device_files(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "meta.erofs").write_bytes(b"a")
    (tmp_path / "m" / "device-1.img").write_bytes(b"b")
    (tmp_path / "m" / "other").write_bytes(b"c")
    assert tools.device_files(tmp_path / "m") == ["device-1.img", "meta.erofs"]
    assert tools.tree_digests(tmp_path / "m")["other"] == hashlib.sha256(b"c").hexdigest()
    assert tools.device_files(tmp_path / "absent") == []
