"""An HTTP forwarder between a registry client and a registry, with faults set at run time.

The client is pointed at the proxy's address as if it were the registry ("reverse" mode: requests
in origin form go to the configured upstream). Requests in absolute form
(GET http://127.0.0.1:PORT/v2/ HTTP/1.1), as a client configured with HTTP_PROXY sends them, go
to the host they name (loopback only) and are recorded with proxy_form=True.

A second listener, the "storage host", serves blob bytes for redirected blob GETs the way ACR or
Docker Hub hand blobs to object storage: the proxy answers a blob GET with 307 to a signed URL on
the storage host; that URL expires (403 after expiry), and the storage host treats any
Authorization header as a leak of the registry's credentials (400, recorded as a violation).

Fault rules (Rule) are tried in order for every request; the first armed rule whose method, path
regex, listener and range condition match is applied. Each rule counts its matches: it lets the
first `skip` matches pass and then fires `times` times (None: forever). Actions:

  status       answer `status` (e.g. 500, 503, 429) with optional `headers` (Retry-After) and body
  reset        close with a TCP RST before answering; with after_bytes=N, forward and reset after
               the head and N body bytes
  cut          forward, send the head with the full Content-Length, then `after_bytes` (default:
               `fraction` of the body, 0.5) body bytes, then close
  corrupt      forward with one body byte (at `offset`, default the middle) XORed with 0xFF
  delay        wait `seconds` before forwarding
  slow         forward with this response's body limited to `bytes_per_second`
  redirect     GET/HEAD of a blob the registry would serve (checked with a HEAD upstream): 307 to
               the storage host (/storage/ID/DIGEST?se=EXPIRY&sig=...). Params: ttl (seconds a signed URL lives, default 60),
               expire_first (the first N URLs issued per blob are already expired)
  strip_range  forward without the Range header (the registry then answers 200 with all bytes)
  range_416    a request with a Range header gets 416 (Content-Range: bytes */SIZE)
  unauthorized answer 401 with the registry's own challenge (the request is forwarded without its
               Authorization to get it), as when a token is revoked or expired
Link shaping for every response body of both listeners: set_link(bytes_per_second, latency),
one token bucket shared by all connections (one link), latency added once per request.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import re
import secrets
import socket
import socketserver
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from .httpwire import (HOP_BY_HOP, Headers, ProtocolError, encode_head, parse_single_range,
                       read_request, reset_connection)

CHUNK = 64 * 1024
SHAPED_CHUNK = 16 * 1024
UPSTREAM_TIMEOUT = 120.0

ACTIONS = {"status", "reset", "cut", "corrupt", "delay", "slow", "redirect", "strip_range",
           "range_416", "unauthorized"}


class Rule:
    def __init__(self, action: str, method: str | None = None, path: str | None = None,
                 times: int | None = None, skip: int = 0, where: str = "proxy",
                 when_range: bool | None = None, **params):
        if action not in ACTIONS:
            raise ValueError(f"unknown fault action {action!r}")
        if where not in ("proxy", "storage", "any"):
            raise ValueError(f"unknown listener {where!r}")
        self.action = action
        self.method = method.upper() if method else None
        self.path_re = re.compile(path) if path else None
        self.times = times
        self.skip = skip
        self.where = where
        self.when_range = when_range
        self.params = params
        self.matches = 0
        self.fired = 0

    def _matches(self, listener: str, method: str, path: str, has_range: bool) -> bool:
        if self.where != "any" and self.where != listener:
            return False
        if self.method and self.method != method:
            return False
        if self.path_re and not self.path_re.search(path):
            return False
        if self.when_range is not None and self.when_range != has_range:
            return False
        return True

    def __repr__(self):
        return (f"Rule({self.action}, method={self.method}, path={self.path_re and self.path_re.pattern},"
                f" skip={self.skip}, times={self.times}, fired={self.fired})")


@dataclass
class Record:
    listener: str
    conn: int
    method: str
    path: str
    query: str
    headers: dict
    t_start: float
    proxy_form: bool = False
    status: int | None = None
    body_bytes: int = 0
    fault: str | None = None
    t_end: float | None = None
    note: str = ""
    response_headers: dict = field(default_factory=dict)


class TokenBucket:
    """Bytes per second with a small burst; waits happen outside the lock, callers queue fairly
    because each reserves its bytes (tokens may go negative) before it waits."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(SHAPED_CHUNK, rate / 100))
        self.tokens = self.burst
        self.t = time.monotonic()
        self.lock = threading.Lock()

    def consume(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)  # the emulated link's serialization delay, not a test wait


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, owner: "FaultProxy", listener: str):
        self.owner = owner
        self.listener = listener
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        owner: FaultProxy = self.server.owner
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_id = owner._register(sock)
        rfile = sock.makefile("rb")
        upstreams: dict = {}
        try:
            while True:
                try:
                    req = read_request(rfile, sock)
                except (ProtocolError, OSError, ValueError):
                    break
                if req is None:
                    break
                keep = owner._serve(self.server.listener, conn_id, req, sock, rfile, upstreams)
                if not keep or req.wants_close():
                    break
        finally:
            for c in upstreams.values():
                c.close()
            try:
                rfile.close()
            except OSError:
                pass
            owner._unregister(sock)


