"""erostream-mkfs convert from registries: no auth, htpasswd, token auth (also with tokens that
expire or are revoked mid-conversion), docker config.json credentials and credential helpers,
and platform selection from an index. Every successful conversion is checked by materializing
it and comparing with the local (oci: to oci:) conversion of the same image, byte for byte."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.checks import (artifact_digests, assert_clear_failure, local_artifact_matches,  # noqa: E402
                             materialize_matches, no_partial_output)
from registry.fixtures import *  # noqa: E402,F401,F403
from registry.fixtures import INDEX_REPO, REPO, TAG, TOKEN_USERS  # noqa: E402
from registry.images import read_layout_manifest  # noqa: E402
from registry import tools  # noqa: E402


def convert_to_oci(mkfs, source: str, out: Path, tag: str = "art", *extra) -> "tools.Run":
    r = mkfs.run("convert", "--quiet", "--json", *extra, source, f"oci:{out}:{tag}")
    assert r.returncode == 0, r.describe()
    return r


def check_subject(out: Path, tag: str, subject_digest: str) -> dict:
    _, data = read_layout_manifest(out, tag)
    m = json.loads(data)
    assert m["subject"]["digest"] == subject_digest, m.get("subject")
    return m


# -- anonymous -----------------------------------------------------------------------------------

def test_convert_from_plain_registry(mkfs, plain_registry, test_image, reference, tmp_path):
    out = tmp_path / "out"
    r = convert_to_oci(mkfs, f"docker://{plain_registry.host}/{REPO}:{TAG}", out)
    assert len(artifact_digests(r)) == 1
    m = check_subject(out, "art", test_image.digest)
    assert m.get("artifactType") == reference.manifest.get("artifactType")
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_convert_from_plain_registry_by_digest(mkfs, plain_registry, test_image, reference, tmp_path):
    out = tmp_path / "out"
    convert_to_oci(mkfs, f"docker://{plain_registry.host}/{REPO}@{test_image.digest}", out)
    check_subject(out, "art", test_image.digest)
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_convert_missing_tag_fails_clearly(mkfs, plain_registry, tmp_path):
    out = tmp_path / "out"
    r = mkfs.run("convert", "--quiet", f"docker://{plain_registry.host}/{REPO}:no-such-tag",
                 f"oci:{out}:art")
    assert_clear_failure(r, "no-such-tag", "not found", "manifest unknown", "404")
    no_partial_output(out, "art")


def test_convert_unreachable_registry_fails_clearly(mkfs, tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    r = mkfs.run("convert", "--quiet", f"docker://127.0.0.1:{port}/{REPO}:{TAG}",
                 f"oci:{tmp_path}/out:art", env=mkfs.env(EROSTREAM_RETRY_MAX="1"))
    assert_clear_failure(r, f"127.0.0.1:{port}", "connect", "refused")


def test_convert_index_with_platform(mkfs, plain_registry, index_image, tmp_path):
    arm = index_image.manifest["manifests"][1]
    assert arm["platform"]["architecture"] == "arm64"
    out = tmp_path / "out"
    convert_to_oci(mkfs, f"docker://{plain_registry.host}/{INDEX_REPO}:{index_image.tag}", out,
                   "arm", "--platform", "linux/arm64/v8")
    check_subject(out, "arm", arm["digest"])
    # the same platform converted from the local layout materializes identically
    local = tmp_path / "local"
    mkfs.ok("convert", "--quiet", "--platform", "linux/arm64/v8", index_image.oci_ref, f"oci:{local}:arm")
    mkfs.ok("materialize", "--quiet", f"oci:{local}:arm", str(tmp_path / "mat-local"))
    mkfs.ok("materialize", "--quiet", f"oci:{out}:arm", str(tmp_path / "mat-remote"))
    assert tools.tree_digests(tmp_path / "mat-local") == tools.tree_digests(tmp_path / "mat-remote")


# -- htpasswd ------------------------------------------------------------------------------------

def test_convert_htpasswd_with_config_auths(mkfs, htpasswd_registry, reference, tmp_path):
    tools.write_docker_config(mkfs.docker_config, auths={htpasswd_registry.host: ("alice", "wonderland")})
    out = tmp_path / "out"
    convert_to_oci(mkfs, f"docker://{htpasswd_registry.host}/{REPO}:{TAG}", out)
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_convert_htpasswd_without_credentials_fails_clearly(mkfs, htpasswd_registry, tmp_path):
    out = tmp_path / "out"
    r = mkfs.run("convert", "--quiet", f"docker://{htpasswd_registry.host}/{REPO}:{TAG}", f"oci:{out}:art")
    assert_clear_failure(r, "401", "unauthorized", "credential", "authentication")
    no_partial_output(out, "art")


def test_convert_htpasswd_wrong_password_fails_clearly(mkfs, htpasswd_registry, tmp_path):
    tools.write_docker_config(mkfs.docker_config, auths={htpasswd_registry.host: ("alice", "queen")})
    r = mkfs.run("convert", "--quiet", f"docker://{htpasswd_registry.host}/{REPO}:{TAG}",
                 f"oci:{tmp_path}/out:art")
    assert_clear_failure(r, "401", "unauthorized", "credential", "authentication")
    assert "queen" not in r.stderr, "the password must not be printed"


def _helper(tmp_path, host, creds):
    log = tmp_path / "helper.log"
    bin_dir = tmp_path / "bin"
    tools.write_credential_helper(bin_dir, "test", {host: creds}, log)
    return bin_dir, log


def test_convert_with_credential_helper(mkfs, htpasswd_registry, reference, tmp_path):
    host = htpasswd_registry.host
    bin_dir, log = _helper(tmp_path, host, ("alice", "wonderland"))
    # credHelpers wins over a (wrong) auths entry, as in docker
    tools.write_docker_config(mkfs.docker_config, auths={host: ("alice", "stale")},
                              cred_helpers={host: "test"})
    mkfs.path_prepend = [bin_dir]
    out = tmp_path / "out"
    convert_to_oci(mkfs, f"docker://{host}/{REPO}:{TAG}", out)
    calls = tools.read_helper_log(log)
    assert calls and all(c["action"] == "get" for c in calls)
    assert any(host in c["input"] for c in calls), calls
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_convert_with_creds_store(mkfs, htpasswd_registry, reference, tmp_path):
    host = htpasswd_registry.host
    bin_dir, log = _helper(tmp_path, host, ("alice", "wonderland"))
    tools.write_docker_config(mkfs.docker_config, creds_store="test")
    mkfs.path_prepend = [bin_dir]
    out = tmp_path / "out"
    convert_to_oci(mkfs, f"docker://{host}/{REPO}:{TAG}", out)
    assert any(host in c["input"] for c in tools.read_helper_log(log))
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_convert_credential_helper_missing_fails_clearly(mkfs, htpasswd_registry, tmp_path):
    tools.write_docker_config(mkfs.docker_config, cred_helpers={htpasswd_registry.host: "absent"})
    r = mkfs.run("convert", "--quiet", f"docker://{htpasswd_registry.host}/{REPO}:{TAG}",
                 f"oci:{tmp_path}/out:art")
    assert_clear_failure(r, "docker-credential-absent")


# -- token auth ----------------------------------------------------------------------------------

def _token_auths(mkfs, host):
    user, password = next(iter(TOKEN_USERS.items()))
    tools.write_docker_config(mkfs.docker_config, auths={host: (user, password)})


def test_convert_token_auth(mkfs, token_registry, fresh_token_server, reference, tmp_path):
    _token_auths(mkfs, token_registry.host)
    out = tmp_path / "out"
    convert_to_oci(mkfs, f"docker://{token_registry.host}/{REPO}:{TAG}", out)
    ts = fresh_token_server
    assert ts.count("get") + ts.count("password") >= 1
    granted = [a for c in ts.issued for a in c["access"]]
    assert any(a["name"] == REPO and "pull" in a["actions"] for a in granted)
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_convert_token_auth_without_credentials_fails_clearly(mkfs, token_registry, fresh_token_server,
                                                              tmp_path):
    r = mkfs.run("convert", "--quiet", f"docker://{token_registry.host}/{REPO}:{TAG}",
                 f"oci:{tmp_path}/out:art")
    assert_clear_failure(r, "401", "unauthorized", "credential", "authentication", "token")


def test_convert_token_expiring_mid_request(mkfs, token_registry, fresh_token_server, proxy_factory,
                                            test_image, reference, tmp_path):
    """The biggest layer's GET is held in the proxy until the token it carries has expired at the
    registry (expires_in 2 s): the registry answers 401 invalid_token and the client must get a
    new token and fetch the layer again."""
    ts = fresh_token_server
    ts.expires_in = 2
    px = proxy_factory(token_registry.host)
    big = max(test_image.manifest["layers"], key=lambda l: l["size"])["digest"]
    px.add_rule("delay", method="GET", path=f"/blobs/{big}$", seconds=3.5, times=1)
    _token_auths(mkfs, px.host)
    out = tmp_path / "out"
    convert_to_oci(mkfs, f"docker://{px.host}/{REPO}:{TAG}", out)
    gets = px.requests(method="GET", path=f"/blobs/{big}$")
    assert [g.status for g in gets][:1] == [401], [(g.status, g.fault) for g in gets]
    assert gets[-1].status in (200, 206)
    assert ts.count(status=200) >= 2, "a new token must have been fetched"
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_convert_short_lived_tokens_on_slow_link(mkfs, token_registry, fresh_token_server,
                                                 proxy_factory, reference, tmp_path):
    """Tokens live 2 s and the whole download takes longer (1.5 MB/s link)."""
    ts = fresh_token_server
    ts.expires_in = 2
    px = proxy_factory(token_registry.host)
    px.set_link(1_500_000, latency=0.02)
    _token_auths(mkfs, px.host)
    out = tmp_path / "out"
    convert_to_oci(mkfs, f"docker://{px.host}/{REPO}:{TAG}", out)
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)
    # whatever the client did, no request may have carried a token the registry had rejected
    # before without the client fetching a new one in between
    rejected = [r for r in px.requests() if r.status == 401 and "authorization" in r.headers]
    for r in rejected:
        later = [x for x in px.requests() if x.t_start > r.t_end and x.path == r.path]
        assert later and later[-1].status in (200, 206), f"{r.path} not retried after 401"


def test_convert_token_revoked_mid_conversion(mkfs, token_registry, fresh_token_server,
                                              proxy_factory, reference, tmp_path):
    ts = fresh_token_server
    px = proxy_factory(token_registry.host)
    rule = px.add_rule("unauthorized", method="GET", path="/blobs/sha256:", skip=1, times=1)
    _token_auths(mkfs, px.host)
    out = tmp_path / "out"
    convert_to_oci(mkfs, f"docker://{px.host}/{REPO}:{TAG}", out)
    assert rule.fired == 1
    assert ts.count(status=200) >= 2
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_convert_token_identity_token_refresh_grant(mkfs, token_registry, fresh_token_server,
                                                    reference, tmp_path):
    """config.json "identitytoken" (what docker login stores for OAuth2 registries, ACR's refresh
    tokens) is exchanged with POST grant_type=refresh_token. (DESIGN.md; not in the CLI brief.)"""
    ts = fresh_token_server
    rt = ts.issue_refresh_token(next(iter(TOKEN_USERS)))
    tools.write_docker_config(mkfs.docker_config, identity_tokens={token_registry.host: rt})
    out = tmp_path / "out"
    convert_to_oci(mkfs, f"docker://{token_registry.host}/{REPO}:{TAG}", out)
    assert ts.count("refresh_token") >= 1
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


# -- pulling the artifact back -----------------------------------------------------------------

def test_materialize_pushed_artifact_by_digest(mkfs, pushed_artifact, reference, tmp_path):
    reg = pushed_artifact.registry
    materialize_matches(mkfs, f"docker://{reg.host}/{pushed_artifact.repo}@{pushed_artifact.digest}",
                        tmp_path / "mat", reference)


def test_check_and_inspect_remote_artifact(mkfs, pushed_artifact, tmp_path):
    ref = f"docker://{pushed_artifact.registry.host}/{pushed_artifact.repo}@{pushed_artifact.digest}"
    mkfs.ok("check", ref)
    r = mkfs.ok("inspect", ref)
    assert r.stdout.strip() or r.stderr.strip()
