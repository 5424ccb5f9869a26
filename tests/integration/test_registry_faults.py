"""Registry faults between erostream-mkfs and the registry (the fault proxy), for both directions
of data: convert (pulling the source image's blobs) and materialize (pulling the artifact's
blobs). Each run ends with data identical to the local reference or with a clear error, and never
with wrong bytes anywhere: no blob with wrong content in an OCI layout, no tag on a failed
conversion, no device files from a failed materialize."""

import email.utils
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.checks import (assert_clear_failure, local_artifact_matches, materialize_matches,  # noqa: E402
                             no_partial_output)
from registry.fault_proxy import Rule  # noqa: E402
from registry.fixtures import *  # noqa: E402,F401,F403
from registry.fixtures import REPO, TAG  # noqa: E402
from registry.images import read_layout_manifest  # noqa: E402
from registry import tools  # noqa: E402

RETRY_MAX = 3            # for faults that never stop: at most RETRY_MAX + 1 attempts
RECOVER_RETRY_MAX = 5    # recoverable faults fail at most 3 times in a row


def by_range(records):
    """Requests grouped by their Range header (None: whole blob): a client may fetch one blob
    as several ranges, and attempts are counted per range."""
    groups = {}
    for r in records:
        groups.setdefault(r.headers.get("range"), []).append(r)
    return groups


def max_attempts(records) -> int:
    return max((len(g) for g in by_range(records).values()), default=0)


def retry_of(records, first):
    """The next request for the same range as FIRST, after FIRST ended."""
    later = [r for r in records if r.headers.get("range") == first.headers.get("range")
             and r.t_start >= first.t_end and r is not first]
    return later[0] if later else None


class Target:
    """What one operation pulls through the proxy: the blob digests it needs and how to run it."""

    def __init__(self, op, test_image, reference, pushed_artifact):
        self.op = op
        self.image_digest = test_image.digest
        if op == "convert":
            blobs = {l["digest"]: l["size"] for l in test_image.manifest["layers"]}
            self.manifest = test_image.digest
        else:
            blobs = {l["digest"]: l["size"] for l in reference.manifest["layers"]}
            self.manifest = reference.digest
        self.big = max(blobs, key=blobs.get)
        self.big_size = blobs[self.big]
        self.blobs = blobs
        self.reference = reference

    @property
    def big_path(self) -> str:
        return f"/blobs/{self.big}$"

    def run(self, mkfs, px, tmp_path, retry_max=RETRY_MAX, **env):
        e = mkfs.env(EROSTREAM_RETRY_MAX=str(retry_max), **env)
        if self.op == "convert":
            self.out = tmp_path / "out"
            return mkfs.run("convert", "--quiet", f"docker://{px.host}/{REPO}:{TAG}",
                            f"oci:{self.out}:art", env=e)
        self.out = tmp_path / "mat"
        return mkfs.run("materialize", "--quiet", f"docker://{px.host}/{REPO}@{self.manifest}",
                        str(self.out), env=e)

    def check_ok(self, mkfs, run, tmp_path):
        assert run.returncode == 0, run.describe()
        if self.op == "convert":
            local_artifact_matches(mkfs, self.out, "art", tmp_path / "mat-check", self.reference)
            _, data = read_layout_manifest(self.out, "art")
            assert json.loads(data)["subject"]["digest"] == self.image_digest
        else:
            got = tools.tree_digests(self.out)
            assert got == self.reference.files, "materialized files differ from the reference"

    def check_failed_cleanly(self, run, *words):
        assert_clear_failure(run, *words)
        if self.op == "convert":
            no_partial_output(layout=self.out, tag="art")
        else:
            no_partial_output(materialized=self.out)


