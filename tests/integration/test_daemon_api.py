"""erostreamd's control API over its unix socket (HTTP/1.1 + JSON, curl --unix-socket is a client)
and erostreamctl's views of it: /health, /v1/mounts (POST, GET, DELETE), /v1/stats, /metrics
(Prometheus text), error bodies with request ids that also appear in the daemon's log."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

import erostream_testlib as lib
from daemon_fixtures import *  # noqa: F401,F403
from daemon_fixtures import STAT_KEYS, assert_tree_matches, checked_read, parse_prometheus

pytestmark = [pytest.mark.kernel, pytest.mark.daemon]

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def assert_error_body(r, what):
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], f"{what}: {body}"
    assert isinstance(body.get("request_id"), str) and body["request_id"], f"{what}: {body}"
    return body


def test_socket_mode_and_health(daemon):
    st = os.stat(daemon.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    for r in (daemon.api("GET", "/health"), daemon.curl("GET", "/health")):
        assert r.status == 200, (r.via, r.status, r.text)
        assert r.headers.get("content-type", "").startswith("application/json"), (r.via, r.headers)
        assert r.json() == {"status": "ok", "frontend": "fanotify", "frontends": ["fanotify"], "mounts": 0}, (r.via, r.json())


def test_mount_list_stats_umount_over_http(daemon, stream_images, work):
    img = stream_images["a"]
    mnt = work / "mnt"
    mnt.mkdir()
    r = daemon.curl("POST", "/v1/mounts", {"ref": img.artifact_ref, "mountpoint": str(mnt),
                                           "frontend": "auto", "prefetch": "none"})
    assert r.status == 200, (r.status, r.text)
    daemon.mounts.append(mnt)
    m = r.json()
    assert m["mountpoint"] == str(mnt), m
    assert m["artifact"] == img.artifact_digest, m
    assert m["subject"] == img.image.manifest_digest, m
    assert m["frontend"] == "fanotify", m
    assert m["devices"] == len(img.data_blobs), m
    assert lib.is_mountpoint(mnt)

    o = checked_read(mnt / "data/f02", img.expected("data/f02"))
    assert o.clean and o.eio == 0, o

    listed = daemon.api("GET", "/v1/mounts")
    assert listed.status == 200
    entries = listed.json()
    assert isinstance(entries, list) and len(entries) == 1, entries
    e = entries[0]
    for k in ("mountpoint", "ref", "artifact", "frontend", "prefetch", "devices"):
        assert k in e, f"GET /v1/mounts entry without {k}: {e}"
    assert (e["mountpoint"], e["ref"], e["artifact"], e["frontend"], e["prefetch"]) == \
        (str(mnt), img.artifact_ref, img.artifact_digest, "fanotify", "none"), e
    assert len(e["devices"]) == len(img.data_blobs)
    for dev, desc in zip(e["devices"], img.data_blobs):
        assert dev["blob"] == desc["digest"], dev
        assert dev["size"] == int(desc["annotations"]["io.erostream.device.size"]), (dev, desc)
        assert isinstance(dev["present_bytes"], int) and 0 <= dev["present_bytes"] <= dev["size"], dev
    assert e["devices"][0]["present_bytes"] > 0, "a chunk of the base layer was read"
    ctl_list = daemon.ctl("list", "--json")
    assert ctl_list.returncode == 0, daemon.describe(ctl_list)
    assert json.loads(ctl_list.stdout) == entries
    plain = daemon.ctl("list")
    assert plain.returncode == 0 and str(mnt) in plain.stdout, daemon.describe(plain)

    stats = daemon.api("GET", "/v1/stats").json()
    for k in STAT_KEYS:
        assert isinstance(stats.get(k), int) and stats[k] >= 0, f"/v1/stats {k}: {stats}"
    assert stats["mounts"] == 1 and stats["chunks_fetched"] >= 1 and stats["events"] >= 1, stats
    ctl_stats = daemon.stats()
    for k in ("bytes_fetched", "chunks_fetched", "cache_hits", "cache_misses", "errors"):
        assert ctl_stats[k] == stats[k], (k, ctl_stats, stats)
    plain = daemon.ctl("stats")
    assert plain.returncode == 0 and "bytes_fetched" in plain.stdout.replace(" ", "_"), daemon.describe(plain)

    h = daemon.health()
    assert h["mounts"] == 1

    r = daemon.curl("DELETE", f"/v1/mounts?mountpoint={mnt}")
    assert r.status == 200, (r.status, r.text)
    assert r.json()["mountpoint"] == str(mnt)
    assert not lib.is_mountpoint(mnt)
    assert daemon.api("GET", "/v1/mounts").json() == []
    assert daemon.health()["mounts"] == 0


def test_metrics_are_prometheus_text(daemon, stream_images, work):
    img = stream_images["b"]
    mnt = work / "mnt"
    daemon.mount(img.artifact_ref, mnt, prefetch="none")
    assert_tree_matches(img, mnt)
    r = daemon.curl("GET", "/metrics")
    assert r.status == 200, r.text
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    m = parse_prometheus(r.text)
    stats = daemon.api("GET", "/v1/stats").json()
    assert "erostream_bytes_fetched_total" in m.names(), sorted(m.names())
    assert m.types.get("erostream_bytes_fetched_total") == "counter" or \
        m.types.get("erostream_bytes_fetched") == "counter", m.types
    # the daemon is idle: the two views agree
    assert m.value("erostream_bytes_fetched_total") == stats["bytes_fetched"], (m.samples, stats)
    for name in ("erostream_chunks_fetched_total", "erostream_cache_hits_total", "erostream_cache_misses_total",
                 "erostream_errors_total"):
        if name in m.names():
            assert m.value(name) == stats[name[len("erostream_"):-len("_total")]], (name, stats)
    assert all(n.startswith("erostream_") for n in m.names()), sorted(m.names())
    for v in m.samples.values():
        assert v == v and v >= 0, m.samples  # no NaN, no negative counter
    daemon.umount(mnt)


def test_error_bodies_and_request_ids(daemon, work):
    cases = [
        ("GET", "/v1/no-such-endpoint", None, (404,)),
        ("POST", "/v1/mounts", "{not json", (400,)),
        ("POST", "/v1/mounts", {"mountpoint": str(work)}, (400, 422)),               # no ref
        ("POST", "/v1/mounts", {"ref": "oci:/nonexistent:x", "mountpoint": "relative/path"}, (400, 422)),
        ("POST", "/v1/mounts", {"ref": "oci:/nonexistent:x", "mountpoint": str(work),
                                "prefetch": "sometimes"}, (400, 422)),
        ("DELETE", f"/v1/mounts?mountpoint={work}/never-mounted", None, (400, 404, 409)),
        ("DELETE", "/v1/mounts", None, (400, 422)),
    ]
    ids = []
    for method, path, body, statuses in cases:
        r = daemon.api(method, path, body)
        assert r.status in statuses, f"{method} {path} {body!r}: {r.status} {r.text}"
        ids.append(assert_error_body(r, f"{method} {path}")["request_id"])
    assert len(set(ids)) == len(ids), f"request ids repeat: {ids}"
    # a mount that fails inside the daemon: its error line in the log carries the request id
    (work / "m").mkdir()
    r = daemon.api("POST", "/v1/mounts", {"ref": f"oci:{work}/no-such-layout:x", "mountpoint": str(work / "m"),
                                          "prefetch": "none"})
    assert r.status >= 400, (r.status, r.text)
    rid = assert_error_body(r, "mount of a missing layout")["request_id"]
    assert "no-such-layout" in r.json()["error"], r.json()
    daemon.health()
    lines = [l for l in daemon.log.read_text(errors="replace").splitlines() if rid in l]
    assert lines, f"request id {rid} of a failed mount is not in the daemon's log {daemon.log}"
