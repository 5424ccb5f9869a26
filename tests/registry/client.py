"""A small registry client for the tests' own checks (not a model of the erostream client).

Plain HTTP on loopback; answers a 401 challenge with basic auth or with a bearer token from the
realm (GET with basic auth), once per request.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import urllib.parse

from .images import MT_INDEX, MT_MANIFEST

ACCEPT_MANIFESTS = ", ".join([
    MT_MANIFEST, MT_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


class RegistryHTTPError(Exception):
    def __init__(self, status, method, path, body):
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = value.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class RegistryClient:
    def __init__(self, host: str, creds: tuple[str, str] | None = None, timeout: float = 60):
        self.host = host
        self.creds = creds
        self.timeout = timeout
        self._auth: dict[str, str] = {}   # scope key -> Authorization value

    def _conn(self, host=None):
        h, _, p = (host or self.host).rpartition(":")
        return http.client.HTTPConnection(h, int(p), timeout=self.timeout)

    def _basic(self) -> str:
        u, p = self.creds
        return "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()

    def _token(self, params: dict[str, str]) -> str:
        realm = urllib.parse.urlsplit(params["realm"])
        q = {"service": params.get("service", "")}
        if params.get("scope"):
            q["scope"] = params["scope"]
        c = http.client.HTTPConnection(realm.hostname, realm.port or 80, timeout=self.timeout)
        hdrs = {"Authorization": self._basic()} if self.creds else {}
        c.request("GET", realm.path + "?" + urllib.parse.urlencode(q), headers=hdrs)
        r = c.getresponse()
        body = r.read()
        c.close()
        if r.status != 200:
            raise RegistryHTTPError(r.status, "GET", params["realm"], body)
        j = json.loads(body)
        return "Bearer " + (j.get("token") or j["access_token"])

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, scope_key: str = "") -> tuple[int, dict, bytes]:
        hdrs = dict(headers or {})
        for attempt in (0, 1):
            if scope_key in self._auth:
                hdrs["Authorization"] = self._auth[scope_key]
            c = self._conn()
            c.request(method, path, body=body, headers=hdrs)
            r = c.getresponse()
            data = r.read()
            rh = {k.lower(): v for k, v in r.getheaders()}
            c.close()
            if r.status == 401 and attempt == 0 and "www-authenticate" in rh:
                scheme, params = parse_challenge(rh["www-authenticate"])
                if scheme == "basic" and self.creds:
                    self._auth[scope_key] = self._basic()
                    continue
                if scheme == "bearer":
                    self._auth[scope_key] = self._token(params)
                    continue
            return r.status, rh, data
        return r.status, rh, data

    def _scope(self, repo: str, push: bool = False) -> str:
        return f"{repo}:{'push' if push else 'pull'}"

    def ping(self) -> int:
        return self.request("GET", "/v2/")[0]

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        """(bytes, content type, digest) of a manifest; raises RegistryHTTPError on non-200."""
        st, h, data = self.request("GET", f"/v2/{repo}/manifests/{ref}",
                                   headers={"Accept": ACCEPT_MANIFESTS}, scope_key=self._scope(repo))
        if st != 200:
            raise RegistryHTTPError(st, "GET", f"/v2/{repo}/manifests/{ref}", data)
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        return data, h.get("content-type", ""), d

    def manifest_status(self, repo: str, ref: str) -> int:
        return self.request("HEAD", f"/v2/{repo}/manifests/{ref}",
                            headers={"Accept": ACCEPT_MANIFESTS}, scope_key=self._scope(repo))[0]

    def get_blob(self, repo: str, digest: str, range_: str | None = None) -> tuple[int, dict, bytes]:
        hdrs = {"Range": range_} if range_ else {}
        return self.request("GET", f"/v2/{repo}/blobs/{digest}", headers=hdrs,
                            scope_key=self._scope(repo))

    def tags(self, repo: str) -> list[str]:
        st, _, data = self.request("GET", f"/v2/{repo}/tags/list", scope_key=self._scope(repo))
        if st == 404:
            return []
        if st != 200:
            raise RegistryHTTPError(st, "GET", f"/v2/{repo}/tags/list", data)
        return json.loads(data).get("tags") or []

    def referrers(self, repo: str, digest: str, artifact_type: str | None = None) -> tuple[int, dict, bytes]:
        q = "?" + urllib.parse.urlencode({"artifactType": artifact_type}) if artifact_type else ""
        return self.request("GET", f"/v2/{repo}/referrers/{digest}{q}",
                            headers={"Accept": MT_INDEX}, scope_key=self._scope(repo))

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> tuple[int, dict]:
        st, h, body = self.request("PUT", f"/v2/{repo}/manifests/{ref}", body=data,
                                   headers={"Content-Type": media_type},
                                   scope_key=self._scope(repo, True))
        if st not in (200, 201):
            raise RegistryHTTPError(st, "PUT", f"/v2/{repo}/manifests/{ref}", body)
        return st, h

    def put_blob(self, repo: str, data: bytes) -> str:
        """Monolithic upload: POST then PUT ?digest= (the path docker-registry 2.8 supports)."""
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        st, h, body = self.request("POST", f"/v2/{repo}/blobs/uploads/", body=b"",
                                   scope_key=self._scope(repo, True))
        if st != 202:
            raise RegistryHTTPError(st, "POST", f"/v2/{repo}/blobs/uploads/", body)
        loc = urllib.parse.urlsplit(h["location"])
        sep = "&" if loc.query else "?"
        target = loc.path + ("?" + loc.query if loc.query else "") + sep + \
            urllib.parse.urlencode({"digest": d})
        st, h, body = self.request("PUT", target, body=data,
                                   headers={"Content-Type": "application/octet-stream"},
                                   scope_key=self._scope(repo, True))
        if st != 201:
            raise RegistryHTTPError(st, "PUT", target, body)
        return d
