"""Integration test harness for erostream: real processes, real kernel.

What lives here:
  * locating and running the project's binaries (EROSTREAM_BUILD = meson build root);
  * image builders: hand-made tar layers (python tarfile) written into an OCI image layout by this
    module itself, images made with umoci, docker-archive files made with skopeo;
  * the reference tree: `umoci unpack` of the same image;
  * the mounted view: mount(2) of a materialized artifact with the kernel's file-backed EROFS;
  * compare_trees(): entry by entry comparison of two directory trees.

Nothing in here sleeps: every external command runs with a timeout, every mount is undone in a
`finally`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]

# Generous: the slowest thing a test runs is a conversion or an unpack of a >4 GiB file.
DEFAULT_TIMEOUT = 900

# A fixed, non-round timestamp so that a converter that writes "now" or 0 is caught.
DEFAULT_MTIME = 1_600_000_123

ARTIFACT_TYPE = "application/vnd.erostream.v1"

# ---------------------------------------------------------------------------------------------
# Binaries and commands
# ---------------------------------------------------------------------------------------------


class CommandError(AssertionError):
    """A command exited non-zero (when it was expected not to) or timed out."""

    def __init__(self, message: str, result: subprocess.CompletedProcess | None = None):
        super().__init__(message)
        self.result = result


def build_dir() -> Path:
    env = os.environ.get("EROSTREAM_BUILD")
    return Path(env).resolve() if env else REPO_ROOT / "build"


def mkfs_binary() -> Path:
    return build_dir() / "mkfs" / "erostream-mkfs"


def _clip(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n[...]\n" + text[-limit // 2 :]


def run(
    argv: Sequence[object],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input: bytes | None = None,
    cwd: Path | None = None,
    env: dict | None = None,
    umask: int | None = None,
) -> subprocess.CompletedProcess:
    """Runs argv, capturing stdout and stderr as text. Raises CommandError on timeout, and on a
    non-zero exit when check is set; the message carries the command line and its stderr."""
    args = [str(a) for a in argv]
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    try:
        proc = subprocess.run(
            args,
            input=input,
            capture_output=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
            preexec_fn=preexec,
        )
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode(errors="replace")
        raise CommandError(f"timed out after {timeout}s: {shlex.join(args)}\nstderr:\n{_clip(err)}")
    result = subprocess.CompletedProcess(
        args,
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )
    if check and result.returncode != 0:
        raise CommandError(
            f"exit {result.returncode}: {shlex.join(args)}\n"
            f"stdout:\n{_clip(result.stdout)}\nstderr:\n{_clip(result.stderr)}",
            result,
        )
    return result


class Mkfs:
    """The erostream-mkfs CLI. Fails (not skips) when the binary is missing: a test that cannot
    run the converter has not verified anything."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else mkfs_binary()

    def require(self) -> None:
        if not os.access(self.path, os.X_OK):
            raise AssertionError(
                f"erostream-mkfs not found or not executable at {self.path} "
                f"(set EROSTREAM_BUILD to the meson build root; now {build_dir()})"
            )

    def __call__(self, *args: object, check: bool = True, timeout: float = DEFAULT_TIMEOUT,
                 env: dict | None = None):
        """Runs erostream-mkfs ARGS; env adds variables to the inherited environment."""
        self.require()
        full_env = {**os.environ, **env} if env else None
        return run([self.path, *args], check=check, timeout=timeout, env=full_env)

    def convert(self, source: str, dest: str, *opts: object, check: bool = True):
        """Runs `convert --json`; returns (CompletedProcess, parsed JSON or None)."""
        res = self("convert", "--json", *opts, source, dest, check=check)
        doc = None
        if res.returncode == 0:
            try:
                doc = json.loads(res.stdout)
            except json.JSONDecodeError as e:
                raise AssertionError(f"convert --json printed no valid JSON ({e}):\n{_clip(res.stdout)}")
        return res, doc

    def materialize(self, artifact: str, outdir: Path) -> tuple[Path, list[Path]]:
        self("materialize", artifact, outdir)
        return materialized_files(outdir)

    def inspect_json(self, artifact: str) -> dict:
        res = self("inspect", artifact, "--json")
        try:
            return json.loads(res.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"inspect --json printed no valid JSON ({e}):\n{_clip(res.stdout)}")

    def check(self, artifact: str, *, check: bool = True):
        return self("check", artifact, check=check)


def materialized_files(outdir: Path) -> tuple[Path, list[Path]]:
    """meta.erofs and device-1.img .. device-N.img of a materialized artifact, in device order.
    Asserts the device files are numbered without gaps."""
    meta = outdir / "meta.erofs"
    assert meta.is_file(), f"materialize wrote no {meta}"
    devices = []
    n = 1
    while (outdir / f"device-{n}.img").is_file():
        devices.append(outdir / f"device-{n}.img")
        n += 1
    stray = sorted(
        p.name for p in outdir.glob("device-*.img") if p not in devices
    )
    assert not stray, f"device files out of sequence in {outdir}: {stray}"
    return meta, devices


def fsck_erofs(meta: Path, devices: Sequence[Path], *, extract: bool = True) -> subprocess.CompletedProcess:
    """Debian's fsck.erofs (erofs-utils 1.5) as a second reader: one --device=PATH per extra
    device, in device-table order. --extract without a directory reads every file's data too."""
    argv = ["fsck.erofs", *(f"--device={Path(d).resolve()}" for d in devices)]
    if extract:
        argv.append("--extract")
    argv.append(Path(meta).resolve())
    return run(argv, timeout=DEFAULT_TIMEOUT)


# ---------------------------------------------------------------------------------------------
# Kernel mount of file-backed EROFS
# ---------------------------------------------------------------------------------------------

MS_RDONLY = 1
MNT_DETACH = 2

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(AssertionError):
    """mount(2) refused. An AssertionError on purpose: kernel tests must fail, not skip."""


def erofs_mount_data(devices: Sequence[Path]) -> str:
    paths = [str(Path(d).resolve()) for d in devices]
    for p in paths:
        # The kernel splits mount data at commas; such a path cannot be passed.
        assert "," not in p, f"device path with a comma cannot be passed to mount(2): {p}"
    return ",".join(f"device={p}" for p in paths)


def mount_erofs(meta: Path, devices: Sequence[Path], target: Path) -> None:
    """mount(2) of a regular file with fstype erofs (file-backed EROFS, Linux 6.12+). Not
    util-linux mount(8): it would put a loop device in between."""
    data = erofs_mount_data(devices)
    src = str(Path(meta).resolve()).encode()
    rc = _libc.mount(src, str(target).encode(), b"erofs", MS_RDONLY, data.encode() if data else None)
    if rc != 0:
        e = ctypes.get_errno()
        raise MountError(
            f"mount(2) of {meta} on {target} (erofs, ro, data={data!r}) failed: "
            f"{errno.errorcode.get(e, e)} {os.strerror(e)}; see dmesg for the kernel's reason"
        )