class _Signed:
    def __init__(self, upstream, repo, digest, auth, expires, expired):
        self.upstream = upstream
        self.repo = repo
        self.digest = digest
        self.auth = auth
        self.expires = expires
        self.expired = expired


class FaultProxy:
    def __init__(self, upstream: str | None = None, name: str = "proxy"):
        """upstream: "127.0.0.1:PORT" of the registry (None: absolute-form requests only)."""
        self.name = name
        self.upstream = self._split(upstream) if upstream else None
        self.rules: list[Rule] = []
        self.records: list[Record] = []
        self.violations: list[str] = []
        self.bucket: TokenBucket | None = None
        self.latency = 0.0
        self.storage_range_mode = "honour"   # honour | ignore | 416
        self._lock = threading.RLock()
        self._conns: dict[int, socket.socket] = {}
        self._next_conn = 0
        self._signed: dict[str, _Signed] = {}
        self._issued_per_digest: dict[str, int] = {}
        self._blob_cache: dict[str, bytes] = {}
        self._key = secrets.token_bytes(32)
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.proxy_server: _Server | None = None
        self.storage_server: _Server | None = None

    # -- life cycle ----------------------------------------------------------------------------

    @staticmethod
    def _split(hostport: str) -> tuple[str, int]:
        host, _, port = hostport.rpartition(":")
        return host.strip("[]"), int(port)

    def start(self) -> "FaultProxy":
        # Both listeners are bound and listening when their constructors return; connections
        # queue in the backlog until the serving threads pick them up.
        self.proxy_server = _Server(self, "proxy")
        self.storage_server = _Server(self, "storage")
        for srv in (self.proxy_server, self.storage_server):
            t = threading.Thread(target=srv.serve_forever, name=f"{self.name}-{srv.listener}",
                                 daemon=True)
            t.start()
            self._servers.append(srv)
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        with self._lock:
            conns = list(self._conns.values())
        for s in conns:  # wake handler threads parked on keep-alive reads
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(10)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self) -> int:
        return self.proxy_server.server_address[1]

    @property
    def host(self) -> str:
        """host:port to use as the registry address in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage_port(self) -> int:
        return self.storage_server.server_address[1]

    @property
    def storage_host(self) -> str:
        return f"127.0.0.1:{self.storage_port}"

    # -- configuration (thread-safe, at any time) ----------------------------------------------

    def add_rule(self, *args, **kwargs) -> Rule:
        """add_rule(Rule(...)) or add_rule("action", path=..., ...)."""
        rule = args[0] if args and isinstance(args[0], Rule) else Rule(*args, **kwargs)
        with self._lock:
            self.rules.append(rule)
        return rule

    def set_rules(self, rules: list[Rule]) -> None:
        with self._lock:
            self.rules = list(rules)

    def clear_rules(self) -> None:
        self.set_rules([])

    def set_link(self, bytes_per_second: float | None = None, latency: float = 0.0) -> None:
        """Shape every response body to bytes_per_second (None: unlimited) and add latency
        seconds before each response (100 Mbit/s 20 ms: set_link(12.5e6, 0.02))."""
        with self._lock:
            self.bucket = TokenBucket(bytes_per_second) if bytes_per_second else None
            self.latency = latency

    def expire_signed_urls(self) -> None:
        with self._lock:
            for s in self._signed.values():
                s.expired = True

    def reset_records(self) -> None:
        with self._lock:
            self.records.clear()
            self.violations.clear()

    # -- queries for assertions ----------------------------------------------------------------

    def requests(self, listener: str | None = "proxy", method: str | None = None,
                 path: str | None = None, status: int | None = None) -> list[Record]:
        rx = re.compile(path) if path else None
        with self._lock:
            return [r for r in self.records
                    if (listener is None or r.listener == listener)
                    and (method is None or r.method == method)
                    and (rx is None or rx.search(r.path))
                    and (status is None or r.status == status)]

    def count(self, **kw) -> int:
        return len(self.requests(**kw))

    # -- internals -----------------------------------------------------------------------------

    def _register(self, sock) -> int:
        with self._lock:
            self._next_conn += 1
            self._conns[self._next_conn] = sock
            return self._next_conn

    def _unregister(self, sock) -> None:
        with self._lock:
            for k, v in list(self._conns.items()):
                if v is sock:
                    del self._conns[k]

    def _pick_rule(self, listener, method, path, has_range) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if not rule._matches(listener, method, path, has_range):
                    continue
                rule.matches += 1
                if rule.matches <= rule.skip:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                rule.fired += 1
                return rule
        return None

    def _serve(self, listener, conn_id, req, sock, rfile, upstreams) -> bool:
        proxy_form = False
        target = req.target
        upstream = self.upstream
        if target.startswith("http://") or target.startswith("https://"):
            u = urllib.parse.urlsplit(target)
            proxy_form = True
            upstream = (u.hostname, u.port or 80)
            target = (u.path or "/") + ("?" + u.query if u.query else "")
        path = target.split("?", 1)[0]
        query = target.split("?", 1)[1] if "?" in target else ""
        rec = Record(listener, conn_id, req.method, path, query, req.headers.as_dict(),
                     time.monotonic(), proxy_form)
        with self._lock:
            self.records.append(rec)
            latency = self.latency
        try:
            rule = self._pick_rule(listener, req.method, path, "Range" in req.headers)
            rec.fault = rule.action if rule else None
            if latency:
                time.sleep(latency)  # emulated round trip of the link
            if listener == "storage":
                return self._serve_storage(rec, req, sock, rfile, path, query, rule)
            if req.method == "CONNECT":
                return self._simple(rec, sock, 405, b"CONNECT is not supported by this test proxy\n")
            if upstream is None:
                return self._simple(rec, sock, 502, b"no upstream configured\n")
            if proxy_form and upstream[0] not in ("127.0.0.1", "localhost", "::1") \
                    and not upstream[0].startswith("127."):
                return self._simple(rec, sock, 502, b"only loopback targets are forwarded\n")
            return self._apply(rule, rec, req, sock, rfile, upstream, target, upstreams)
        except (OSError, http.client.HTTPException) as e:
            rec.note = f"error: {e!r}"
            return False
        finally:
            rec.t_end = time.monotonic()

    # -- proxy listener ------------------------------------------------------------------------

    def _apply(self, rule, rec, req, sock, rfile, upstream, target, upstreams) -> bool:
        action = rule.action if rule else None
        p = rule.params if rule else {}
        if action == "status":
            st = int(p.get("status", 500))
            hdrs = dict(p.get("headers", {}))
            body = p.get("body", f'{{"errors":[{{"code":"UNAVAILABLE","message":"injected {st}"}}]}}')
            if isinstance(body, str):
                body = body.encode()
            return self._simple(rec, sock, st, body, hdrs, content_type="application/json")
        if action == "reset" and p.get("after_bytes") is None:
            rec.status = 0
            rec.note = "reset before answering"
            rfile.close()
            reset_connection(sock)
            return False
        if action == "delay":
            time.sleep(float(p.get("seconds", 1.0)))
        headers = req.headers.copy()
        if action == "strip_range":
            headers.remove("Range")
        if action == "range_416" and "Range" in req.headers:
            size = self._upstream_size(upstream, target, req, upstreams)
            return self._simple(rec, sock, 416, b"", {"Content-Range": f"bytes */{size if size is not None else '*'}"})
        if action == "unauthorized":
            headers.remove("Authorization")
            st, rh, body, _ = self._fetch(upstreams, upstream, req.method, target, headers, req.body)
            if st != 401:
                rh = Headers([("WWW-Authenticate", 'Basic realm="erostream-fault-proxy"')])
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"injected 401"}]}'
            return self._simple(rec, sock, 401, body if req.method != "HEAD" else b"",
                                {"WWW-Authenticate": rh.get("WWW-Authenticate")},
                                content_type="application/json",
                                head_only=req.method == "HEAD")
        if action == "redirect" and req.method in ("GET", "HEAD"):
            m = re.match(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$", rec.path)
            if m:
                st = self._upstream_status(upstream, target, req, upstreams)
                if st == 200:
                    return self._redirect(rec, sock, upstream, m.group(1), m.group(2), req, p)
        return self._forward(rule, rec, req, sock, upstream, target, headers, upstreams)

    def _conn(self, upstreams, upstream, fresh=False) -> http.client.HTTPConnection:
        c = upstreams.get(upstream)
        if c is None or fresh:
            if c is not None:
                c.close()
            c = http.client.HTTPConnection(upstream[0], upstream[1], timeout=UPSTREAM_TIMEOUT)
            upstreams[upstream] = c
        return c

    def _send_upstream(self, upstreams, upstream, method, target, headers: Headers, body: bytes):
        """Sends one request upstream and returns the response; retries once on a fresh
        connection when a kept-alive connection turns out to be closed."""
        for attempt in (0, 1):
            c = self._conn(upstreams, upstream, fresh=attempt == 1)
            try:
                c.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for k, v in headers.items:
                    if k.lower() in HOP_BY_HOP or k.lower() == "content-length":
                        continue
                    c.putheader(k, v)
                if body or method in ("POST", "PUT", "PATCH"):
                    c.putheader("Content-Length", str(len(body)))
                c.endheaders(body if body else None)
                return c.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def _fetch(self, upstreams, upstream, method, target, headers, body):
        resp = self._send_upstream(upstreams, upstream, method, target, headers, body)
        data = resp.read()
        rh = Headers(resp.getheaders())
        if resp.will_close:
            upstreams.pop(upstream).close()
        return resp.status, rh, data, resp

    def _upstream_status(self, upstream, target, req, upstreams) -> int:
        h = req.headers.copy()
        h.remove("Range")
        st, _, _, _ = self._fetch(upstreams, upstream, "HEAD", target, h, b"")
        return st

    def _upstream_size(self, upstream, target, req, upstreams):
        h = req.headers.copy()
        h.remove("Range")
        st, rh, _, _ = self._fetch(upstreams, upstream, "HEAD", target, h, b"")
        cl = rh.get("Content-Length")
        return int(cl) if st == 200 and cl is not None else None

    def _forward(self, rule, rec, req, sock, upstream, target, headers, upstreams) -> bool:
        try:
            resp = self._send_upstream(upstreams, upstream, req.method, target, headers, req.body)
        except OSError as e:
            return self._simple(rec, sock, 502, f"upstream {upstream}: {e}\n".encode())
        rh = Headers([(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP])
        no_body = req.method == "HEAD" or resp.status in (204, 304) or resp.status < 200
        length = None
        chunks = None
        if no_body:
            resp.read()
            chunks = iter(())
            length = 0
        elif rh.get("Content-Length") is None:
            data = resp.read()
            rh.set("Content-Length", str(len(data)))
            length = len(data)
            chunks = iter((data,))
        else:
            length = int(rh.get("Content-Length"))

            def gen():
                left = length
                while left > 0:
                    b = resp.read(min(CHUNK, left))
                    if not b:
                        return
                    left -= len(b)
                    yield b
                resp.read()  # lets http.client mark the response done, so the connection is reusable
            chunks = gen()
        keep = self._send_response(rule, rec, sock, resp.status, rh, chunks, length, no_body,
                                   reason=resp.reason)
        if resp.will_close or not keep:
            c = upstreams.pop(upstream, None)
            if c is not None:
                c.close()
        return keep

    def _redirect(self, rec, sock, upstream, repo, digest, req, p) -> bool:
        ttl = float(p.get("ttl", 60.0))
        expire_first = int(p.get("expire_first", 0))
        sid = secrets.token_hex(12)
        with self._lock:
            n = self._issued_per_digest.get(digest, 0)
            self._issued_per_digest[digest] = n + 1
            expired = n < expire_first
            expires = time.time() + ttl
            self._signed[sid] = _Signed(upstream, repo, digest, req.headers.get("Authorization"),
                                        expires, expired)
        se = f"{expires:.3f}"
        sig = hmac.new(self._key, f"{sid}:{se}".encode(), hashlib.sha256).hexdigest()
        loc = f"http://{self.storage_host}/storage/{sid}/{digest}?se={se}&sp=r&sig={sig}"
        rec.note = f"redirect {digest} -> {sid}{' (issued expired)' if expired else ''}"
        return self._simple(rec, sock, 307, b"", {"Location": loc,
                                                  "Docker-Content-Digest": digest},
                            head_only=req.method == "HEAD")

    # -- storage listener ----------------------------------------------------------------------

    def _serve_storage(self, rec, req, sock, rfile, path, query, rule) -> bool:
        action = rule.action if rule else None
        p = rule.params if rule else {}
        if "Authorization" in req.headers:
            msg = (f"Authorization header sent to the storage host: {req.method} {path} "
                   f"({req.headers.get('Authorization')[:16]}...)")
            with self._lock:
                self.violations.append(msg)
            return self._simple(rec, sock, 400, b"<Error><Code>InvalidAuthenticationInfo</Code>"
                                b"<Message>storage URLs are pre-signed: no Authorization header"
                                b"</Message></Error>", content_type="application/xml")
        if req.method not in ("GET", "HEAD"):
            return self._simple(rec, sock, 405, b"")
        m = re.match(r"^/storage/([0-9a-f]+)/(sha256:[0-9a-f]{64})$", path)
        q = urllib.parse.parse_qs(query)
        if not m:
            return self._simple(rec, sock, 404, b"")
        sid = m.group(1)
        se = q.get("se", [""])[0]
        sig = q.get("sig", [""])[0]
        want = hmac.new(self._key, f"{sid}:{se}".encode(), hashlib.sha256).hexdigest()
        with self._lock:
            s = self._signed.get(sid)
        if s is None or s.digest != m.group(2) or not hmac.compare_digest(want, sig):
            return self._simple(rec, sock, 403, b"<Error><Code>AuthenticationFailed</Code>"
                                b"<Message>signature mismatch</Message></Error>",
                                content_type="application/xml")
        if s.expired or time.time() > s.expires:
            rec.note = "signed URL expired"
            return self._simple(rec, sock, 403, b"<Error><Code>AuthenticationFailed</Code>"
                                b"<Message>Signed expiry time has expired</Message></Error>",
                                content_type="application/xml")
        if action == "status":
            st = int(p.get("status", 500))
            return self._simple(rec, sock, st, b"", dict(p.get("headers", {})))
        if action == "reset" and p.get("after_bytes") is None:
            rec.status = 0
            rfile.close()
            reset_connection(sock)
            return False
        if action == "delay":
            time.sleep(float(p.get("seconds", 1.0)))
        data = self._storage_blob(s)
        if data is None:
            return self._simple(rec, sock, 502, b"storage could not read the blob upstream\n")
        rng = req.headers.get("Range")
        mode = self.storage_range_mode
        if action == "strip_range":
            rng = None
        if action == "range_416" or (mode == "416" and rng):
            return self._simple(rec, sock, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
        hdrs = Headers([("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes"),
                        ("ETag", f'"{s.digest}"')])
        status = 200
        body = data
        if rng and mode == "honour":
            r = parse_single_range(rng, len(data))
            if r == "unsatisfiable":
                return self._simple(rec, sock, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
            if r is not None:
                status = 206
                body = data[r[0]:r[1] + 1]
                hdrs.add("Content-Range", f"bytes {r[0]}-{r[1]}/{len(data)}")
        hdrs.add("Content-Length", str(len(body)))
        head = req.method == "HEAD"
        return self._send_response(rule, rec, sock, status, hdrs, iter(() if head else (body,)),
                                   0 if head else len(body), head)

    def _storage_blob(self, s: _Signed) -> bytes | None:
        with self._lock:
            data = self._blob_cache.get(s.digest)
        if data is not None:
            return data
        c = http.client.HTTPConnection(s.upstream[0], s.upstream[1], timeout=UPSTREAM_TIMEOUT)
        try:
            hdrs = {"Host": f"{s.upstream[0]}:{s.upstream[1]}"}
            if s.auth:
                hdrs["Authorization"] = s.auth
            c.request("GET", f"/v2/{s.repo}/blobs/{s.digest}", headers=hdrs)
            r = c.getresponse()
            data = r.read()
            if r.status != 200 or "sha256:" + hashlib.sha256(data).hexdigest() != s.digest:
                return None
        finally:
            c.close()
        with self._lock:
            self._blob_cache[s.digest] = data
        return data

    # -- writing responses ---------------------------------------------------------------------

    def _simple(self, rec, sock, status, body: bytes, headers: dict | None = None,
                content_type: str = "text/plain", head_only: bool = False) -> bool:
        h = Headers([("Content-Type", content_type)] if body or not head_only else [])
        for k, v in (headers or {}).items():
            if v is not None:
                h.set(k, v)
        h.set("Content-Length", str(len(body)))
        rec.status = status
        rec.response_headers = h.as_dict()
        sock.sendall(encode_head(status, h))
        if not head_only and body:
            self._write_body(sock, body, None)
            rec.body_bytes = len(body)
        return True

    def _write_body(self, sock, data: bytes, bucket: TokenBucket | None) -> None:
        link = self.bucket
        if link is None and bucket is None:
            sock.sendall(data)
            return
        view = memoryview(data)
        for i in range(0, len(view), SHAPED_CHUNK):
            piece = view[i:i + SHAPED_CHUNK]
            if link is not None:
                link.consume(len(piece))
            if bucket is not None:
                bucket.consume(len(piece))
            sock.sendall(piece)

    def _send_response(self, rule, rec, sock, status, headers: Headers, chunks, length, no_body,
                       reason=None) -> bool:
        action = rule.action if rule else None
        p = rule.params if rule else {}
        rec.status = status
        rec.response_headers = headers.as_dict()
        sock.sendall(encode_head(status, headers, reason))
        if no_body:
            return True
        limit = None
        if action == "cut":
            limit = int(p["after_bytes"]) if p.get("after_bytes") is not None \
                else int(length * float(p.get("fraction", 0.5)))
        elif action == "reset" and p.get("after_bytes") is not None:
            limit = int(p["after_bytes"])
        corrupt_at = None
        if action == "corrupt" and length:
            corrupt_at = min(int(p.get("offset", length // 2)), length - 1)
        bucket = TokenBucket(float(p["bytes_per_second"])) if action == "slow" else None
        sent = 0
        for chunk in chunks:
            if corrupt_at is not None and sent <= corrupt_at < sent + len(chunk):
                b = bytearray(chunk)
                b[corrupt_at - sent] ^= 0xFF
                chunk = bytes(b)
                rec.note = f"corrupted body byte {corrupt_at}"
            if limit is not None and sent + len(chunk) >= limit:
                self._write_body(sock, chunk[: limit - sent], bucket)
                sent = limit
                rec.body_bytes = sent
                rec.note = f"{action} after {sent} of {length} body bytes"
                if action == "reset":
                    reset_connection(sock)
                return False
            self._write_body(sock, chunk, bucket)
            sent += len(chunk)
        rec.body_bytes = sent
        if limit is not None or (length is not None and sent < length):
            # short upstream body (or a cut at the very end): the declared length was not met
            if sent < (length or 0):
                rec.note = rec.note or f"upstream body ended after {sent} of {length} bytes"
            return False
        return True
