"""pytest fixtures for the registry tests. Test modules import the ones they use:

    from registry.fixtures import *  # noqa: F401,F403  (pytest finds fixtures in module globals)

Session fixtures start one docker-registry per auth kind with the test image pushed as
erostream/test:v1; function fixtures give each test its own fault proxy and DOCKER_CONFIG.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from .client import RegistryClient
from .fault_proxy import FaultProxy
from .images import make_index_image, make_test_image, read_layout_manifest
from .referrers_server import ReferrersServer
from .registry import DockerRegistry, push_oci, skopeo_env
from .token_server import TokenServer
from . import tools

REPO = "erostream/test"
TAG = "v1"
INDEX_REPO = "erostream/multi"
INDEX_TAG = "multi"
HTPASSWD_USERS = {"alice": "wonderland"}
TOKEN_USERS = {"tokenuser": "tokenpass"}



@dataclass
class SourceImage:
    layout: Path
    tag: str
    digest: str
    manifest: dict
    manifest_bytes: bytes

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    @property
    def blob_digests(self) -> list[str]:
        return [self.manifest["config"]["digest"]] + [l["digest"] for l in self.manifest["layers"]]

    @property
    def layer_digests(self) -> list[str]:
        return [l["digest"] for l in self.manifest["layers"]]


def _image(layout: Path, tag: str) -> SourceImage:
    desc, data = read_layout_manifest(layout, tag)
    return SourceImage(layout, tag, desc["digest"], json.loads(data), data)


@pytest.fixture(scope="session")
def test_image(tmp_path_factory) -> SourceImage:
    root = tmp_path_factory.mktemp("image") / "layout"
    make_test_image(root, TAG)
    return _image(root, TAG)


@pytest.fixture(scope="session")
def index_image(tmp_path_factory) -> SourceImage:
    root = tmp_path_factory.mktemp("index-image") / "layout"
    make_index_image(root, INDEX_TAG)
    return _image(root, INDEX_TAG)


def _push_all(reg_host: str, img: SourceImage, idx: SourceImage, creds, tmp: Path) -> None:
    env = skopeo_env(tmp)
    push_oci(img.layout, img.tag, reg_host, REPO, creds=creds, env=env)
    push_oci(idx.layout, idx.tag, reg_host, INDEX_REPO, creds=creds, all_images=True, env=env)


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory, test_image, index_image):
    d = tmp_path_factory.mktemp("registry-plain")
    with DockerRegistry(d / "reg") as reg:
        _push_all(reg.host, test_image, index_image, None, d)
        yield reg


@pytest.fixture(scope="session")
def htpasswd_registry(tmp_path_factory, test_image, index_image):
    d = tmp_path_factory.mktemp("registry-htpasswd")
    with DockerRegistry(d / "reg", auth="htpasswd", users=HTPASSWD_USERS) as reg:
        _push_all(reg.host, test_image, index_image, reg.credentials(), d)
        yield reg


@pytest.fixture(scope="session")
def token_server(tmp_path_factory):
    with TokenServer(tmp_path_factory.mktemp("token-server"), users=TOKEN_USERS) as ts:
        yield ts


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory, token_server, test_image, index_image):
    d = tmp_path_factory.mktemp("registry-token")
    with DockerRegistry(d / "reg", auth="token", token_server=token_server) as reg:
        _push_all(reg.host, test_image, index_image, reg.credentials(), d)
        yield reg


@pytest.fixture
def fresh_token_server(token_server):
    """The session token server with its counters cleared and its settings restored after."""
    saved = (token_server.expires_in, token_server.compensate_leeway)
    token_server.clear()
    yield token_server
    token_server.expires_in, token_server.compensate_leeway = saved


@pytest.fixture(scope="session")
def referrers_server(tmp_path_factory, test_image, index_image):
    d = tmp_path_factory.mktemp("referrers")
    with ReferrersServer() as rs:
        _push_all(rs.host, test_image, index_image, None, d)
        yield rs


@pytest.fixture
def proxy_factory():
    """proxy_factory(upstream_host) -> a started FaultProxy, stopped after the test."""
    started = []

    def make(upstream: str | None, name: str = "proxy") -> FaultProxy:
        p = FaultProxy(upstream, name=name).start()
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def plain_proxy(proxy_factory, plain_registry) -> FaultProxy:
    return proxy_factory(plain_registry.host)


@pytest.fixture
def docker_config(tmp_path) -> Path:
    """An empty DOCKER_CONFIG dir (config.json with no auths) for one test."""
    d = tmp_path / "docker-config"
    tools.write_docker_config(d)
    return d


class Mkfs:
    """erostream-mkfs with an isolated environment (DOCKER_CONFIG, no proxies, fast retries)."""

    def __init__(self, docker_config: Path):
        self.docker_config = docker_config
        self.extra_env: dict[str, str] = {}
        self.path_prepend: list[Path] = []

    def env(self, **extra) -> dict[str, str]:
        e = dict(self.extra_env)
        e.update(extra)
        return tools.isolated_env(self.docker_config, e, self.path_prepend)

    def run(self, *args, env: dict | None = None, timeout: float = tools.MKFS_TIMEOUT) -> tools.Run:
        return tools.run_mkfs(list(args), env or self.env(), timeout)

    def ok(self, *args, **kw) -> tools.Run:
        r = self.run(*args, **kw)
        assert r.returncode == 0, r.describe()
        return r


@pytest.fixture(scope="session")
def mkfs_binary() -> Path:
    try:
        return tools.mkfs_path()
    except tools.MkfsMissing as e:
        missing = str(e)
    pytest.fail(missing, pytrace=False)


@pytest.fixture
def mkfs(mkfs_binary, docker_config) -> Mkfs:
    return Mkfs(docker_config)


@dataclass
class Reference:
    """The test image converted and materialized locally (oci: to oci:), the truth that every
    registry path must reproduce byte for byte."""
    layout: Path
    tag: str
    digest: str
    manifest: dict
    materialized: Path
    files: dict[str, str]

    @property
    def artifact_type(self) -> str:
        return self.manifest.get("artifactType") or self.manifest["config"]["mediaType"]

    @property
    def blob_digests(self) -> list[str]:
        return [l["digest"] for l in self.manifest["layers"]]


@pytest.fixture(scope="session")
def reference(tmp_path_factory, mkfs_binary, test_image) -> Reference:
    d = tmp_path_factory.mktemp("reference")
    env = tools.isolated_env(d / "docker-config")
    out = d / "artifact"
    r = tools.run_mkfs(["convert", "--quiet", test_image.oci_ref, f"oci:{out}:art"], env)
    assert r.returncode == 0, r.describe()
    mat = d / "materialized"
    r = tools.run_mkfs(["materialize", "--quiet", f"oci:{out}:art", str(mat)], env)
    assert r.returncode == 0, r.describe()
    desc, data = read_layout_manifest(out, "art")
    files = tools.tree_digests(mat)
    assert files, f"materialize of the local artifact wrote nothing into {mat}"
    return Reference(out, "art", desc["digest"], json.loads(data), mat, files)


@dataclass
class PushedArtifact:
    registry: DockerRegistry
    repo: str
    tag: str
    digest: str


@pytest.fixture(scope="session")
def pushed_artifact(reference, plain_registry) -> PushedArtifact:
    """The reference artifact uploaded into plain_registry (erostream/test:art) by the tests' own
    client, so that pull-side tests do not depend on erostream's push code."""
    c = RegistryClient(plain_registry.host)
    for l in [reference.manifest["config"]] + reference.manifest["layers"]:
        data = (reference.layout / "blobs" / l["digest"].replace(":", "/")).read_bytes()
        assert c.put_blob(REPO, data) == l["digest"]
    data = (reference.layout / "blobs" / reference.digest.replace(":", "/")).read_bytes()
    c.put_manifest(REPO, "art", data, reference.manifest.get("mediaType",
                                                             "application/vnd.oci.image.manifest.v1+json"))
    return PushedArtifact(plain_registry, REPO, "art", reference.digest)

