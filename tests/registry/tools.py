"""Running erostream-mkfs against registries: binary lookup, isolated environments, docker
config.json and credential helpers, and comparison of materialized artifacts."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MKFS_TIMEOUT = 300


class MkfsMissing(Exception):
    pass


def build_dir() -> Path:
    return Path(os.environ.get("EROSTREAM_BUILD_DIR") or os.environ.get("BUILD") or REPO_ROOT / "build")


def mkfs_path() -> Path:
    """EROSTREAM_MKFS, else BUILD/mkfs/erostream-mkfs (BUILD: $EROSTREAM_BUILD_DIR, $BUILD or
    <repo>/build)."""
    p = Path(os.environ["EROSTREAM_MKFS"]) if os.environ.get("EROSTREAM_MKFS") else \
        build_dir() / "mkfs" / "erostream-mkfs"
    if not os.access(p, os.X_OK):
        raise MkfsMissing(f"{p} is missing: build it first (meson setup build && ninja -C build)"
                          " or point EROSTREAM_MKFS at the binary")
    return p


PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
              "all_proxy", "ALL_PROXY")


def isolated_env(docker_config: Path, extra: dict[str, str] | None = None,
                 path_prepend: list[Path] | None = None) -> dict[str, str]:
    """The host's environment without proxies and with DOCKER_CONFIG pointing at a test dir, so
    that no credentials of the machine's user are read; fast retries for tests."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env["DOCKER_CONFIG"] = str(docker_config)
    env.setdefault("EROSTREAM_RETRY_BASE_MS", "20")
    env.setdefault("EROSTREAM_RETRY_MAX", "5")
    if path_prepend:
        env["PATH"] = os.pathsep.join([str(p) for p in path_prepend] + [env.get("PATH", "")])
    env.update(extra or {})
    return env


@dataclass
class Run:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self):
        return json.loads(self.stdout)

    def describe(self) -> str:
        return (f"$ {' '.join(self.cmd)}\n-> exit {self.returncode} after {self.seconds:.2f}s\n"
                f"--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-6000:]}")


def run_mkfs(args: list[str], env: dict[str, str], timeout: float = MKFS_TIMEOUT) -> Run:
    cmd = [str(mkfs_path())] + [str(a) for a in args]
    t = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return Run(cmd, r.returncode, r.stdout, r.stderr, time.monotonic() - t)


# -- docker config.json and credential helpers ---------------------------------------------------

def write_docker_config(directory: Path, auths: dict[str, tuple[str, str]] | None = None,
                        creds_store: str | None = None, cred_helpers: dict[str, str] | None = None,
                        identity_tokens: dict[str, str] | None = None) -> Path:
    """DIR/config.json in docker's format: auths {host: {"auth": base64(user:pass)}},
    "credsStore", "credHelpers" {host: helper-suffix}, and identity tokens (OAuth2 refresh tokens
    that a client exchanges at the token realm with grant_type=refresh_token)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg: dict = {"auths": {}}
    for host, (u, p) in (auths or {}).items():
        cfg["auths"][host] = {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
    for host, tok in (identity_tokens or {}).items():
        cfg["auths"].setdefault(host, {})["identitytoken"] = tok
    if creds_store:
        cfg["credsStore"] = creds_store
    if cred_helpers:
        cfg["credHelpers"] = dict(cred_helpers)
    p = directory / "config.json"
    p.write_text(json.dumps(cfg, indent=2))
    return p


def write_credential_helper(bin_dir: Path, name: str, creds: dict[str, tuple[str, str]],
                            log_path: Path) -> Path:
    """BIN_DIR/docker-credential-NAME implementing the helper protocol's `get` (server URL on
    stdin; JSON {ServerURL, Username, Secret} on stdout; "credentials not found in native
    keychain" and exit 1 for an unknown server). Every call is appended to LOG_PATH as a JSON
    line {action, input}. Servers are matched with and without an http(s):// prefix."""
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    p = bin_dir / f"docker-credential-{name}"
    table = {h: {"Username": u, "Secret": s} for h, (u, s) in creds.items()}
    p.write_text(f"""#!/usr/bin/python3
import json, sys
TABLE = {json.dumps(table)}
action = sys.argv[1] if len(sys.argv) > 1 else ""
data = sys.stdin.read()
with open({json.dumps(str(log_path))}, "a") as f:
    f.write(json.dumps({{"action": action, "input": data}}) + "\\n")
if action == "get":
    server = data.strip()
    key = server.split("://", 1)[-1].rstrip("/")
    entry = TABLE.get(server) or TABLE.get(key)
    if entry is None:
        sys.stdout.write("credentials not found in native keychain\\n")
        sys.exit(1)
    json.dump(dict(entry, ServerURL=server), sys.stdout)
    sys.exit(0)
if action == "list":
    json.dump({{h: e["Username"] for h, e in TABLE.items()}}, sys.stdout)
    sys.exit(0)
sys.stderr.write("unsupported action " + action + "\\n")
sys.exit(1)
""")
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return p


def read_helper_log(log_path: Path) -> list[dict]:
    if not Path(log_path).exists():
        return []
    return [json.loads(l) for l in Path(log_path).read_text().splitlines() if l.strip()]


# -- hosts.toml ------------------------------------------------------------------------------------

def write_hosts_toml(hosts_dir: Path, registry_host: str, server: str,
                     mirrors: list[tuple[str, list[str]]]) -> Path:
    """HOSTS_DIR/REGISTRY_HOST/hosts.toml in containerd's form: server = "http://origin",
    then one [host."URL"] table per mirror with its capabilities (pull, resolve, push)."""
    d = Path(hosts_dir) / registry_host
    d.mkdir(parents=True, exist_ok=True)
    lines = [f'server = "{server}"', ""]
    for url, caps in mirrors:
        lines.append(f'[host."{url}"]')
        lines.append("  capabilities = [" + ", ".join(f'"{c}"' for c in caps) + "]")
        lines.append("")
    p = d / "hosts.toml"
    p.write_text("\n".join(lines))
    return p


# -- comparing materialized artifacts ------------------------------------------------------------

def tree_digests(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file under ROOT."""
    root = Path(root)
    out = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
            out[str(p.relative_to(root))] = h.hexdigest()
    return out


def device_files(root: Path) -> list[str]:
    """What a materialize may have left: meta.erofs and device-N.img files (partial or not)."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and (p.name == "meta.erofs" or p.name.startswith("device-")))