@pytest.fixture(params=["convert", "materialize"])
def target(request, test_image, plain_registry):
    if request.param == "convert":
        # convert needs no artifact in the registry, but the reference to compare against
        reference = request.getfixturevalue("reference")
        return Target("convert", test_image, reference, None)
    pushed = request.getfixturevalue("pushed_artifact")
    return Target("materialize", test_image, request.getfixturevalue("reference"), pushed)


# Recoverable faults: id -> function(target) -> rules. Expected: the run succeeds with the
# reference's bytes, except where EITHER says a clean failure is acceptable too.
RECOVERABLE = {
    "500-once": lambda t: [Rule("status", method="GET", path="/blobs/sha256:", status=500, times=1)],
    "502-503-504": lambda t: [Rule("status", method="GET", path=t.big_path, status=s, times=1)
                              for s in (502, 503, 504)],
    "manifest-503-twice": lambda t: [Rule("status", method="GET", path="/manifests/", status=503,
                                          times=2)],
    "408-once": lambda t: [Rule("status", method="GET", path=t.big_path, status=408, times=1)],
    "reset-before-answer": lambda t: [Rule("reset", method="GET", path=t.big_path, times=2)],
    "reset-mid-body": lambda t: [Rule("reset", method="GET", path=t.big_path, times=1,
                                      after_bytes=t.big_size // 3)],
    "cut-once": lambda t: [Rule("cut", method="GET", path=t.big_path, times=1)],
    "cut-three-times": lambda t: [Rule("cut", method="GET", path=t.big_path, times=3, fraction=0.7)],
    "cut-then-range-ignored": lambda t: [Rule("cut", method="GET", path=t.big_path, times=1),
                                         Rule("strip_range", method="GET", path=t.big_path)],
    "cut-then-range-416": lambda t: [Rule("cut", method="GET", path=t.big_path, times=1),
                                     Rule("range_416", method="GET", path=t.big_path, when_range=True)],
    "corrupt-once": lambda t: [Rule("corrupt", method="GET", path=t.big_path, times=1)],
    "corrupt-first-byte-once": lambda t: [Rule("corrupt", method="GET", path=t.big_path, times=1,
                                               offset=0)],
    "corrupt-manifest-once": lambda t: [Rule("corrupt", method="GET", path="/manifests/", times=1)],
    "delay-manifest": lambda t: [Rule("delay", method="GET", path="/manifests/", seconds=1.0, times=1)],
    "slow-response": lambda t: [Rule("slow", method="GET", path=t.big_path,
                                     bytes_per_second=3_000_000)],
}
# A manifest fetched by tag can only be checked against Docker-Content-Digest; a client that
# does not may fail cleanly instead (a wrong subject digest would be caught by check_ok).
EITHER = {("corrupt-manifest-once", "convert")}


@pytest.mark.parametrize("fault", list(RECOVERABLE))
def test_recoverable_fault(fault, target, mkfs, plain_proxy, tmp_path):
    rules = RECOVERABLE[fault](target)
    plain_proxy.set_rules(rules)
    run = target.run(mkfs, plain_proxy, tmp_path, retry_max=RECOVER_RETRY_MAX)
    if (fault, target.op) in EITHER and run.returncode != 0:
        target.check_failed_cleanly(run)
    else:
        target.check_ok(mkfs, run, tmp_path)
    for r in rules:
        if r.action not in ("strip_range", "range_416"):
            assert r.fired >= 1, f"the fault {r} never happened: the test proved nothing"


def test_link_100mbit_20ms(target, mkfs, plain_proxy, tmp_path):
    plain_proxy.set_link(12_500_000, latency=0.02)
    run = target.run(mkfs, plain_proxy, tmp_path)
    target.check_ok(mkfs, run, tmp_path)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured(form, target, mkfs, plain_proxy, tmp_path):
    wait = 2
    value = str(wait) if form == "seconds" else \
        email.utils.formatdate(time.time() + wait + 1, usegmt=True)  # whole seconds: at least 2 s
    plain_proxy.add_rule("status", method="GET", path=target.big_path, status=429,
                         headers={"Retry-After": value}, times=1)
    run = target.run(mkfs, plain_proxy, tmp_path)
    target.check_ok(mkfs, run, tmp_path)
    gets = plain_proxy.requests(method="GET", path=target.big_path)
    first = [g for g in gets if g.status == 429][0]
    again = retry_of(gets, first)
    assert again is not None, "the 429 was never retried"
    waited = again.t_start - first.t_end
    assert waited >= wait - 0.1, f"retried {waited:.2f}s after a 429 with Retry-After {value!r}"


def test_retry_after_on_503(target, mkfs, plain_proxy, tmp_path):
    plain_proxy.add_rule("status", method="GET", path=target.big_path, status=503,
                         headers={"Retry-After": "1"}, times=1)
    run = target.run(mkfs, plain_proxy, tmp_path)
    target.check_ok(mkfs, run, tmp_path)
    gets = plain_proxy.requests(method="GET", path=target.big_path)
    first = [g for g in gets if g.status == 503][0]
    again = retry_of(gets, first)
    assert again is not None and again.t_start - first.t_end >= 0.9


# -- faults that must end in a clear error ----------------------------------------------------------

def test_corrupt_on_every_attempt_fails_without_writing_wrong_bytes(target, mkfs, plain_proxy, tmp_path):
    plain_proxy.add_rule("corrupt", method="GET", path=target.big_path)
    run = target.run(mkfs, plain_proxy, tmp_path)
    target.check_failed_cleanly(run, target.big[7:19], "digest", "sha256", "mismatch", "verif")
    n = max_attempts(plain_proxy.requests(method="GET", path=target.big_path))
    assert 1 <= n <= RETRY_MAX + 1, f"{n} GETs of the same bytes of a blob that is always corrupt"


def test_server_error_on_every_attempt_is_bounded(target, mkfs, plain_proxy, tmp_path):
    plain_proxy.add_rule("status", method="GET", path=target.big_path, status=500)
    t = time.monotonic()
    run = target.run(mkfs, plain_proxy, tmp_path)
    target.check_failed_cleanly(run, "500", target.big[7:19])
    n = max_attempts(plain_proxy.requests(method="GET", path=target.big_path))
    assert 2 <= n <= RETRY_MAX + 1, f"{n} GETs of the same range with EROSTREAM_RETRY_MAX={RETRY_MAX}"
    assert time.monotonic() - t < 60


def test_reset_on_every_attempt_fails_clearly(target, mkfs, plain_proxy, tmp_path):
    plain_proxy.add_rule("reset", method="GET", path=target.big_path)
    run = target.run(mkfs, plain_proxy, tmp_path)
    target.check_failed_cleanly(run, target.big[7:19], "reset", "connection", "recv")
    assert max_attempts(plain_proxy.requests(method="GET", path=target.big_path)) <= RETRY_MAX + 1


def test_cut_on_every_attempt_fails_clearly(target, mkfs, plain_proxy, tmp_path):
    plain_proxy.add_rule("cut", method="GET", path=target.big_path, fraction=0.0)
    run = target.run(mkfs, plain_proxy, tmp_path)
    target.check_failed_cleanly(run, target.big[7:19], "short", "partial", "transfer", "closed")


def test_missing_blob_is_not_retried_forever(target, mkfs, plain_proxy, tmp_path):
    plain_proxy.add_rule("status", method="GET", path=target.big_path, status=404,
                         body='{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}')
    run = target.run(mkfs, plain_proxy, tmp_path)
    target.check_failed_cleanly(run, target.big[7:19], "404", "not found", "unknown")
    assert max_attempts(plain_proxy.requests(method="GET", path=target.big_path)) <= 2, \
        "404 is not a transient error"


# -- redirects to a storage host --------------------------------------------------------------------

@pytest.fixture
def auth_proxy(proxy_factory, htpasswd_registry, mkfs):
    """A proxy in front of the htpasswd registry, with credentials for the proxy's address, so
    that blob requests carry an Authorization header that must never reach the storage host."""
    px = proxy_factory(htpasswd_registry.host)
    tools.write_docker_config(mkfs.docker_config, auths={px.host: htpasswd_registry.credentials()})
    return px


def _convert_via(mkfs, px, tmp_path):
    out = tmp_path / "out"
    run = mkfs.run("convert", "--quiet", f"docker://{px.host}/{REPO}:{TAG}", f"oci:{out}:art",
                   env=mkfs.env(EROSTREAM_RETRY_MAX=str(RETRY_MAX)))
    return run, out


def test_redirect_sends_no_credentials_to_storage(auth_proxy, mkfs, test_image, reference, tmp_path):
    px = auth_proxy
    px.add_rule("redirect", method="GET", path="/blobs/sha256:")
    run, out = _convert_via(mkfs, px, tmp_path)
    assert run.returncode == 0, run.describe()
    assert px.violations == []
    served = {r.path for r in px.requests(listener="storage", status=200)} | \
             {r.path for r in px.requests(listener="storage", status=206)}
    assert served, "the storage host served nothing: the redirect was not followed"
    assert px.count(method="GET", path="/blobs/sha256:", status=307) >= len(test_image.layer_digests)
    assert all("authorization" not in r.headers for r in px.requests(listener="storage"))
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_expired_signed_url_goes_back_to_registry(auth_proxy, mkfs, test_image, reference, tmp_path):
    px = auth_proxy
    px.add_rule("redirect", method="GET", path="/blobs/sha256:", expire_first=1)
    run, out = _convert_via(mkfs, px, tmp_path)
    assert run.returncode == 0, run.describe()
    assert px.violations == []
    for layer in test_image.layer_digests:
        regs = px.requests(method="GET", path=f"/blobs/{layer}$", status=307)
        assert len(regs) >= 2, f"{layer}: after the 403 of an expired URL the registry must be asked again"
    assert px.count(listener="storage", status=403) >= len(test_image.layer_digests)
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


@pytest.mark.parametrize("range_mode", ["honour", "ignore", "416"])
def test_storage_cut_then_range_modes(range_mode, auth_proxy, mkfs, test_image, reference, tmp_path):
    px = auth_proxy
    big = max(test_image.manifest["layers"], key=lambda l: l["size"])["digest"]
    px.storage_range_mode = range_mode
    px.add_rule("redirect", method="GET", path="/blobs/sha256:")
    cut = px.add_rule("cut", where="storage", method="GET", path=f"/{big}$", times=1, fraction=0.5)
    run, out = _convert_via(mkfs, px, tmp_path)
    assert run.returncode == 0, run.describe()
    assert cut.fired == 1 and px.violations == []
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_storage_errors_are_retried(auth_proxy, mkfs, reference, tmp_path):
    px = auth_proxy
    px.add_rule("redirect", method="GET", path="/blobs/sha256:")
    px.add_rule("status", where="storage", status=503, times=1)
    px.add_rule("reset", where="storage", times=1)
    px.add_rule("corrupt", where="storage", times=1)
    run, out = _convert_via(mkfs, px, tmp_path)
    assert run.returncode == 0, run.describe()
    assert px.violations == []
    local_artifact_matches(mkfs, out, "art", tmp_path / "mat", reference)


def test_redirect_materialize(proxy_factory, pushed_artifact, mkfs, reference, tmp_path):
    px = proxy_factory(pushed_artifact.registry.host)
    px.add_rule("redirect", method="GET", path="/blobs/sha256:", expire_first=1)
    materialize_matches(mkfs, f"docker://{px.host}/{pushed_artifact.repo}@{pushed_artifact.digest}",
                        tmp_path / "mat", reference)
    assert px.count(listener="storage", status=200) + px.count(listener="storage", status=206) >= 1
