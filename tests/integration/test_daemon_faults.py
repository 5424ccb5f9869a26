"""The tests' fault proxy between erostreamd and Debian's docker-registry: 500/503/429, connection
resets, cut bodies, corrupted bytes, a registry that ignores Range or answers 416. A read gets
either the right bytes or EIO, never wrong bytes or zeros; nothing wrong is cached (once the
faults are gone, everything reads back correctly, also from the cache files); the daemon stays
up. Transient faults are retried (the read succeeds), a chunk that fails verification is
fetched again."""

from __future__ import annotations

import os
import re

import pytest

from daemon_fixtures import *  # noqa: F401,F403
from daemon_fixtures import N_DATA_FILES, assert_contents_match, assert_tree_matches, checked_read, log_tail
from registry.fault_proxy import Rule

pytestmark = [pytest.mark.kernel, pytest.mark.daemon]

RETRIES = {"EROSTREAM_RETRY_MAX": "2", "EROSTREAM_RETRY_BASE_MS": "10"}


def data_path_re(img) -> str:
    return r"/blobs/(" + "|".join(re.escape(d["digest"]) for d in img.data_blobs) + r")$"


# (name, rule parameters, expectation): "eio" = the fault never clears, the read must fail;
# "ok" = the daemon must get the bytes anyway (retry, refetch, or using a 200 for a range);
# "any" = right bytes or EIO.
PERSISTENT = [
    ("500", dict(action="status", status=500), "eio"),
    ("503", dict(action="status", status=503), "eio"),
    ("429 Retry-After 1", dict(action="status", status=429, headers={"Retry-After": "1"}), "eio"),
    ("reset before answering", dict(action="reset"), "eio"),
    ("reset after 1000 body bytes", dict(action="reset", after_bytes=1000), "eio"),
    ("body cut in half", dict(action="cut", fraction=0.5), "eio"),
    ("one byte corrupted", dict(action="corrupt"), "eio"),
    ("404 for the blob", dict(action="status", status=404,
                              body='{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}'), "eio"),
    ("Range ignored (200, whole blob)", dict(action="strip_range"), "ok"),
    ("416 for every range", dict(action="range_416"), "any"),
]

TRANSIENT = [
    ("500 once", dict(action="status", status=500, times=1)),
    ("503 twice", dict(action="status", status=503, times=2)),
    ("429 once, Retry-After 0", dict(action="status", status=429, headers={"Retry-After": "0"}, times=1)),
    ("reset once", dict(action="reset", times=1)),
    ("reset mid-body once", dict(action="reset", after_bytes=5000, times=1)),
    ("cut once", dict(action="cut", fraction=0.3, times=1)),
    ("corrupt once", dict(action="corrupt", times=1)),
    ("corrupt twice", dict(action="corrupt", times=2)),
]


@pytest.fixture
def faulty(daemons, registry, published, stream_images, proxies, work):
    img, pub = stream_images["a"], published["a"]
    proxy = proxies(registry.host)
    # These tests pin which chunks a read fetches while a fault is on (one file per fault, one
    # chunk per request): sequential readahead would fetch the next file's chunks, or several
    # chunks per corrupted body, under the previous rule.
    config = work / "no-readahead.toml"
    config.write_text("[fetch]\nreadahead = false\n")
    d = daemons(env_extra=RETRIES, extra_args=["--config", str(config)])
    mnt = work / "mnt"
    d.mount(pub.artifact_ref(proxy.host), mnt, prefetch="none")
    return d, proxy, img, mnt


def test_faults_give_right_bytes_or_eio(faulty):
    d, proxy, img, mnt = faulty
    path = data_path_re(img)
    files = iter([f"data/f{i:02d}" for i in range(N_DATA_FILES - 2)] + sorted(img.regular_files("app/")))
    problems, fired = [], []
    s_start = d.stats()
    a_start = d.api("GET", "/v1/stats").json()
    for name, params, expect in PERSISTENT:
        rel = next(files)
        params = dict(params)
        rule = Rule(params.pop("action"), method="GET", path=path, **params)
        proxy.set_rules([rule])
        o = checked_read(mnt / rel, img.expected(rel))
        proxy.clear_rules()
        fired.append((name, rule.fired))
        if o.wrong or o.other_errors:
            problems.append(f"{name}: /{rel}: {o.wrong[:3]} {o.other_errors[:3]}")
        elif expect == "eio" and o.eio == 0:
            problems.append(f"{name}: /{rel} read fine although the fault never cleared (was it hit? fired {rule.fired})")
        elif expect == "ok" and o.eio:
            problems.append(f"{name}: /{rel}: {o.eio} EIO; the daemon must cope with this registry behaviour")
        d.health()
    assert all(n for _, n in fired), f"faults that never fired (test broken?): {fired}"
    assert not problems, "\n".join(problems) + "\n" + d.log_digest()
    s = d.stats()
    assert s["errors"] > s_start["errors"], (s_start, s)
    a = d.api("GET", "/v1/stats").json()
    assert a["events_denied"] > a_start["events_denied"], (a_start, a)

    for name, params in TRANSIENT:
        rel = next(files)
        params = dict(params)
        rule = Rule(params.pop("action"), method="GET", path=path, **params)
        proxy.set_rules([rule])
        o = checked_read(mnt / rel, img.expected(rel))
        proxy.clear_rules()
        if not o.clean or o.eio:
            problems.append(f"{name}: /{rel}: {o.eio} EIO {o.wrong[:3]} {o.other_errors[:3]} (fired {rule.fired})")
        elif rule.fired == 0:
            problems.append(f"{name}: the fault never fired")
        d.health()
    assert not problems, "transient faults must be retried:\n" + "\n".join(problems) + \
        "\n" + d.log_digest()

    # Faults gone: every file reads back right, from the cache files too; the tree is the image.
    assert_contents_match(img, mnt, drop_cache=True)
    assert_contents_match(img, mnt, drop_cache=True)
    assert_tree_matches(img, mnt)
    d.health()