def umount(target: Path) -> None:
    """umount2(target, 0); on EBUSY falls back to a lazy MNT_DETACH so no mount outlives a test."""
    t = str(target).encode()
    if _libc.umount2(t, 0) == 0:
        return
    e = ctypes.get_errno()
    if e == errno.EBUSY and _libc.umount2(t, MNT_DETACH) == 0:
        return
    e = ctypes.get_errno()
    raise OSError(e, f"umount2({target}): {os.strerror(e)}")


def is_mountpoint(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


@contextlib.contextmanager
def mounted(meta: Path, devices: Sequence[Path], target: Path) -> Iterator[Path]:
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    mount_erofs(meta, devices, target)
    try:
        yield target
    finally:
        umount(target)


# ---------------------------------------------------------------------------------------------
# Tar layers made by hand
# ---------------------------------------------------------------------------------------------

_ZERO_MIB = bytes(1 << 20)


class _RawPaxTarInfo(tarfile.TarInfo):
    """A TarInfo that writes pax header values given as bytes verbatim, without adding
    `hdrcharset=BINARY` (python's own behaviour for non-UTF-8 values). That is what GNU tar and
    Go's archive/tar (docker, buildkit) write for binary xattrs such as security.capability.

    `ustar_override` replaces fields of the ustar header only (say size 0 under a pax `size`
    record), so that a reader that ignores a pax record produces a visibly wrong entry."""

    ustar_override: dict = {}

    def get_info(self):
        info = super().get_info()
        info.update(self.ustar_override)
        return info

    @classmethod
    def _create_pax_generic_header(cls, pax_headers, type, encoding):
        records = b""
        for keyword, value in pax_headers.items():
            k = keyword.encode("utf-8")
            v = value if isinstance(value, bytes) else str(value).encode("utf-8")
            body = len(k) + len(v) + 3  # " " "=" "\n"
            n = p = 0
            while True:
                n = body + len(str(p))
                if n == p:
                    break
                p = n
            records += str(p).encode("ascii") + b" " + k + b"=" + v + b"\n"
        info = {"name": "././@PaxHeader", "type": type, "size": len(records), "magic": tarfile.POSIX_MAGIC}
        return cls._create_header(info, tarfile.USTAR_FORMAT, "ascii", "replace") + cls._create_payload(records)


class Content:
    """File content that can be produced more than once without being held in memory."""

    size: int

    def open(self) -> io.RawIOBase:
        raise NotImplementedError

    def sha256(self) -> str:
        h = hashlib.sha256()
        with self.open() as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()


class BytesContent(Content):
    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def open(self):
        return io.BytesIO(self.data)


class _SparseReader(io.RawIOBase):
    def __init__(self, size: int, head: bytes, tail: bytes):
        self.size, self.head, self.tail, self.pos = size, head, tail, 0

    def readable(self):
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        tail_start = self.size - len(self.tail)
        out = memoryview(buf)[:n]
        pos = self.pos
        i = 0
        while i < n:
            p = pos + i
            if p < len(self.head):
                m = min(n - i, len(self.head) - p)
                out[i : i + m] = self.head[p : p + m]
            elif p >= tail_start:
                m = min(n - i, self.size - p)
                out[i : i + m] = self.tail[p - tail_start : p - tail_start + m]
            else:
                m = min(n - i, tail_start - p, len(_ZERO_MIB))
                out[i : i + m] = _ZERO_MIB[:m]
            i += m
        self.pos += n
        return n


class SparseContent(Content):
    """`size` bytes: `head`, zeros, `tail`. Generated on the fly (a >4 GiB file costs no memory)."""

    def __init__(self, size: int, head: bytes = b"", tail: bytes = b""):
        assert len(head) + len(tail) <= size
        self.size, self.head, self.tail = size, head, tail

    def open(self):
        return io.BufferedReader(_SparseReader(self.size, self.head, self.tail), buffer_size=1 << 20)


@dataclass
class Entry:
    info: tarfile.TarInfo
    content: Content | None = None


class Layer:
    """One tar layer, entry by entry, in the order given (the order is part of the test).

    mtime arguments take an int (seconds) or a string "SECONDS.FRACTION" (PAX only: written as a
    pax `mtime` record with all its digits; the ustar field holds the whole seconds).
    xattrs: {name: bytes|str}, written as SCHILY.xattr.NAME pax records (PAX only)."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT, *, mtime: int | str = DEFAULT_MTIME,
                 global_pax: dict[str, str] | None = None):
        self.format = fmt
        self.default_mtime = mtime
        self.global_pax = global_pax  # written as a pax global header ('g') first, PAX only
        self.entries: list[Entry] = []

    # -- generic -------------------------------------------------------------------------------
    def add(self, info: tarfile.TarInfo, content: Content | None = None) -> tarfile.TarInfo:
        self.entries.append(Entry(info, content))
        return info

    def _info(self, name, type, *, mode, uid, gid, mtime, xattrs, pax, uname="", gname="") -> tarfile.TarInfo:
        ti = _RawPaxTarInfo(name)
        ti.type = type
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname, ti.gname = uname, gname
        mt = self.default_mtime if mtime is None else mtime
        if isinstance(mt, str):
            if self.format != tarfile.PAX_FORMAT:
                raise ValueError("fractional mtimes need PAX_FORMAT")
            ti.mtime = int(mt.split(".")[0])
            ti.pax_headers["mtime"] = mt
        else:
            ti.mtime = mt
        for k, v in (xattrs or {}).items():
            if self.format != tarfile.PAX_FORMAT:
                raise ValueError("xattrs need PAX_FORMAT")
            ti.pax_headers["SCHILY.xattr." + k] = v if isinstance(v, bytes) else v.encode()
        for k, v in (pax or {}).items():
            ti.pax_headers[k] = v
        return ti

    # -- entry kinds ----------------------------------------------------------------------------
    def file(self, path: str, data: bytes | Content = b"", *, mode=0o644, uid=0, gid=0, mtime=None,
             xattrs=None, pax=None, uname="", gname="") -> tarfile.TarInfo:
        content = data if isinstance(data, Content) else BytesContent(data)
        ti = self._info(path, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs,
                        pax=pax, uname=uname, gname=gname)
        ti.size = content.size
        return self.add(ti, content)

    def big_file(self, path: str, size: int, head: bytes, tail: bytes, **kw) -> tarfile.TarInfo:
        return self.file(path, SparseContent(size, head, tail), **kw)

    def dir(self, path: str, *, mode=0o755, uid=0, gid=0, mtime=None, xattrs=None, pax=None) -> tarfile.TarInfo:
        return self.add(self._info(path, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime,
                                   xattrs=xattrs, pax=pax))

    def symlink(self, path: str, target: str, *, uid=0, gid=0, mtime=None, xattrs=None, pax=None) -> tarfile.TarInfo:
        ti = self._info(path, tarfile.SYMTYPE, mode=0o777, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs, pax=pax)
        ti.linkname = target
        return self.add(ti)

    def hardlink(self, path: str, target: str, *, mode=0o644, uid=0, gid=0, mtime=None, pax=None) -> tarfile.TarInfo:
        ti = self._info(path, tarfile.LNKTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=None, pax=pax)
        ti.linkname = target
        return self.add(ti)

    def chardev(self, path: str, major: int, minor: int, *, mode=0o644, uid=0, gid=0, mtime=None, xattrs=None):
        ti = self._info(path, tarfile.CHRTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs, pax=None)
        ti.devmajor, ti.devminor = major, minor
        return self.add(ti)

    def blockdev(self, path: str, major: int, minor: int, *, mode=0o660, uid=0, gid=0, mtime=None, xattrs=None):
        ti = self._info(path, tarfile.BLKTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs, pax=None)
        ti.devmajor, ti.devminor = major, minor
        return self.add(ti)

    def fifo(self, path: str, *, mode=0o644, uid=0, gid=0, mtime=None, xattrs=None):
        return self.add(self._info(path, tarfile.FIFOTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime,
                                   xattrs=xattrs, pax=None))

    def whiteout(self, path: str) -> tarfile.TarInfo:
        """`dir/.wh.NAME`: hides NAME of the layers below."""
        d, _, name = path.rstrip("/").rpartition("/")
        return self.file((d + "/" if d else "") + ".wh." + name, b"", mode=0o644)

    def opaque(self, dirpath: str) -> tarfile.TarInfo:
        """`dir/.wh..wh..opq`: hides everything the layers below put in dir."""
        d = dirpath.strip("/")
        return self.file((d + "/" if d else "") + ".wh..wh..opq", b"", mode=0o644)

    # -- output ---------------------------------------------------------------------------------
    def write(self, out) -> None:
        """Streams the tar archive into `out` (anything with write() and tell())."""
        with tarfile.open(fileobj=out, mode="w", format=self.format, copybufsize=1 << 20,
                          encoding="utf-8", pax_headers=self.global_pax) as tf:
            for e in self.entries:
                if e.content is None:
                    tf.addfile(e.info)
                else:
                    with e.content.open() as f:
                        tf.addfile(e.info, f)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.write(buf)
        return buf.getvalue()


class _HashingSink:
    """Write-only file object: sha256 and length of what passes, forwarded to `out`. With
    sparse=True, 64 KiB runs of zeros become holes (out must be a seekable regular file)."""

    def __init__(self, out, sparse: bool = False):
        self.out, self.sparse = out, sparse
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, b) -> int:
        b = bytes(b) if not isinstance(b, bytes) else b
        self.h.update(b)
        if not self.sparse:
            self.out.write(b)
        else:
            view = memoryview(b)
            step = 1 << 16
            for i in range(0, len(b), step):
                piece = view[i : i + step]
                if piece == _ZERO_MIB[: len(piece)]:
                    self.out.seek(len(piece), os.SEEK_CUR)
                else:
                    self.out.write(piece)
        self.n += len(b)
        return len(b)

    def tell(self) -> int:
        return self.n

    def flush(self) -> None:
        self.out.flush()

    def finish(self) -> None:
        if self.sparse:
            self.out.truncate(self.n)
        self.out.flush()

    def digest(self) -> str:
        return "sha256:" + self.h.hexdigest()


def write_tar_file(layer: Layer | bytes, path: Path) -> tuple[str, int]:
    """Writes the uncompressed tar (zero runs as holes); returns (diff_id, size)."""
    with open(path, "wb") as f:
        sink = _HashingSink(f, sparse=True)
        if isinstance(layer, bytes):
            sink.write(layer)
        else:
            layer.write(sink)
        sink.finish()
    return sink.digest(), sink.n


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------------------------
# OCI image layouts written by the harness
# ---------------------------------------------------------------------------------------------

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

LAYER_MEDIA_TYPES = {
    ("oci", "tar"): "application/vnd.oci.image.layer.v1.tar",
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("docker", "tar"): "application/vnd.docker.image.rootfs.diff.tar",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ("docker", "zstd"): "application/vnd.docker.image.rootfs.diff.tar.zstd",
}

REF_NAME = "org.opencontainers.image.ref.name"


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return Path(layout) / "blobs" / algo / hexd


def init_layout(layout: Path) -> None:
    layout = Path(layout)
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    if not (layout / "oci-layout").exists():
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    if not (layout / "index.json").exists():
        (layout / "index.json").write_bytes(
            canonical_json({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []})
        )


def put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    p = blob_path(layout, digest)
    if not p.exists():
        tmp = p.with_name(p.name + ".harness-tmp")
        tmp.write_bytes(data)
        tmp.rename(p)
    return digest, len(data)


def put_blob_file(layout: Path, src: Path) -> tuple[str, int]:
    """Adds a file as a blob by hard link (same file system) or copy. The harness never modifies
    blobs in place (see replace_bytes), so sharing the inode with the tar cache is safe."""
    digest = sha256_file(src)
    p = blob_path(layout, digest)
    if not p.exists():
        try:
            os.link(src, p)
        except OSError:
            shutil.copyfile(src, p)
    return digest, src.stat().st_size


def tag_manifest(layout: Path, tag: str | None, descriptor: dict) -> None:
    """Points `tag` (org.opencontainers.image.ref.name) of index.json at descriptor, replacing
    whatever that tag named before. tag None adds an untagged entry."""
    idx_path = Path(layout) / "index.json"
    idx = json.loads(idx_path.read_text())
    entries = [m for m in idx.get("manifests", []) if tag is None or m.get("annotations", {}).get(REF_NAME) != tag]
    d = dict(descriptor)
    if tag is not None:
        d["annotations"] = {**d.get("annotations", {}), REF_NAME: tag}
    entries.append(d)
    idx["manifests"] = entries
    tmp = idx_path.with_name("index.json.harness-tmp")
    tmp.write_bytes(canonical_json(idx))
    tmp.rename(idx_path)


@dataclass
class LayerBlob:
    digest: str
    size: int
    media_type: str
    diff_id: str
    tar_path: Path  # the uncompressed tar (sparse), kept for references and checks
    compression: str


@dataclass
class Image:
    layout: Path
    tag: str | None
    manifest_digest: str
    manifest: dict
    config: dict
    layers: list[LayerBlob]
    media: str  # "oci" | "docker"
    platform: str = "linux/amd64"
    # Where the tar files live; used to make a reference layout when umoci cannot read this one.
    workdir: Path | None = None

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    @property
    def ref_by_digest(self) -> str:
        return f"oci:{self.layout}@{self.manifest_digest}"

    @property
    def tar_paths(self) -> list[Path]:
        return [l.tar_path for l in self.layers]

    def umoci_readable(self) -> bool:
        """umoci 0.4.7 reads OCI manifests with OCI tar / tar+gzip layers only (no zstd, no Docker
        media types): see oci/layer/unpack.go isLayerType."""
        return self.media == "oci" and all(l.compression in ("tar", "gzip") for l in self.layers)


def compress_file(src: Path, dst: Path, compression: str) -> None:
    if compression == "tar":
        shutil.copyfile(src, dst)
    elif compression == "gzip":
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            # mtime=0 and no file name: the same tar always gives the same blob.
            with gzip.GzipFile(filename="", mode="wb", fileobj=fo, mtime=0, compresslevel=6) as gz:
                shutil.copyfileobj(fi, gz, 1 << 20)
    elif compression == "zstd":
        run(["zstd", "-q", "-f", "-3", "--no-progress", "-o", dst, src])
    else:
        raise ValueError(f"unknown compression {compression}")


def _as_tar_file(layer: Layer | bytes | Path, workdir: Path) -> tuple[Path, str]:
    """Materializes one layer as an uncompressed tar under workdir/tars; returns (path, diff_id)."""
    tars = Path(workdir) / "tars"
    tars.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tars, suffix=".tar")
    os.close(fd)
    path = Path(name)
    if isinstance(layer, Path):
        shutil.copyfile(layer, path)
        diff_id = sha256_file(path)
    else:
        diff_id, _ = write_tar_file(layer, path)
    final = tars / (diff_id.split(":")[1] + ".tar")
    if final.exists():
        path.unlink()
    else:
        path.rename(final)
    return final, diff_id


def build_image(
    layout: Path,
    tag: str | None,
    layers: Sequence[Layer | bytes | Path],
    *,
    workdir: Path,
    compression: str | Sequence[str] = "gzip",
    media: str = "oci",
    os_name: str = "linux",
    arch: str = "amd64",
    variant: str | None = None,
    tag_it: bool = True,
) -> Image:
    """Writes an image (config + manifest + layers) into an OCI image layout and tags it.
    layers: Layer objects, raw tar bytes, or paths of tar files (uncompressed).
    compression: one of tar/gzip/zstd, or one per layer. media: "oci" or "docker" media types."""
    layout = Path(layout)
    init_layout(layout)
    comps = [compression] * len(layers) if isinstance(compression, str) else list(compression)
    assert len(comps) == len(layers)
    blobs: list[LayerBlob] = []
    for layer, comp in zip(layers, comps):
        tar_path, diff_id = _as_tar_file(layer, workdir)
        if comp == "tar":
            digest, size = put_blob_file(layout, tar_path)
        else:
            tmp = Path(workdir) / "tars" / f"{diff_id.split(':')[1]}.{comp}"
            if not tmp.exists():
                compress_file(tar_path, tmp, comp)
            digest, size = put_blob_file(layout, tmp)
        blobs.append(LayerBlob(digest, size, LAYER_MEDIA_TYPES[(media, comp)], diff_id, tar_path, comp))

    config = {
        "architecture": arch,
        "os": os_name,
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in blobs]},
        "history": [{"created_by": "erostream test harness"} for _ in blobs],
    }
    if variant:
        config["variant"] = variant
    cfg_digest, cfg_size = put_blob(layout, canonical_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST if media == "oci" else MT_DOCKER_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG if media == "oci" else MT_DOCKER_CONFIG,
                   "digest": cfg_digest, "size": cfg_size},
        "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in blobs],
    }
    m_digest, m_size = put_blob(layout, canonical_json(manifest))
    platform = {"os": os_name, "architecture": arch}
    if variant:
        platform["variant"] = variant
    if tag_it:
        tag_manifest(layout, tag, {"mediaType": manifest["mediaType"], "digest": m_digest, "size": m_size,
                                   "platform": platform})
    plat = f"{os_name}/{arch}" + (f"/{variant}" if variant else "")
    return Image(layout, tag, m_digest, manifest, config, blobs, media, plat, Path(workdir))


def build_index(layout: Path, tag: str, images: Sequence[Image], *, media: str = "oci") -> tuple[str, dict]:
    """Writes an image index (or Docker manifest list) over already written images and tags it."""
    entries = []
    for im in images:
        os_name, arch, *var = im.platform.split("/")
        plat = {"os": os_name, "architecture": arch}
        if var:
            plat["variant"] = var[0]
        raw = blob_path(layout, im.manifest_digest).read_bytes()
        entries.append({"mediaType": im.manifest["mediaType"], "digest": im.manifest_digest,
                        "size": len(raw), "platform": plat})
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX if media == "oci" else MT_DOCKER_LIST,
             "manifests": entries}
    digest, size = put_blob(layout, canonical_json(index))
    tag_manifest(layout, tag, {"mediaType": index["mediaType"], "digest": digest, "size": size})
    return digest, index


def reference_layout(image: Image, workdir: Path) -> tuple[Path, str]:
    """(layout, tag) that umoci can unpack to the same tree as `image`: the image itself when
    umoci reads its media types, else a twin with the very same tar files as OCI tar layers
    (same diff_ids, so the same tree)."""
    if image.umoci_readable() and image.tag:
        return image.layout, image.tag
    twin = Path(workdir) / "reference-layout"
    build_image(twin, "ref", [l.tar_path for l in image.layers], workdir=workdir, compression="tar",
                media="oci")
    return twin, "ref"


# ---------------------------------------------------------------------------------------------
# umoci and skopeo
# ---------------------------------------------------------------------------------------------


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    """`umoci unpack` as root (keeps owners, devices, xattrs). Runs with umask 022 so that
    directories umoci creates implicitly get 0755. Returns BUNDLE/rootfs."""
    run(["umoci", "unpack", "--image", f"{layout}:{tag}", bundle], umask=0o022)
    return Path(bundle) / "rootfs"


def reference_rootfs(image: Image, workdir: Path) -> Path:
    layout, tag = reference_layout(image, workdir)
    return umoci_unpack(layout, tag, Path(workdir) / "reference-bundle")


def umoci_init(layout: Path, tag: str) -> None:
    if not (Path(layout) / "index.json").exists():
        run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", f"{layout}:{tag}"])


def umoci_add_layer(layout: Path, tag: str, workdir: Path, fill: Callable[[Path], None]) -> None:
    """Unpacks layout:tag, lets `fill(rootfs)` change the tree, repacks it as a new layer."""
    bundle = Path(tempfile.mkdtemp(prefix="umoci-bundle-", dir=workdir))
    bundle.rmdir()
    try:
        rootfs = umoci_unpack(layout, tag, bundle)
        fill(rootfs)
        run(["umoci", "repack", "--image", f"{layout}:{tag}", bundle], umask=0o022)
    finally:
        shutil.rmtree(bundle, ignore_errors=True)


def umoci_insert(layout: Path, tag: str, source: Path | None, target: str, *, opaque=False, whiteout=False) -> None:
    argv = ["umoci", "insert", "--image", f"{layout}:{tag}"]
    if whiteout:
        argv += ["--whiteout", target]
    else:
        argv += (["--opaque"] if opaque else []) + [source, target]
    run(argv)


def image_from_layout(layout: Path, tag: str, workdir: Path) -> Image:
    """An Image record for a layout written by someone else (umoci), its layer tars extracted to
    workdir/tars for references and checks."""
    layout = Path(layout)
    idx = json.loads((layout / "index.json").read_text())
    desc = next(m for m in idx["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag)
    manifest = json.loads(blob_path(layout, desc["digest"]).read_bytes())
    config = json.loads(blob_path(layout, manifest["config"]["digest"]).read_bytes())
    blobs = []
    tars = Path(workdir) / "tars"
    tars.mkdir(parents=True, exist_ok=True)
    for l, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        mt = l["mediaType"]
        comp = "gzip" if mt.endswith("gzip") else "zstd" if mt.endswith("zstd") else "tar"
        tar_path = tars / (diff_id.split(":")[1] + ".tar")
        src = blob_path(layout, l["digest"])
        if not tar_path.exists():
            if comp == "gzip":
                with gzip.open(src, "rb") as fi, open(tar_path, "wb") as fo:
                    shutil.copyfileobj(fi, fo, 1 << 20)
            elif comp == "zstd":
                run(["zstd", "-q", "-d", "-f", "-o", tar_path, src])
            else:
                shutil.copyfile(src, tar_path)
        assert sha256_file(tar_path) == diff_id, f"{layout}: layer {l['digest']} does not match diff_id {diff_id}"
        blobs.append(LayerBlob(l["digest"], l["size"], mt, diff_id, tar_path, comp))
    media = "oci" if manifest.get("mediaType", MT_OCI_MANIFEST) == MT_OCI_MANIFEST else "docker"
    plat = f"{config.get('os', 'linux')}/{config.get('architecture', 'amd64')}"
    return Image(layout, tag, desc["digest"], manifest, config, blobs, media, plat, Path(workdir))


def skopeo_docker_archive(image: Image, archive: Path, name: str = "erostream/test:latest") -> Path:
    """`skopeo copy oci:DIR:TAG docker-archive:FILE:NAME:TAG` (the docker save format)."""
    run(["skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{image.layout}:{image.tag}",
         f"docker-archive:{archive}:{name}"])
    return Path(archive)


# ---------------------------------------------------------------------------------------------
# What the reference tree cannot show: implicit directories
# ---------------------------------------------------------------------------------------------


def tar_members(path: Path) -> list[tarfile.TarInfo]:
    """The members of a tar file, read as Go's archive/tar (umoci, containerd) reads them: the
    archive may end without its two zero blocks, even inside the last entry's padding. Debian's
    umoci 0.4.7 `insert` writes such layers; python's tarfile alone gives up on the second form."""
    members = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        tf = tarfile.open(fileobj=f, mode="r:")
        try:
            for m in tf:
                members.append(m)
        except tarfile.ReadError:
            last = members[-1] if members else None
            end = last.offset_data + last.size if last else 0
            if not (last and end <= size < end + tarfile.BLOCKSIZE):
                raise
    return members


def _clean_member(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def implicit_dirs(tar_paths: Iterable[Path]) -> set[str]:
    """Directories whose mtime the reference (umoci unpack) does not take from the image:

    * implicit directories: a tar gave a path below them but never their own header. umoci makes
      them with MkdirAll (mode 0777 &~ umask, owner root, mtime = wall clock);
    * directories in which umoci made such an implicit directory after their own header: the
      mkdir changes their mtime and umoci restores a parent's metadata only when the parent
      existed before the entry (oci/layer/tar_extract.go UnpackEntry), so it stays "now" until a
      later layer has the directory's header again.

    Follows whiteouts and opaque markers the way the overlay does. Used as compare_trees'
    skip_mtime; every other attribute of these directories is still compared."""
    state: dict[str, str] = {}  # path -> "explicit" | "implicit" | "other"
    dirty: set[str] = set()

    def drop_below(p: str, keep: set[str] | None = None) -> None:
        pre = p + "/" if p else ""
        for k in [k for k in state if k.startswith(pre) and k != p]:
            if keep is None or k not in keep:
                del state[k]
                dirty.discard(k)

    for tp in tar_paths:
        added: set[str] = set()
        for m in tar_members(tp):
            p = _clean_member(m.name)
            if not p:
                continue
            d, _, base = p.rpartition("/")
            if base == ".wh..wh..opq":
                drop_below(d, keep=added)
                continue
            if base.startswith(".wh."):
                t = (d + "/" if d else "") + base[4:]
                if t in added:
                    # A whiteout hides lower layers only: what this layer put at t stays, and
                    # removing the lower entries below t changes t's mtime in the reference.
                    drop_below(t, keep=added)
                    if state.get(t) == "explicit" or state.get(t) == "implicit":
                        dirty.add(t)
                    continue
                state.pop(t, None)
                dirty.discard(t)
                drop_below(t)
                continue
            comps = p.split("/")
            for i in range(1, len(comps)):
                a = "/".join(comps[:i])
                if a not in state:
                    state[a] = "implicit"
                    dirty.add("/".join(comps[: i - 1]))
                added.add(a)
            if m.isdir():
                state[p] = "explicit"
                dirty.discard(p)
            else:
                drop_below(p)
                dirty.discard(p)
                state[p] = "other"
            added.add(p)
    return {p for p, s in state.items() if s == "implicit"} | {p for p in dirty if p in state or p == ""}


# ---------------------------------------------------------------------------------------------
# Tree comparison
# ---------------------------------------------------------------------------------------------

_TYPE_NAMES = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
}


def _type_name(mode: int) -> str:
    return _TYPE_NAMES.get(stat.S_IFMT(mode), oct(stat.S_IFMT(mode)))


@dataclass
class _Node:
    st: os.stat_result
    xattrs: dict[str, bytes] = field(default_factory=dict)
    link: str | None = None
    sha256: str | None = None


def _walk(root: Path) -> dict[str, _Node]:
    """Every entry under root (root itself as ""), without following symlinks."""
    root = Path(root)
    out: dict[str, _Node] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        full = root / rel if rel else root
        st = os.lstat(full)
        node = _Node(st)
        for name in os.listxattr(full, follow_symlinks=False):
            node.xattrs[name] = os.getxattr(full, name, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            node.link = os.readlink(full)
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(full, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            node.sha256 = h.hexdigest()
        elif stat.S_ISDIR(st.st_mode):
            for name in os.listdir(full):
                stack.append(f"{rel}/{name}" if rel else name)
        out[rel] = node
    return out


def _hardlink_groups(nodes: dict[str, _Node]) -> dict[str, frozenset[str]]:
    by_ino: dict[tuple[int, int], set[str]] = {}
    for rel, n in nodes.items():
        if not stat.S_ISDIR(n.st.st_mode):
            by_ino.setdefault((n.st.st_dev, n.st.st_ino), set()).add(rel)
    return {rel: frozenset(group) for group in by_ino.values() for rel in group}


def _fmt_mtime(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns // 10**9}.{st.st_mtime_ns % 10**9:09d}"


def compare_trees(
    ref_root: Path,
    mnt_root: Path,
    *,
    skip_mtime: Iterable[str] = (),
    ignore_xattrs: Iterable[str] = (),
    check_dir_nlink: bool = True,
) -> list[str]:
    """Compares two trees entry by entry; returns human-readable differences (empty: equal).

    Compared for every entry: presence, type, permission bits incl. setuid/setgid/sticky, uid,
    gid, mtime to the nanosecond, all xattrs (names and values, symlinks included); for regular
    files size, sha256 and hardlink group (the set of paths sharing the inode) and link count; for
    symlinks size and target; for devices major/minor; for directories link count (2 + subdirs on
    both sides) unless check_dir_nlink is off.
    Not compared, on purpose: atime, ctime, inode numbers, st_blocks, directory st_size (file
    system specific), and the root directory's mtime (umoci sets it to the epoch unless a layer
    has a "./" entry). `skip_mtime` names more entries whose mtime is not compared (implicit
    directories, see implicit_dirs); `ignore_xattrs` names xattrs to leave out, to be asserted by
    the caller some other way. Nothing else is skipped."""
    ref = _walk(Path(ref_root))
    mnt = _walk(Path(mnt_root))
    skip_mtime = set(skip_mtime) | {""}
    ignore_xattrs = set(ignore_xattrs)
    diffs: list[str] = []
    for rel in sorted(set(ref) - set(mnt)):
        diffs.append(f"/{rel}: missing (reference has a {_type_name(ref[rel].st.st_mode)})")
    for rel in sorted(set(mnt) - set(ref)):
        diffs.append(f"/{rel}: extra {_type_name(mnt[rel].st.st_mode)} (not in reference)")
    ref_groups, mnt_groups = _hardlink_groups(ref), _hardlink_groups(mnt)

    for rel in sorted(set(ref) & set(mnt)):
        a, b = ref[rel], mnt[rel]
        name = "/" + rel
        ta, tb = _type_name(a.st.st_mode), _type_name(b.st.st_mode)
        if ta != tb:
            diffs.append(f"{name}: type {tb}, reference {ta}")
            continue
        ma, mb = stat.S_IMODE(a.st.st_mode), stat.S_IMODE(b.st.st_mode)
        if ma != mb:
            diffs.append(f"{name}: mode {mb:04o}, reference {ma:04o}")
        if a.st.st_uid != b.st.st_uid:
            diffs.append(f"{name}: uid {b.st.st_uid}, reference {a.st.st_uid}")
        if a.st.st_gid != b.st.st_gid:
            diffs.append(f"{name}: gid {b.st.st_gid}, reference {a.st.st_gid}")
        if rel not in skip_mtime and a.st.st_mtime_ns != b.st.st_mtime_ns:
            diffs.append(f"{name}: mtime {_fmt_mtime(b.st)}, reference {_fmt_mtime(a.st)}")
        xa = {k: v for k, v in a.xattrs.items() if k not in ignore_xattrs}
        xb = {k: v for k, v in b.xattrs.items() if k not in ignore_xattrs}
        for k in sorted(set(xa) | set(xb)):
            if k not in xb:
                diffs.append(f"{name}: xattr {k} missing (reference {xa[k]!r})")
            elif k not in xa:
                diffs.append(f"{name}: extra xattr {k}={xb[k]!r}")
            elif xa[k] != xb[k]:
                diffs.append(f"{name}: xattr {k}={xb[k]!r}, reference {xa[k]!r}")
        if ta == "file":
            if a.st.st_size != b.st.st_size:
                diffs.append(f"{name}: size {b.st.st_size}, reference {a.st.st_size}")
            if a.sha256 != b.sha256:
                diffs.append(f"{name}: content sha256 {b.sha256}, reference {a.sha256}")
            ga, gb = ref_groups[rel], mnt_groups[rel]
            if ga != gb:
                diffs.append(f"{name}: hardlinked with {sorted('/' + p for p in gb - {rel})}, "
                             f"reference {sorted('/' + p for p in ga - {rel})}")
        if ta == "symlink":
            if a.link != b.link:
                diffs.append(f"{name}: symlink target {b.link!r}, reference {a.link!r}")
            if a.st.st_size != b.st.st_size:
                diffs.append(f"{name}: symlink size {b.st.st_size}, reference {a.st.st_size}")
        if ta in ("chardev", "blockdev"):
            da = (os.major(a.st.st_rdev), os.minor(a.st.st_rdev))
            db = (os.major(b.st.st_rdev), os.minor(b.st.st_rdev))
            if da != db:
                diffs.append(f"{name}: device {db[0]}:{db[1]}, reference {da[0]}:{da[1]}")
        if ta != "dir" or check_dir_nlink:
            if a.st.st_nlink != b.st.st_nlink:
                diffs.append(f"{name}: link count {b.st.st_nlink}, reference {a.st.st_nlink}")
    return diffs


def assert_same_tree(ref_root: Path, mnt_root: Path, **kw) -> None:
    diffs = compare_trees(ref_root, mnt_root, **kw)
    if diffs:
        shown = "\n  ".join(diffs[:60])
        more = f"\n  ... and {len(diffs) - 60} more" if len(diffs) > 60 else ""
        raise AssertionError(f"{len(diffs)} difference(s) between reference {ref_root} and {mnt_root}:\n  "
                             f"{shown}{more}")


# ---------------------------------------------------------------------------------------------
# The whole round trip
# ---------------------------------------------------------------------------------------------


@dataclass
class RoundTrip:
    convert_json: dict
    artifact_ref: str
    outdir: Path
    meta: Path
    devices: list[Path]
    reference: Path


def layout_snapshot(layout: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (size, sha256)} of every file in a layout (to prove nothing changed)."""
    snap = {}
    for p in sorted(Path(layout).rglob("*")):
        if p.is_file() or p.is_symlink():
            snap[str(p.relative_to(layout))] = (p.lstat().st_size, sha256_file(p) if p.is_file() else "")
    return snap


def artifact_manifest(layout: Path, tag: str) -> tuple[str, dict]:
    idx = json.loads((Path(layout) / "index.json").read_text())
    hits = [m for m in idx.get("manifests", []) if m.get("annotations", {}).get(REF_NAME) == tag]
    assert len(hits) == 1, f"{layout}/index.json: expected one entry tagged {tag!r}, found {len(hits)}"
    digest = hits[0]["digest"]
    return digest, json.loads(blob_path(layout, digest).read_bytes())


def check_artifact_manifest(layout: Path, tag: str, source: Image, subject: str | None = None) -> dict:
    """The artifact's manifest: artifactType, subject = the source manifest, one metadata blob
    then one data blob per source layer, every blob present with its digest and size."""
    digest, m = artifact_manifest(layout, tag)
    subject = subject or source.manifest_digest
    assert m.get("artifactType") == ARTIFACT_TYPE, f"artifactType {m.get('artifactType')!r}"
    assert m.get("subject", {}).get("digest") == subject, \
        f"subject {m.get('subject')} is not the source manifest {subject}"
    layers = m.get("layers", [])
    assert len(layers) == 1 + len(source.layers), \
        f"{len(layers)} blobs in the artifact, expected metadata + {len(source.layers)} data blobs"
    for d in layers + ([m["config"]] if "config" in m else []):
        p = blob_path(layout, d["digest"])
        assert p.is_file(), f"blob {d['digest']} missing from {layout}"
        assert p.stat().st_size == d["size"], f"blob {d['digest']}: size {p.stat().st_size}, descriptor {d['size']}"
        assert sha256_file(p) == d["digest"], f"blob {d['digest']}: content does not match its digest"
    return m


def convert_mount_compare(
    mkfs: Mkfs,
    image: Image,
    work: Path,
    *,
    source: str | None = None,
    convert_opts: Sequence[object] = (),
    expect_subject: str | bool = True,
    reference_image: Image | None = None,
    ignore_xattrs: Iterable[str] = (),
    extra_checks: Callable[[Path, Path], None] | None = None,
) -> RoundTrip:
    """convert -> check -> materialize -> fsck.erofs -> mount(2) -> compare with umoci unpack.

    source: the SOURCE argument (default image.ref). expect_subject: True for the image's manifest
    digest, a digest string, or False when the source has no manifest of its own (docker-archive)
    and only the digest's form is checked. reference_image: what umoci unpacks for the reference
    (default the image; needed when the image holds something umoci cannot read, such as pax
    global headers). extra_checks(reference_rootfs, mountpoint) runs while mounted."""
    work = Path(work)
    dest = work / "dest"
    res, doc = mkfs.convert(source or image.ref, f"oci:{dest}:artifact", *convert_opts)
    arts = doc.get("artifacts") if isinstance(doc, dict) else None
    assert arts and len(arts) == 1, f"convert --json: expected one artifact, got {doc!r}"
    art = arts[0]
    subject = image.manifest_digest if expect_subject is True else expect_subject
    if subject:
        assert art.get("subject") == subject, f"convert --json subject {art.get('subject')} != {subject}"
    else:
        assert _is_digest(art.get("subject")), f"convert --json subject {art.get('subject')!r} is no digest"
    assert art.get("platform") == image.platform, f"convert --json platform {art.get('platform')!r}"
    art_digest, manifest = artifact_manifest(dest, "artifact")
    assert art.get("digest") == art_digest, f"convert --json digest {art.get('digest')} != tagged {art_digest}"
    assert art.get("size") == blob_path(dest, art_digest).stat().st_size, "convert --json size"
    check_artifact_manifest(dest, "artifact", image, subject=subject or art.get("subject"))
    artifact = f"oci:{dest}:artifact"
    mkfs.check(artifact)
    outdir = work / "materialized"
    meta, devices = mkfs.materialize(artifact, outdir)
    assert len(devices) == len(image.layers), f"{len(devices)} devices for {len(image.layers)} layers"
    fsck_erofs(meta, devices)
    ref_img = reference_image or image
    reference = reference_rootfs(ref_img, work)
    skip = implicit_dirs(ref_img.tar_paths)
    mnt = work / "mnt"
    with mounted(meta, devices, mnt):
        assert_same_tree(reference, mnt, skip_mtime=skip, ignore_xattrs=ignore_xattrs)
        if extra_checks:
            extra_checks(reference, mnt)
    return RoundTrip(doc, artifact, outdir, meta, devices, reference)


def _is_digest(v) -> bool:
    return isinstance(v, str) and v.startswith("sha256:") and len(v) == 71 and \
        all(c in "0123456789abcdef" for c in v[7:])


def replace_bytes(path: Path, offset: int, new: bytes | None = None) -> None:
    """Flips (or replaces) bytes at offset by writing a new file and renaming it over `path`:
    never in place, since blobs may share an inode with other files (hard links)."""
    data = bytearray(Path(path).read_bytes())
    assert 0 <= offset < len(data), f"offset {offset} outside {path} ({len(data)} bytes)"
    if new is None:
        data[offset] ^= 0xFF
    else:
        data[offset : offset + len(new)] = new
    tmp = Path(str(path) + ".harness-tmp")
    tmp.write_bytes(bytes(data))
    os.chmod(tmp, Path(path).stat().st_mode)
    tmp.rename(path)


def verify_layout(layout: Path, tag: str) -> None:
    """The harness's own consistency check of a layout it wrote (skopeo's OCI transport ignores
    index entries with Docker media types, so it cannot check those): every descriptor's blob
    exists with its size and digest, and every layer decompresses to its config diff_id."""
    layout = Path(layout)
    _, manifest = artifact_manifest(layout, tag)
    config_blob = blob_path(layout, manifest["config"]["digest"])
    config = json.loads(config_blob.read_bytes())
    for d in [manifest["config"], *manifest["layers"]]:
        p = blob_path(layout, d["digest"])
        assert p.is_file(), f"{layout}: blob {d['digest']} missing"
        assert p.stat().st_size == d["size"], f"{layout}: blob {d['digest']} size"
        assert sha256_file(p) == d["digest"], f"{layout}: blob {d['digest']} digest"
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])
    for d, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        p = blob_path(layout, d["digest"])
        h = hashlib.sha256()
        if d["mediaType"].endswith("gzip"):
            with gzip.open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        elif d["mediaType"].endswith("zstd"):
            proc = subprocess.run(["zstd", "-q", "-d", "-c", p], capture_output=True, check=True,
                                  timeout=DEFAULT_TIMEOUT)
            h.update(proc.stdout)
        else:
            h.update(p.read_bytes())
        assert "sha256:" + h.hexdigest() == diff_id, f"{layout}: layer {d['digest']} is not diff_id {diff_id}"


# ---------------------------------------------------------------------------------------------
# Sample images
# ---------------------------------------------------------------------------------------------

CAPABILITY_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep, v2


def kitchen_sink_layers() -> list[Layer]:
    """Three layers using most of what a layer can hold: every file type, PAX and GNU headers,
    xattrs of three namespaces, big ids, fractional mtimes, whiteouts and an opaque directory."""
    l1 = Layer(tarfile.PAX_FORMAT)
    l1.dir("etc", mtime="1600000000.123456789")
    l1.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", mtime="1600000001.5")
    l1.hardlink("etc/passwd.link", "etc/passwd")
    l1.dir("bin", mode=0o755)
    l1.file("bin/ping", b"\x7fELF" + bytes(range(256)) * 40, mode=0o4755,
            xattrs={"security.capability": CAPABILITY_NET_RAW})
    l1.file("bin/wall", b"wall", mode=0o2755, gid=5)
    l1.dir("tmp", mode=0o1777)
    l1.dir("home", mode=0o755)
    l1.dir("home/user", mode=0o750, uid=70000, gid=70001, xattrs={"user.note": b"home", "trusted.t": b"\x00\xff"})
    l1.file("home/user/data", bytes(range(256)) * 300 + b"tail", uid=70000, gid=70001,
            xattrs={"user.mime_type": b"application/octet-stream"})
    l1.symlink("home/user/link", "../../etc/passwd", uid=70000, gid=70001, xattrs={"trusted.sym": b"1"})
    l1.symlink("abs", "/etc/passwd")
    l1.dir("dev")
    l1.chardev("dev/null", 1, 3, mode=0o666)
    l1.chardev("dev/bigminor", 240, 70000, mode=0o600)
    l1.blockdev("dev/nvme0n1p7", 259, 7)
    l1.fifo("dev/initctl", mode=0o600)
    l1.dir("var")
    l1.dir("var/cache")
    l1.file("var/cache/old", b"old cache")
    l1.file("var/empty-file", b"")
    l1.file("gone-later", b"bye")
    l1.file("implicit/parent/child", b"no parent headers")

    l2 = Layer(tarfile.GNU_FORMAT)
    l2.whiteout("gone-later")
    l2.opaque("var/cache")
    l2.file("var/cache/new", b"new cache")
    l2.file("long-" + "n" * 150, b"a GNU long name")
    l2.symlink("long-target", "t" * 180)
    l2.file("huge-ids", b"ids", uid=3_000_000, gid=4_000_000)  # base-256 in GNU headers
    l2.file("future", b"2255", mtime=9_000_000_000)  # base-256 mtime

    l3 = Layer(tarfile.PAX_FORMAT)
    l3.file("etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n", mtime="1700000000.000000001")  # breaks the link
    l3.file("pax-ids", b"p", uid=5_000_000, gid=6_000_000, mtime="1700000000.999999999")
    l3.file("deep/" + "/".join(["d" * 60] * 5) + "/file", b"long path", mode=0o600)
    return [l1, l2, l3]


def demo_layers() -> list[Layer]:
    """The small example of scripts/demo: a few files in two layers, one whiteout."""
    base = Layer()
    base.dir("etc")
    base.file("etc/os-release", b'NAME="erostream demo"\nVERSION="1"\n')
    base.dir("app")
    base.file("app/hello.txt", b"Hello from the lower layer.\n")
    base.file("app/obsolete.txt", b"This file is deleted by the upper layer.\n")
    base.file("app/run.sh", b"#!/bin/sh\necho hello\n", mode=0o755)
    upper = Layer()
    upper.whiteout("app/obsolete.txt")
    upper.file("app/hello.txt", b"Hello from the upper layer: it replaced the lower one.\n")
    upper.file("app/data.bin", bytes(range(256)) * 64)
    upper.symlink("app/current", "hello.txt")
    return [base, upper]


def rewrite_image(image: Image, tag: str, *, layer_blobs: dict[int, bytes] | None = None,
                  layer_media_types: dict[int, str] | None = None, diff_ids: dict[int, str] | None = None,
                  manifest_edit: Callable[[dict], None] | None = None) -> Image:
    """A variant of `image` in the same layout under `tag`: some layer blobs replaced (digest and
    size in the manifest follow the new bytes), media types or diff_ids changed, or the manifest
    edited freely. For inputs that are well-formed on the outside and broken inside."""
    layout = image.layout
    manifest = json.loads(json.dumps(image.manifest))
    config = json.loads(json.dumps(image.config))
    for i, data in (layer_blobs or {}).items():
        digest, size = put_blob(layout, data)
        manifest["layers"][i].update(digest=digest, size=size)
    for i, mt in (layer_media_types or {}).items():
        manifest["layers"][i]["mediaType"] = mt
    if diff_ids:
        for i, d in diff_ids.items():
            config["rootfs"]["diff_ids"][i] = d
        digest, size = put_blob(layout, canonical_json(config))
        manifest["config"].update(digest=digest, size=size)
    if manifest_edit:
        manifest_edit(manifest)
    m_digest, m_size = put_blob(layout, canonical_json(manifest))
    tag_manifest(layout, tag, {"mediaType": manifest.get("mediaType", MT_OCI_MANIFEST), "digest": m_digest,
                               "size": m_size})
    layers = []
    for i, l in enumerate(manifest.get("layers", [])):
        old = image.layers[i] if i < len(image.layers) else None
        layers.append(LayerBlob(l["digest"], l["size"], l["mediaType"],
                                config["rootfs"]["diff_ids"][i] if i < len(config["rootfs"]["diff_ids"]) else "",
                                old.tar_path if old else Path("/nonexistent"), old.compression if old else "tar"))
    return Image(layout, tag, m_digest, manifest, config, layers, image.media, image.platform, image.workdir)


def tar_member_offsets(tar: bytes) -> dict[str, tuple[int, int]]:
    """{name: (header offset, data offset)} of a tar archive (python's reader)."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {m.name: (m.offset, m.offset_data) for m in tf.getmembers()}
