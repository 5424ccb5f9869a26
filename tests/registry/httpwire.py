"""Just enough HTTP/1.1 framing for servers that need control over every byte they send.

http.server hides the socket; the fault proxy must be able to cut a body short, reset a
connection or corrupt one byte, so it reads requests and writes responses itself with these
helpers. Everything here works on a binary file object (socket.makefile('rb')) and a socket.
"""

from __future__ import annotations

import re
import socket
import struct

MAX_LINE = 65536
MAX_HEADERS = 200

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
}

REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
    416: "Range Not Satisfiable", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


class ProtocolError(Exception):
    pass


class Headers:
    """An ordered multi-map of header fields with case-insensitive lookup."""

    def __init__(self, items=None):
        self.items: list[tuple[str, str]] = list(items or [])

    def get(self, name: str, default=None):
        n = name.lower()
        for k, v in self.items:
            if k.lower() == n:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        n = name.lower()
        return [v for k, v in self.items if k.lower() == n]

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.items.append((name, str(value)))

    def add(self, name: str, value: str) -> None:
        self.items.append((name, str(value)))

    def remove(self, name: str) -> None:
        n = name.lower()
        self.items = [(k, v) for k, v in self.items if k.lower() != n]

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def copy(self) -> "Headers":
        return Headers(self.items)

    def as_dict(self) -> dict[str, str]:
        """Lower-case names; repeated fields joined with ', ' (good enough for assertions)."""
        d: dict[str, str] = {}
        for k, v in self.items:
            k = k.lower()
            d[k] = d[k] + ", " + v if k in d else v
        return d


class Request:
    def __init__(self, method: str, target: str, version: str, headers: Headers, body: bytes):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def wants_close(self) -> bool:
        conn = (self.headers.get("Connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" not in conn
        return "close" in conn


def _readline(rfile) -> bytes:
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ProtocolError("header line too long")
    return line


def read_headers(rfile) -> Headers:
    h = Headers()
    for _ in range(MAX_HEADERS):
        line = _readline(rfile)
        if not line:
            raise ProtocolError("connection closed inside the header block")
        if line in (b"\r\n", b"\n"):
            return h
        text = line.decode("latin-1").rstrip("\r\n")
        if ":" not in text:
            raise ProtocolError(f"malformed header line {text!r}")
        k, v = text.split(":", 1)
        h.add(k.strip(), v.strip())
    raise ProtocolError("too many header fields")


def read_chunked(rfile) -> bytes:
    out = bytearray()
    while True:
        line = _readline(rfile)
        if not line:
            raise ProtocolError("connection closed inside a chunked body")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_text!r}") from None
        if size == 0:
            # trailer fields, then the empty line
            while _readline(rfile) not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        data = rfile.read(size)
        if len(data) != size:
            raise ProtocolError("connection closed inside a chunk")
        out += data
        _readline(rfile)


def read_body(rfile, headers: Headers) -> bytes:
    te = (headers.get("Transfer-Encoding") or "").lower()
    if "chunked" in te:
        return read_chunked(rfile)
    cl = headers.get("Content-Length")
    if cl is None:
        return b""
    n = int(cl)
    data = rfile.read(n) if n else b""
    if len(data) != n:
        raise ProtocolError(f"connection closed after {len(data)} of {n} body bytes")
    return data


def read_request(rfile, sock: socket.socket | None = None) -> Request | None:
    """Reads one request with its body. Returns None when the peer closed the connection
    between requests. With sock given, answers 'Expect: 100-continue' before reading the body."""
    line = _readline(rfile)
    while line in (b"\r\n", b"\n"):  # stray CRLF between requests is tolerated (RFC 9112)
        line = _readline(rfile)
    if not line:
        return None
    parts = line.decode("latin-1").rstrip("\r\n").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ProtocolError(f"malformed request line {line[:80]!r}")
    method, target, version = parts
    headers = read_headers(rfile)
    expect = (headers.get("Expect") or "").lower()
    if expect == "100-continue" and sock is not None:
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    headers.remove("Expect")
    body = read_body(rfile, headers)
    return Request(method, target, version, headers, body)


def status_line(status: int, reason: str | None = None) -> bytes:
    return f"HTTP/1.1 {status} {reason or REASONS.get(status, 'Status')}\r\n".encode("latin-1")


def encode_head(status: int, headers: Headers, reason: str | None = None) -> bytes:
    out = bytearray(status_line(status, reason))
    for k, v in headers.items:
        out += f"{k}: {v}\r\n".encode("latin-1")
    out += b"\r\n"
    return bytes(out)


def reset_connection(sock: socket.socket) -> None:
    """Closes with SO_LINGER 0, so that the peer sees a TCP RST instead of an orderly FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_single_range(value: str, size: int):
    """Returns (start, end_inclusive), 'unsatisfiable', or None when the header is not a single
    byte range we understand (then a server answers 200 with the whole body, as RFC 9110 allows)."""
    m = RANGE_RE.match(value or "")
    if not m:
        return None
    a, b = m.group(1), m.group(2)
    if a == "" and b == "":
        return None
    if a == "":
        n = int(b)
        if n == 0:
            return "unsatisfiable"
        return (max(0, size - n), size - 1)
    start = int(a)
    end = int(b) if b != "" else size - 1
    if b != "" and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return (start, min(end, size - 1))
