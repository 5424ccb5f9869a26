"""Debian's docker-registry 2.8 started for a test, and skopeo pushes into it.

Readiness: docker-registry is configured with http.addr 127.0.0.1:0 and a JSON log formatter;
it logs "listening on 127.0.0.1:PORT" with the port the kernel picked once its listener is bound,
so there is no port race and no polling: a reader thread parses the merged stdout/stderr pipe and
sets an event. The same reader captures the credentials that 2.8 provisions when its htpasswd
file is missing ("htpasswd is missing, provisioning with default user", fields user and password).
Stop: by pid (terminate, wait, kill after a deadline), never by name.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

DOCKER_REGISTRY = "/usr/bin/docker-registry"
SKOPEO = "/usr/bin/skopeo"
HTPASSWD = "/usr/bin/htpasswd"

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class RegistryError(Exception):
    pass


def _yaml_scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(str(v))


def to_yaml(obj, indent: int = 0) -> str:
    """A tiny YAML emitter for nested dicts of scalars (no PyYAML in the standard library)."""
    pad = "  " * indent
    out = []
    for k, v in obj.items():
        if isinstance(v, dict):
            out.append(f"{pad}{k}:\n{to_yaml(v, indent + 1)}")
        elif isinstance(v, list):
            out.append(f"{pad}{k}:\n" + "".join(f"{pad}  - {_yaml_scalar(x)}\n" for x in v))
        else:
            out.append(f"{pad}{k}: {_yaml_scalar(v)}\n")
    return "".join(out)


def make_htpasswd(path: Path, users: dict[str, str]) -> None:
    """Writes a bcrypt htpasswd file (docker-registry 2.8 accepts only bcrypt entries)."""
    lines = []
    for user, password in users.items():
        r = subprocess.run([HTPASSWD, "-Bbn", user, password], capture_output=True, text=True,
                           check=True)
        lines.append(r.stdout.strip())
    path.write_text("\n".join(lines) + "\n")


class DockerRegistry:
    """One docker-registry process with its own storage and config under a temp dir.

    auth: None | "htpasswd" | "token".
      htpasswd: users={name: password} writes the file with `htpasswd -Bbn`; users=None lets the
        registry provision its default user, whose credentials land in self.users.
      token: token_server (a token_server.TokenServer) gives realm, service, issuer and the root
        certificate bundle.
    """

    def __init__(self, workdir: Path | None = None, auth: str | None = None,
                 users: dict[str, str] | None = None, token_server=None, log_level: str = "info"):
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="eros-registry-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.auth = auth
        self.users: dict[str, str] = dict(users or {})
        self.token_server = token_server
        self.log_level = log_level
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_lines: list[str] = []
        self.provisioned: tuple[str, str] | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- configuration -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """host:port as used in image references (docker://HOST/REPO:TAG)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def htpasswd_path(self) -> Path:
        return self.workdir / "auth" / "htpasswd"

    def config(self) -> dict:
        cfg = {
            "version": 0.1,
            "log": {"level": self.log_level, "formatter": "json",
                    "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "data")},
                "delete": {"enabled": True},
                "redirect": {"disable": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": "127.0.0.1:0", "secret": "erostream-test-secret",
                     "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        if self.auth == "htpasswd":
            cfg["auth"] = {"htpasswd": {"realm": "erostream-test", "path": str(self.htpasswd_path)}}
        elif self.auth == "token":
            ts = self.token_server
            if ts is None:
                raise RegistryError("token auth needs a token server")
            cfg["auth"] = {"token": {"realm": ts.realm, "service": ts.service,
                                     "issuer": ts.issuer, "rootcertbundle": str(ts.cert_path),
                                     "autoredirect": False}}
        elif self.auth is not None:
            raise RegistryError(f"unknown auth kind {self.auth!r}")
        return cfg

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> "DockerRegistry":
        if not os.access(DOCKER_REGISTRY, os.X_OK):
            raise RegistryError(f"{DOCKER_REGISTRY} is missing: apt-get install docker-registry")
        if self.auth == "htpasswd":
            self.htpasswd_path.parent.mkdir(parents=True, exist_ok=True)
            if self.users:
                make_htpasswd(self.htpasswd_path, self.users)
            elif self.htpasswd_path.exists():
                self.htpasswd_path.unlink()
        cfg_path = self.workdir / "config.yml"
        cfg_path.write_text(to_yaml(self.config()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.proc = subprocess.Popen([DOCKER_REGISTRY, "serve", str(cfg_path)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        self._reader = threading.Thread(target=self._read_log, name="docker-registry-log",
                                        daemon=True)
        self._reader.start()
        if not self._ready.wait(READY_TIMEOUT) or self.port is None:
            self.stop()
            raise RegistryError("docker-registry did not report 'listening on' within "
                                f"{READY_TIMEOUT:.0f}s; its log:\n" + self.log_text())
        if self.auth == "htpasswd" and not self.users:
            if self.provisioned is None:
                self.stop()
                raise RegistryError("docker-registry did not provision an htpasswd user; log:\n"
                                    + self.log_text())
            self.users = {self.provisioned[0]: self.provisioned[1]}
        return self

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.log_lines.append(line)
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            msg = rec.get("msg", "")
            if msg.startswith("htpasswd is missing, provisioning with default user"):
                self.provisioned = (rec.get("user", ""), rec.get("password", ""))
            elif msg.startswith("listening on "):
                addr = msg[len("listening on "):].strip()
                self.port = int(addr.rsplit(":", 1)[1])
                self._ready.set()
        # EOF: the process is gone; wake up a start() that is still waiting.
        self._ready.set()

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(self.log_lines[-200:])

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
        if p.stdout is not None:
            p.stdout.close()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # -- credentials ---------------------------------------------------------------------------

    def credentials(self) -> tuple[str, str] | None:
        if self.auth is None:
            return None
        if self.auth == "token":
            user, pw = next(iter(self.token_server.users.items()))
            return user, pw
        user, pw = next(iter(self.users.items()))
        return user, pw

    def basic_auth_header(self) -> str | None:
        c = self.credentials()
        if c is None:
            return None
        return "Basic " + base64.b64encode(f"{c[0]}:{c[1]}".encode()).decode()


def skopeo_env(tmpdir: Path | None = None) -> dict[str, str]:
    """An environment in which skopeo reads no credentials or registries.conf of the host's user."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "http_proxy", "https_proxy",
                        "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
        env["REGISTRY_AUTH_FILE"] = str(Path(tmpdir) / "skopeo-auth.json")
    return env


def skopeo_copy(src: str, dest: str, creds: tuple[str, str] | None = None,
                src_creds: tuple[str, str] | None = None, all_images: bool = False,
                preserve_digests: bool = True, env: dict | None = None,
                extra: list[str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """skopeo copy between oci: layouts and docker:// registries on loopback (plain HTTP).

    --preserve-digests makes skopeo fail instead of silently changing a manifest digest, which
    the tests rely on: the image in the registry must be byte-identical to the local layout."""
    cmd = [SKOPEO, "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--retry-times", "0"]
    if preserve_digests:
        cmd.append("--preserve-digests")
    if all_images:
        cmd.append("--all")
    if creds:
        cmd += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    if src_creds:
        cmd += ["--src-creds", f"{src_creds[0]}:{src_creds[1]}"]
    cmd += list(extra or []) + [src, dest]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env or skopeo_env(),
                       timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RegistryError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r


def push_oci(layout: Path, tag: str, registry_host: str, repo: str, dest_tag: str | None = None,
             creds: tuple[str, str] | None = None, all_images: bool = False,
             env: dict | None = None) -> None:
    """Pushes oci:LAYOUT:TAG to docker://REGISTRY_HOST/REPO:DEST_TAG."""
    skopeo_copy(f"oci:{layout}:{tag}", f"docker://{registry_host}/{repo}:{dest_tag or tag}",
                creds=creds, all_images=all_images, env=env)
