"""A small in-memory OCI registry with the referrers API (OCI distribution spec 1.1).

Enough of the spec for push, pull and discovery: /v2/, manifests GET/HEAD/PUT/DELETE by tag or
digest (stored bytes and content type, Docker-Content-Digest, OCI-Subject on a PUT whose manifest
has a subject), blobs HEAD/GET (single byte ranges: 206; unsatisfiable: 416)/DELETE, uploads
(POST monolithic with ?digest=, POST+PATCH+PUT sessions, chunked request bodies, cross-repo
mount with ?mount=&from=), tags/list, and GET /v2/<name>/referrers/<digest>[?artifactType=].

Readiness: the listening socket exists when start() returns (the server thread serves it from
then on), so a client may connect at once. referrers_api=False makes the referrers endpoint
answer 404, like a registry without it, so the tag-schema fallback can be exercised here too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .httpwire import Headers, parse_single_range, read_body
from .images import MT_INDEX, MT_MANIFEST

MANIFEST_TYPES = {
    MT_MANIFEST, MT_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
NAME_RE = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
ROUTE = re.compile(rf"^/v2/(?P<name>{NAME_RE})/(?P<kind>manifests|blobs/uploads|blobs|referrers|tags)"
                   rf"(?:/(?P<ref>[^/]*))?$")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class ReqRecord:
    method: str
    path: str
    query: str
    headers: dict
    status: int
    time: float


class Repo:
    def __init__(self):
        self.manifests: dict[str, tuple[bytes, str]] = {}  # digest -> (bytes, media type)
        self.tags: dict[str, str] = {}
        self.blobs: set[str] = set()                        # digests linked into this repo


class ReferrersServer:
    def __init__(self, referrers_api: bool = True, basic_auth: tuple[str, str] | None = None):
        self.referrers_api = referrers_api
        self.basic_auth = basic_auth
        self.blobs: dict[str, bytes] = {}                  # content store shared by all repos
        self.repos: dict[str, Repo] = {}
        self.uploads: dict[str, tuple[str, bytearray]] = {}
        self.records: list[ReqRecord] = []
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- addresses and life cycle --------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> "ReferrersServer":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="referrers-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- direct access for assertions ----------------------------------------------------------

    def repo(self, name: str) -> Repo:
        with self.lock:
            return self.repos.setdefault(name, Repo())

    def tags(self, name: str) -> list[str]:
        with self.lock:
            r = self.repos.get(name)
            return sorted(r.tags) if r else []

    def referrers(self, name: str, digest: str, artifact_type: str | None = None) -> list[dict]:
        out = []
        with self.lock:
            r = self.repos.get(name)
            if r is None:
                return out
            for d, (data, mt) in sorted(r.manifests.items()):
                try:
                    m = json.loads(data)
                except ValueError:
                    continue
                if (m.get("subject") or {}).get("digest") != digest:
                    continue
                at = m.get("artifactType") or (m.get("config") or {}).get("mediaType", "")
                if artifact_type and at != artifact_type:
                    continue
                desc = {"mediaType": m.get("mediaType", mt), "digest": d, "size": len(data),
                        "artifactType": at}
                if m.get("annotations"):
                    desc["annotations"] = m["annotations"]
                out.append(desc)
        return out

    def requests(self, method: str | None = None, path: str | None = None) -> list[ReqRecord]:
        rx = re.compile(path) if path else None
        with self.lock:
            return [r for r in self.records if (method is None or r.method == method)
                    and (rx is None or rx.search(r.path))]

    # -- protocol ------------------------------------------------------------------------------

    def _handler_class(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            # helpers
            def _send(self, status, body=b"", headers=None, head=False):
                self.send_response(status)
                h = {"Docker-Distribution-API-Version": "registry/2.0"}
                h.update(headers or {})
                if "Content-Length" not in h:
                    h["Content-Length"] = str(len(body))
                for k, v in h.items():
                    self.send_header(k, v)
                self.end_headers()
                if body and not head:
                    self.wfile.write(body)
                u = urllib.parse.urlsplit(self.path)
                with srv.lock:
                    srv.records.append(ReqRecord(self.command, u.path, u.query,
                                                 {k.lower(): v for k, v in self.headers.items()},
                                                 status, time.monotonic()))

            def _error(self, status, code, message, head=False):
                body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
                self._send(status, body, {"Content-Type": "application/json"}, head=head)

            def _body(self) -> bytes:
                return read_body(self.rfile, Headers(list(self.headers.items())))

            def _authorized(self) -> bool:
                if srv.basic_auth is None:
                    return True
                a = self.headers.get("Authorization", "")
                want = "Basic " + base64.b64encode(":".join(srv.basic_auth).encode()).decode()
                if a == want:
                    return True
                self._body()
                self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                           {"Content-Type": "application/json",
                            "WWW-Authenticate": 'Basic realm="erostream-referrers"'},
                           head=self.command == "HEAD")
                return False

            def _dispatch(self):
                if not self._authorized():
                    return
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query)
                if u.path in ("/v2", "/v2/"):
                    self._body()
                    return self._send(200, b"{}", {"Content-Type": "application/json"},
                                      head=self.command == "HEAD")
                m = ROUTE.match(u.path)
                if not m:
                    self._body()
                    return self._error(404, "NAME_UNKNOWN", f"no route for {u.path}")
                name, kind, ref = m.group("name"), m.group("kind"), m.group("ref")
                fn = getattr(self, f"_{kind.replace('/', '_')}_{self.command.lower()}", None)
                if fn is None:
                    self._body()
                    return self._error(405, "UNSUPPORTED", f"{self.command} on {kind}")
                fn(name, ref, q)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _dispatch

            # manifests
            def _resolve(self, name, ref):
                with srv.lock:
                    r = srv.repos.get(name)
                    if r is None:
                        return None, None
                    d = ref if DIGEST_RE.match(ref or "") else r.tags.get(ref)
                    if d is None or d not in r.manifests:
                        return None, None
                    return d, r.manifests[d]

            def _manifests_get(self, name, ref, q, head=False):
                self._body()
                d, item = self._resolve(name, ref)
                if item is None:
                    return self._error(404, "MANIFEST_UNKNOWN", f"{name}:{ref}", head=head)
                data, mt = item
                self._send(200, data, {"Content-Type": mt, "Docker-Content-Digest": d,
                                       "ETag": f'"{d}"'}, head=head)

            def _manifests_head(self, name, ref, q):
                self._manifests_get(name, ref, q, head=True)

            def _manifests_put(self, name, ref, q):
                data = self._body()
                mt = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                try:
                    m = json.loads(data)
                except ValueError:
                    return self._error(400, "MANIFEST_INVALID", "not JSON")
                mt = mt or m.get("mediaType", "")
                if mt not in MANIFEST_TYPES:
                    return self._error(400, "MANIFEST_INVALID", f"unsupported media type {mt!r}")
                if m.get("mediaType") and m["mediaType"] != mt:
                    return self._error(400, "MANIFEST_INVALID",
                                       f"Content-Type {mt} differs from mediaType {m['mediaType']}")
                d = sha256_digest(data)
                if DIGEST_RE.match(ref or ""):
                    if ref != d:
                        return self._error(400, "DIGEST_INVALID", f"body digest is {d}")
                elif not TAG_RE.match(ref or ""):
                    return self._error(400, "TAG_INVALID", ref)
                with srv.lock:
                    r = srv.repos.setdefault(name, Repo())
                    missing = []
                    if mt in (MT_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"):
                        for desc in [m.get("config")] + list(m.get("layers") or []):
                            if desc and desc.get("digest") not in r.blobs:
                                missing.append(desc.get("digest"))
                    else:
                        for desc in m.get("manifests") or []:
                            if desc.get("digest") not in r.manifests:
                                missing.append(desc.get("digest"))
                    if missing:
                        return self._error(400, "MANIFEST_BLOB_UNKNOWN", ", ".join(map(str, missing)))
                    r.manifests[d] = (data, mt)
                    if not DIGEST_RE.match(ref):
                        r.tags[ref] = d
                h = {"Location": f"/v2/{name}/manifests/{d}", "Docker-Content-Digest": d}
                if m.get("subject", {}).get("digest"):
                    h["OCI-Subject"] = m["subject"]["digest"]
                self._send(201, b"", h)

            def _manifests_delete(self, name, ref, q):
                self._body()
                with srv.lock:
                    r = srv.repos.get(name)
                    if r is None:
                        return self._error(404, "NAME_UNKNOWN", name)
                    if DIGEST_RE.match(ref or ""):
                        if r.manifests.pop(ref, None) is None:
                            return self._error(404, "MANIFEST_UNKNOWN", ref)
                        r.tags = {t: d for t, d in r.tags.items() if d != ref}
                    elif r.tags.pop(ref, None) is None:
                        return self._error(404, "MANIFEST_UNKNOWN", ref)
                self._send(202)

            # blobs
            def _blobs_get(self, name, ref, q, head=False):
                self._body()
                with srv.lock:
                    r = srv.repos.get(name)
                    data = srv.blobs.get(ref) if r is not None and ref in r.blobs else None
                if data is None:
                    return self._error(404, "BLOB_UNKNOWN", f"{name}@{ref}", head=head)
                h = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": ref,
                     "Accept-Ranges": "bytes", "ETag": f'"{ref}"'}
                rng = self.headers.get("Range")
                if rng and not head:
                    sel = parse_single_range(rng, len(data))
                    if sel == "unsatisfiable":
                        return self._send(416, b"", dict(h, **{"Content-Range": f"bytes */{len(data)}"}))
                    if sel is not None:
                        a, b = sel
                        return self._send(206, data[a:b + 1],
                                          dict(h, **{"Content-Range": f"bytes {a}-{b}/{len(data)}"}))
                if head:
                    h["Content-Length"] = str(len(data))
                self._send(200, data, h, head=head)

            def _blobs_head(self, name, ref, q):
                self._blobs_get(name, ref, q, head=True)

            def _blobs_delete(self, name, ref, q):
                self._body()
                with srv.lock:
                    r = srv.repos.get(name)
                    if r is None or ref not in r.blobs:
                        return self._error(404, "BLOB_UNKNOWN", ref)
                    r.blobs.discard(ref)
                self._send(202)

            # uploads
            def _commit(self, name, data: bytes, want: str):
                if not DIGEST_RE.match(want or ""):
                    return self._error(400, "DIGEST_INVALID", f"bad digest {want!r}")
                got = sha256_digest(bytes(data))
                if got != want:
                    return self._error(400, "DIGEST_INVALID", f"content is {got}, not {want}")
                with srv.lock:
                    srv.blobs[got] = bytes(data)
                    srv.repos.setdefault(name, Repo()).blobs.add(got)
                self._send(201, b"", {"Location": f"/v2/{name}/blobs/{got}",
                                      "Docker-Content-Digest": got})

            def _blobs_uploads_post(self, name, ref, q):
                data = self._body()
                if ref:
                    return self._error(405, "UNSUPPORTED", "POST to an upload session")
                if "mount" in q:
                    d = q["mount"][0]
                    src = q.get("from", [""])[0]
                    with srv.lock:
                        sr = srv.repos.get(src)
                        ok = d in srv.blobs and (sr is not None and d in sr.blobs)
                        if ok:
                            srv.repos.setdefault(name, Repo()).blobs.add(d)
                    if ok:
                        return self._send(201, b"", {"Location": f"/v2/{name}/blobs/{d}",
                                                     "Docker-Content-Digest": d})
                    # mount not possible: fall through to a new session, as the spec allows
                if "digest" in q:
                    return self._commit(name, data, q["digest"][0])
                sid = uuid.uuid4().hex
                with srv.lock:
                    srv.uploads[sid] = (name, bytearray())
                self._send(202, b"", {"Location": f"/v2/{name}/blobs/uploads/{sid}",
                                      "Range": "0-0", "Docker-Upload-UUID": sid})

            def _session(self, name, sid):
                with srv.lock:
                    s = srv.uploads.get(sid or "")
                return s[1] if s and s[0] == name else None

            def _blobs_uploads_patch(self, name, ref, q):
                data = self._body()
                buf = self._session(name, ref)
                if buf is None:
                    return self._error(404, "BLOB_UPLOAD_UNKNOWN", ref or "")
                cr = self.headers.get("Content-Range")
                if cr:
                    mm = re.match(r"^(?:bytes )?(\d+)-(\d+)$", cr.strip())
                    if not mm or int(mm.group(1)) != len(buf):
                        return self._send(416, b"", {"Location": f"/v2/{name}/blobs/uploads/{ref}",
                                                     "Range": f"0-{max(len(buf) - 1, 0)}"})
                with srv.lock:
                    buf += data
                    n = len(buf)
                self._send(202, b"", {"Location": f"/v2/{name}/blobs/uploads/{ref}",
                                      "Range": f"0-{max(n - 1, 0)}", "Docker-Upload-UUID": ref})

            def _blobs_uploads_put(self, name, ref, q):
                data = self._body()
                buf = self._session(name, ref)
                if buf is None:
                    return self._error(404, "BLOB_UPLOAD_UNKNOWN", ref or "")
                with srv.lock:
                    buf += data
                    srv.uploads.pop(ref, None)
                self._commit(name, buf, q.get("digest", [""])[0])

            def _blobs_uploads_get(self, name, ref, q):
                self._body()
                buf = self._session(name, ref)
                if buf is None:
                    return self._error(404, "BLOB_UPLOAD_UNKNOWN", ref or "")
                self._send(204, b"", {"Location": f"/v2/{name}/blobs/uploads/{ref}",
                                      "Range": f"0-{max(len(buf) - 1, 0)}", "Docker-Upload-UUID": ref})

            def _blobs_uploads_delete(self, name, ref, q):
                self._body()
                with srv.lock:
                    found = srv.uploads.pop(ref or "", None)
                if found is None:
                    return self._error(404, "BLOB_UPLOAD_UNKNOWN", ref or "")
                self._send(204)

            # tags and referrers
            def _tags_get(self, name, ref, q):
                self._body()
                if ref != "list":
                    return self._error(404, "NAME_UNKNOWN", name)
                with srv.lock:
                    r = srv.repos.get(name)
                    tags = sorted(r.tags) if r else None
                if tags is None:
                    return self._error(404, "NAME_UNKNOWN", name)
                self._send(200, json.dumps({"name": name, "tags": tags}).encode(),
                           {"Content-Type": "application/json"})

            def _referrers_get(self, name, ref, q):
                self._body()
                if not srv.referrers_api:
                    return self._error(404, "NAME_UNKNOWN", "referrers API not supported")
                if not DIGEST_RE.match(ref or ""):
                    return self._error(400, "DIGEST_INVALID", ref or "")
                at = q.get("artifactType", [None])[0]
                index = {"schemaVersion": 2, "mediaType": MT_INDEX,
                         "manifests": srv.referrers(name, ref, at)}
                h = {"Content-Type": MT_INDEX}
                if at:
                    h["OCI-Filters-Applied"] = "artifactType"
                self._send(200, json.dumps(index).encode(), h)

        return Handler