def test_corruption_never_reaches_the_cache(faulty):
    """Every data blob response corrupted while a big file is read: EIO only; then, faults
    cleared, the same file reads right and the cache file holds the right device bytes."""
    d, proxy, img, mnt = faulty
    proxy.set_rules([Rule("corrupt", method="GET", path=data_path_re(img))])
    big = img.expected("big/blob")
    o = checked_read(mnt / "big/blob", big, block=256 * 1024)
    assert not o.wrong and not o.other_errors, o
    assert o.eio > 0 and o.ok_bytes == 0, f"reads succeeded through a registry that corrupts every body: {o}"
    proxy.clear_rules()
    o = checked_read(mnt / "big/blob", big, block=256 * 1024, drop_cache=True)
    assert o.clean and o.eio == 0 and o.ok_bytes == len(big), o
    d.health()


def test_metadata_fetch_faults_fail_the_mount_clearly(daemons, registry, published, stream_images, proxies, work):
    img, pub = stream_images["b"], published["b"]
    proxy = proxies(registry.host)
    d = daemons(env_extra=RETRIES)
    meta = img.meta_blob["digest"]
    mnt = work / "mnt"
    for rule, words in [
        (Rule("status", method="GET", path=re.escape(meta) + "$", status=500), ("500", "server error", meta[7:19])),
        (Rule("corrupt", method="GET", path=re.escape(meta) + "$"), ("digest", "sha256", "verif", "mismatch")),
        (Rule("cut", method="GET", path=re.escape(meta) + "$"), ("short", "transfer", "closed", "incomplete",
                                                                  "partial", "bytes")),
    ]:
        proxy.set_rules([rule])
        r = d.mount(pub.artifact_ref(proxy.host), mnt, ok=False)
        proxy.clear_rules()
        assert rule.fired, f"{rule} never fired"
        assert r.returncode == 1, d.describe(r)
        assert any(w.lower() in r.stderr.lower() for w in words), \
            f"{rule.action}: the error names none of {words}:\n{d.describe(r)}"
        assert not os.path.ismount(mnt), f"{mnt} mounted after a failed mount"
        d.health()
    d.mount(pub.artifact_ref(proxy.host), mnt, prefetch="all")
    assert_tree_matches(img, mnt)


# -- the same promises with a local layout whose blobs are damaged -------------------------------

def damaged_copy(img, work):
    """A private copy of the artifact layout (the session's stays intact)."""
    import shutil
    dst = work / "layout"
    shutil.copytree(img.artifact_layout, dst)
    return dst


def rewrite_blob(path, fn) -> bytes:
    """Replaces the blob file by fn(bytes) (new file + rename); returns the original bytes."""
    old = path.read_bytes()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(fn(bytearray(old)))
    tmp.rename(path)
    return old


def test_corrupt_local_data_blob_gives_eio_then_heals(daemon, stream_images, work):
    import erostream_testlib as lib
    img = stream_images["a"]
    layout = damaged_copy(img, work)
    blob = lib.blob_path(layout, img.data_blobs[0]["digest"])

    def flip_every_64_bytes(b):  # every chunk, however well it compressed
        for off in range(10, len(b), 64):
            b[off] ^= 0xFF
        return bytes(b)

    original = rewrite_blob(blob, flip_every_64_bytes)
    mnt = work / "mnt"
    daemon.mount(f"oci:{layout}:{img.artifact_tag}", mnt, prefetch="none")
    s0 = daemon.stats()
    damaged = [f"data/f{i:02d}" for i in range(10)] + ["big/blob"]
    for rel in damaged:
        o = checked_read(mnt / rel, img.expected(rel))
        assert not o.wrong and not o.other_errors, f"/{rel}: {o}"
        assert o.eio > 0 and o.ok_bytes == 0, f"/{rel} read from a corrupted blob: {o}"
    s1 = daemon.stats()
    assert s1["errors"] > s0["errors"], (s0, s1)
    daemon.health()
    rewrite_blob(blob, lambda b: original)
    assert_contents_match(img, mnt, drop_cache=True)
    assert_tree_matches(img, mnt)
    daemon.umount(mnt)


def test_corrupt_local_metadata_blob_fails_the_mount(daemon, stream_images, work):
    import erostream_testlib as lib
    img = stream_images["b"]
    layout = damaged_copy(img, work)
    meta = lib.blob_path(layout, img.meta_blob["digest"])

    def flip(b):
        b[len(b) // 2] ^= 0x01
        return bytes(b)

    original = rewrite_blob(meta, flip)
    mnt = work / "mnt"
    r = daemon.mount(f"oci:{layout}:{img.artifact_tag}", mnt, ok=False)
    assert r.returncode == 1, daemon.describe(r)
    assert any(w in r.stderr.lower() for w in ("digest", "sha256", "verif", "mismatch")), daemon.describe(r)
    assert not os.path.ismount(mnt)
    daemon.health()
    rewrite_blob(meta, lambda b: original)
    daemon.mount(f"oci:{layout}:{img.artifact_tag}", mnt, prefetch="all")
    assert_tree_matches(img, mnt)
    daemon.umount(mnt)
