"""erostream-mkfs convert to docker:// destinations and discovery.

Debian's docker-registry 2.8 has no referrers API: an artifact pushed without a DEST tag must be
findable through the referrers tag schema (tag sha256-<hex of the subject digest> holding an OCI
index of the referrers, created or updated). The referrers server of the tests has the API: no
such tag may be created there. `discover` and materialize/inspect/check given an image reference
find the artifact through the same two paths."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.checks import (artifact_digests, assert_clear_failure, fallback_index,  # noqa: E402
                             materialize_matches)
from registry.client import RegistryClient  # noqa: E402
from registry.fixtures import *  # noqa: E402,F401,F403
from registry.fixtures import TAG  # noqa: E402
from registry.registry import push_oci, skopeo_env  # noqa: E402


def fresh_repo(registry, test_image, name: str, tmp_path) -> str:
    """A repository holding only the test image (tag v1), so that each test sees its own
    referrers."""
    repo = f"push/{name}"
    push_oci(test_image.layout, test_image.tag, registry.host, repo, env=skopeo_env(tmp_path))
    return repo


def push_artifact(mkfs, registry, repo, dest_tag=None, *extra) -> str:
    dest = f"docker://{registry.host}/{repo}" + (f":{dest_tag}" if dest_tag else "")
    r = mkfs.run("convert", "--quiet", "--json", *extra, f"docker://{registry.host}/{repo}:{TAG}", dest)
    assert r.returncode == 0, r.describe()
    digests = artifact_digests(r)
    assert len(digests) == 1, r.stdout
    return digests[0]


def discover(mkfs, ref: str) -> list[dict]:
    r = mkfs.run("discover", "--json", ref)
    assert r.returncode == 0, r.describe()
    out = json.loads(r.stdout)
    assert isinstance(out, list), r.stdout
    return out


def check_artifact_manifest(client, repo, digest, test_image, reference) -> dict:
    data, ct, d = client.get_manifest(repo, digest)
    assert d == digest
    m = json.loads(data)
    assert m["subject"]["digest"] == test_image.digest
    assert m["subject"]["size"] == len(test_image.manifest_bytes)
    assert m.get("artifactType") == reference.manifest.get("artifactType")
    return m


# -- docker-registry 2.8: fallback tag -------------------------------------------------------------

def test_push_to_docker_registry_uses_fallback_tag(mkfs, plain_registry, test_image, reference, tmp_path):
    repo = fresh_repo(plain_registry, test_image, "fallback", tmp_path)
    c = RegistryClient(plain_registry.host)
    assert fallback_index(c, repo, test_image.digest) is None
    d1 = push_artifact(mkfs, plain_registry, repo)
    check_artifact_manifest(c, repo, d1, test_image, reference)
    idx = fallback_index(c, repo, test_image.digest)
    assert idx is not None, "no sha256-<hex> tag after a push to a registry without referrers API"
    entries = {m["digest"]: m for m in idx["manifests"]}
    assert d1 in entries
    assert entries[d1]["artifactType"] == reference.artifact_type
    assert entries[d1]["size"] == len(c.get_manifest(repo, d1)[0])
    # no other tag than the image's and the fallback tag
    assert sorted(c.tags(repo)) == sorted([TAG, test_image.digest.replace(":", "-")])
    materialize_matches(mkfs, f"docker://{plain_registry.host}/{repo}@{d1}", tmp_path / "m1", reference)

    # a second artifact of the same image (other chunk size) is added to the index, the first stays
    d2 = push_artifact(mkfs, plain_registry, repo, None, "--chunk-size", "64k")
    assert d2 != d1
    idx = fallback_index(c, repo, test_image.digest)
    digests = [m["digest"] for m in idx["manifests"]]
    assert sorted(digests) == sorted([d1, d2])
    # pushing the first one again does not list it twice
    assert push_artifact(mkfs, plain_registry, repo) == d1
    digests = [m["digest"] for m in fallback_index(c, repo, test_image.digest)["manifests"]]
    assert sorted(digests) == sorted([d1, d2])

    found = discover(mkfs, f"docker://{plain_registry.host}/{repo}:{TAG}")
    assert sorted(f["digest"] for f in found) == sorted([d1, d2])
    for f in found:
        assert f["artifactType"] == reference.artifact_type and f["size"] > 0
    by_digest = discover(mkfs, f"docker://{plain_registry.host}/{repo}@{test_image.digest}")
    assert sorted(f["digest"] for f in by_digest) == sorted([d1, d2])


def test_push_with_dest_tag(mkfs, plain_registry, test_image, reference, tmp_path):
    repo = fresh_repo(plain_registry, test_image, "tagged", tmp_path)
    d = push_artifact(mkfs, plain_registry, repo, "streaming")
    c = RegistryClient(plain_registry.host)
    assert c.get_manifest(repo, "streaming")[2] == d
    check_artifact_manifest(c, repo, d, test_image, reference)
    # a tag-pinned artifact reference is used as it is
    materialize_matches(mkfs, f"docker://{plain_registry.host}/{repo}:streaming", tmp_path / "m", reference)


def test_push_to_htpasswd_registry(mkfs, htpasswd_registry, test_image, reference, tmp_path):
    from registry import tools
    host = htpasswd_registry.host
    repo = "push/auth"
    push_oci(test_image.layout, test_image.tag, host, repo, creds=htpasswd_registry.credentials(),
             env=skopeo_env(tmp_path))
    tools.write_docker_config(mkfs.docker_config, auths={host: htpasswd_registry.credentials()})
    d = push_artifact(mkfs, htpasswd_registry, repo)
    c = RegistryClient(host, htpasswd_registry.credentials())
    idx = fallback_index(c, repo, test_image.digest)
    assert idx and d in [m["digest"] for m in idx["manifests"]]


def test_discover_image_without_artifacts_is_empty(mkfs, plain_registry, referrers_server, test_image,
                                                   tmp_path):
    repo = fresh_repo(plain_registry, test_image, "bare", tmp_path)
    assert discover(mkfs, f"docker://{plain_registry.host}/{repo}:{TAG}") == []
    repo2 = fresh_repo(referrers_server, test_image, "bare", tmp_path)
    assert discover(mkfs, f"docker://{referrers_server.host}/{repo2}:{TAG}") == []


def test_materialize_image_without_artifact_fails_clearly(mkfs, plain_registry, test_image, tmp_path):
    repo = fresh_repo(plain_registry, test_image, "none", tmp_path)
    out = tmp_path / "m"
    r = mkfs.run("materialize", "--quiet", f"docker://{plain_registry.host}/{repo}:{TAG}", str(out))
    assert_clear_failure(r, "artifact", "referrer")
    from registry import tools
    assert tools.device_files(out) == []


def test_materialize_inspect_check_by_image_reference(mkfs, plain_registry, test_image, reference, tmp_path):
    repo = fresh_repo(plain_registry, test_image, "by-image", tmp_path)
    push_artifact(mkfs, plain_registry, repo)
    image_ref = f"docker://{plain_registry.host}/{repo}:{TAG}"
    materialize_matches(mkfs, image_ref, tmp_path / "m", reference)
    mkfs.ok("check", image_ref)
    mkfs.ok("inspect", image_ref)


# -- referrers API ----------------------------------------------------------------------------------

def test_push_to_referrers_server_uses_referrers_api(mkfs, referrers_server, test_image, reference,
                                                     tmp_path):
    rs = referrers_server
    repo = fresh_repo(rs, test_image, "api", tmp_path)
    d = push_artifact(mkfs, rs, repo)
    c = RegistryClient(rs.host)
    check_artifact_manifest(c, repo, d, test_image, reference)
    listed = rs.referrers(repo, test_image.digest)
    assert [x["digest"] for x in listed] == [d]
    assert listed[0]["artifactType"] == reference.artifact_type
    assert rs.tags(repo) == [TAG], "no fallback tag where the referrers API exists"
    assert not rs.requests("PUT", path=r"/manifests/sha256-")
    found = discover(mkfs, f"docker://{rs.host}/{repo}:{TAG}")
    assert [f["digest"] for f in found] == [d]
    assert found[0]["artifactType"] == reference.artifact_type
    assert found[0]["size"] == len(c.get_manifest(repo, d)[0])
    assert rs.requests("GET", path=f"/referrers/{test_image.digest}"), "discover must use the API"
    materialize_matches(mkfs, f"docker://{rs.host}/{repo}:{TAG}", tmp_path / "m", reference)


def test_discover_filters_foreign_referrers(mkfs, referrers_server, test_image, reference, tmp_path):
    """Other artifacts of the image (signatures, SBOMs) are not erostream artifacts."""
    from registry.images import MT_MANIFEST, sha256_digest
    rs = referrers_server
    repo = fresh_repo(rs, test_image, "foreign", tmp_path)
    c = RegistryClient(rs.host)
    empty = c.put_blob(repo, b"{}")
    sig = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "artifactType": "application/vnd.example.sig",
           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
           "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}],
           "subject": {"mediaType": MT_MANIFEST, "digest": test_image.digest,
                       "size": len(test_image.manifest_bytes)}}
    data = json.dumps(sig).encode()
    c.put_manifest(repo, sha256_digest(data), data, MT_MANIFEST)
    assert discover(mkfs, f"docker://{rs.host}/{repo}:{TAG}") == []
    d = push_artifact(mkfs, rs, repo)
    assert [f["digest"] for f in discover(mkfs, f"docker://{rs.host}/{repo}:{TAG}")] == [d]


def test_push_to_registry_without_referrers_api_on_referrers_server(mkfs, test_image, reference, tmp_path):
    """The same server with the API switched off (404): the fallback tag path is taken."""
    from registry.referrers_server import ReferrersServer
    with ReferrersServer(referrers_api=False) as rs:
        repo = fresh_repo(rs, test_image, "noapi", tmp_path)
        d = push_artifact(mkfs, rs, repo)
        tag = test_image.digest.replace(":", "-")
        assert tag in rs.tags(repo)
        c = RegistryClient(rs.host)
        idx = fallback_index(c, repo, test_image.digest)
        assert [m["digest"] for m in idx["manifests"]] == [d]
        assert [f["digest"] for f in discover(mkfs, f"docker://{rs.host}/{repo}:{TAG}")] == [d]
