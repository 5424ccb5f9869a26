"""A token server for docker-registry's token auth (the Docker registry v2 token protocol).

Keys: an RSA (RS256) or EC P-256 (ES256) key and a self-signed certificate made with the openssl
CLI at test time; the certificate is the registry's rootcertbundle. JWTs carry the certificate in
the `x5c` header (docker-registry 2.8 verifies the chain against the bundle) or, with
key_id_mode="kid", the libtrust fingerprint of the key in `kid` (2.8 looks that up in the keys of
the bundle's certificates). Signing uses `openssl dgst`, so only the standard library is needed.

docker-registry 2.8 accepts a token until exp + 60 s (token.Leeway, for clock skew). To make
short-lived tokens really expire at the registry, the JWT's exp is set 60 s before the moment
that expires_in announces (compensate_leeway=True, the default): the registry then rejects the
token expires_in seconds after issue, as a client reading expires_in expects.

Endpoints: GET /token?service=&scope=...&account= with optional basic auth, and POST /token with
an OAuth2 form (grant_type=password with username/password, grant_type=refresh_token with
refresh_token; access_type=offline asks for a refresh token). Every request is recorded and
counted, so tests can assert how often a client came back for a token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .httpwire import read_body, Headers

OPENSSL = "/usr/bin/openssl"
REGISTRY_LEEWAY = 60  # docker/distribution registry/auth/token: Leeway = 60 * time.Second


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_jwt(token: str) -> tuple[dict, dict]:
    """(header, claims) of a compact JWT, unverified."""
    h, c, _ = token.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(c))


def _pem_body(pem: str) -> bytes:
    lines = [l for l in pem.strip().splitlines() if l and not l.startswith("-----")]
    return base64.b64decode("".join(lines))


def libtrust_key_id(spki_der: bytes) -> str:
    """docker/libtrust's KeyID: base32 of the first 240 bits of sha256(SPKI DER), in groups of 4
    characters joined by ':'."""
    b32 = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


def _der_ecdsa_to_raw(der: bytes, size: int = 32) -> bytes:
    """ECDSA-Sig-Value (DER SEQUENCE of two INTEGERs) -> r || s as JWS ES256 wants."""
    def read_len(buf, i):
        n = buf[i]
        i += 1
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(buf[i:i + k], "big")
            i += k
        return n, i

    if der[0] != 0x30:
        raise ValueError("not a DER sequence")
    _, i = read_len(der, 1)
    out = b""
    for _ in range(2):
        if der[i] != 0x02:
            raise ValueError("not a DER integer")
        n, i = read_len(der, i + 1)
        v = int.from_bytes(der[i:i + n], "big")
        i += n
        out += v.to_bytes(size, "big")
    return out


class SigningKey:
    """A key pair and self-signed certificate made with the openssl CLI."""

    def __init__(self, directory: Path, alg: str = "RS256"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.alg = alg
        self.key_path = self.dir / "token-key.pem"
        self.cert_path = self.dir / "token-cert.pem"
        if alg == "RS256":
            newkey = ["-newkey", "rsa:2048"]
        elif alg == "ES256":
            newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        else:
            raise ValueError(f"unsupported alg {alg}")
        subprocess.run([OPENSSL, "req", "-x509", *newkey, "-nodes", "-keyout", str(self.key_path),
                        "-out", str(self.cert_path), "-days", "2", "-sha256",
                        "-subj", "/CN=erostream-test-token-issuer"],
                       check=True, capture_output=True)
        cert_pem = self.cert_path.read_text()
        self.cert_der = _pem_body(cert_pem)
        pub = subprocess.run([OPENSSL, "x509", "-in", str(self.cert_path), "-pubkey", "-noout"],
                             check=True, capture_output=True, text=True).stdout
        self.kid = libtrust_key_id(_pem_body(pub))

    def sign(self, data: bytes) -> bytes:
        r = subprocess.run([OPENSSL, "dgst", "-sha256", "-sign", str(self.key_path)],
                           input=data, capture_output=True, check=True)
        return _der_ecdsa_to_raw(r.stdout) if self.alg == "ES256" else r.stdout


class TokenRecord:
    def __init__(self, method, path, grant, user, scopes, status, headers):
        self.method = method
        self.path = path
        self.grant = grant          # "get" | "password" | "refresh_token" | other grant names
        self.user = user
        self.scopes = scopes
        self.status = status
        self.headers = headers
        self.time = time.monotonic()


class TokenServer:
    """Issues registry tokens. users={name: password}; permissions={name: [actions]} limits a
    user's actions (default: everything asked for); anonymous_actions lets unauthenticated
    clients have those actions (default: none, they get 401)."""

    def __init__(self, workdir: Path | None = None, users: dict[str, str] | None = None,
                 service: str = "erostream-test-registry", issuer: str = "erostream-test-issuer",
                 expires_in: int = 300, alg: str = "RS256", key_id_mode: str = "x5c",
                 compensate_leeway: bool = True, permissions: dict[str, list[str]] | None = None,
                 anonymous_actions: list[str] | None = None):
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="eros-token-"))
        self.users = dict(users or {"tokenuser": "tokenpass"})
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.key = SigningKey(self.workdir, alg)
        self.key_id_mode = key_id_mode
        self.compensate_leeway = compensate_leeway
        self.permissions = dict(permissions or {})
        self.anonymous_actions = list(anonymous_actions or [])
        self.refresh_tokens: dict[str, str] = {}   # refresh token -> user
        self.records: list[TokenRecord] = []
        self.issued: list[dict] = []                # claims of every issued access token
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def cert_path(self) -> Path:
        return self.key.cert_path

    # -- tokens --------------------------------------------------------------------------------

    def issue_refresh_token(self, user: str) -> str:
        tok = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self.refresh_tokens[tok] = user
        return tok

    def make_token(self, user: str, scopes: list[str], expires_in: int | None = None) -> tuple[str, dict]:
        ttl = self.expires_in if expires_in is None else expires_in
        now = int(time.time())
        access = []
        for scope in scopes:
            granted = self._grant(user, scope)
            if granted is not None:
                access.append(granted)
        exp = now + ttl - (REGISTRY_LEEWAY if self.compensate_leeway else 0)
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "exp": exp,
                  "nbf": now - 1, "iat": now, "jti": secrets.token_hex(8), "access": access}
        header = {"typ": "JWT", "alg": self.key.alg}
        if self.key_id_mode == "kid":
            header["kid"] = self.key.kid
        else:
            header["x5c"] = [base64.b64encode(self.key.cert_der).decode()]
        signing_input = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + \
            b64url(json.dumps(claims, separators=(",", ":")).encode())
        sig = self.key.sign(signing_input.encode())
        with self._lock:
            self.issued.append(dict(claims, expires_at_monotonic=time.monotonic() + ttl))
        return signing_input + "." + b64url(sig), claims

    def _grant(self, user: str | None, scope: str):
        # scope: "repository:NAME:ACTIONS" (NAME may contain ':' only for a port-less registry
        # path, which we do not use; split from both ends to be safe).
        parts = scope.split(":")
        if len(parts) < 3:
            return None
        typ, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
        if user is None:
            allowed = set(self.anonymous_actions)
        elif user in self.permissions:
            allowed = set(self.permissions[user])
        else:
            allowed = None
        granted = [a for a in actions if allowed is None or a in allowed or "*" in allowed]
        return {"type": typ, "name": name, "actions": granted}

    # -- counters ------------------------------------------------------------------------------

    def count(self, grant: str | None = None, status: int | None = 200) -> int:
        with self._lock:
            return sum(1 for r in self.records
                       if (grant is None or r.grant == grant) and (status is None or r.status == status))

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
            self.issued.clear()

    # -- server --------------------------------------------------------------------------------

    def start(self) -> "TokenServer":
        ts = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status, obj, grant, user, scopes, extra_headers=None):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra_headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                with ts._lock:
                    ts.records.append(TokenRecord(self.command, self.path, grant, user, scopes,
                                                  status, {k.lower(): v for k, v in self.headers.items()}))

            def _basic_user(self):
                auth = self.headers.get("Authorization", "")
                if not auth.lower().startswith("basic "):
                    return None, False
                try:
                    u, p = base64.b64decode(auth[6:].strip()).decode().split(":", 1)
                except Exception:
                    return None, True
                if ts.users.get(u) == p:
                    return u, False
                return None, True

            def _deny(self, grant, scopes, msg):
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": msg}]}, grant,
                            None, scopes, {"WWW-Authenticate": 'Basic realm="erostream-token"'})

            def _issue(self, grant, user, scopes, want_refresh):
                token, claims = ts.make_token(user, scopes)
                obj = {"token": token, "access_token": token, "expires_in": ts.expires_in,
                       "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["iat"]))}
                if want_refresh and user is not None:
                    obj["refresh_token"] = ts.issue_refresh_token(user)
                if scopes:
                    obj["scope"] = " ".join(scopes)
                self._reply(200, obj, grant, user, scopes)

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                if u.path != "/token":
                    return self._reply(404, {"error": "not found"}, "other", None, [])
                q = urllib.parse.parse_qs(u.query)
                scopes = [s for v in q.get("scope", []) for s in v.split(" ") if s]
                if q.get("service", [ts.service])[0] != ts.service:
                    return self._reply(400, {"error": "invalid_request", "error_description":
                                             "unknown service"}, "get", None, scopes)
                user, bad = self._basic_user()
                if bad or (user is None and not ts.anonymous_actions):
                    return self._deny("get", scopes, "bad or missing credentials")
                want_refresh = q.get("offline_token", ["false"])[0] == "true"
                self._issue("get", user, scopes, want_refresh)

            def do_POST(self):
                u = urllib.parse.urlsplit(self.path)
                body = read_body(self.rfile, Headers(list(self.headers.items())))
                if u.path != "/token":
                    return self._reply(404, {"error": "not found"}, "other", None, [])
                form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                grant = form.get("grant_type", [""])[0]
                scopes = [s for v in form.get("scope", []) for s in v.split(" ") if s]
                if form.get("service", [ts.service])[0] != ts.service:
                    return self._reply(400, {"error": "invalid_request"}, grant, None, scopes)
                want_refresh = form.get("access_type", [""])[0] == "offline"
                if grant == "password":
                    user = form.get("username", [""])[0]
                    if ts.users.get(user) != form.get("password", [None])[0]:
                        return self._reply(401, {"error": "invalid_grant"}, grant, None, scopes)
                    return self._issue(grant, user, scopes, want_refresh)
                if grant == "refresh_token":
                    with ts._lock:
                        user = ts.refresh_tokens.get(form.get("refresh_token", [""])[0])
                    if user is None:
                        return self._reply(401, {"error": "invalid_grant"}, grant, None, scopes)
                    # A refresh grant hands back the refresh token, as Docker's auth server does.
                    token, claims = ts.make_token(user, scopes)
                    obj = {"access_token": token, "expires_in": ts.expires_in,
                           "refresh_token": form.get("refresh_token")[0],
                           "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["iat"])),
                           "scope": " ".join(scopes)}
                    return self._reply(200, obj, grant, user, scopes)
                return self._reply(400, {"error": "unsupported_grant_type"}, grant, None, scopes)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # The socket is bound and listening now: connections queue until serve_forever runs.
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-server",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
