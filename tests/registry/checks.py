"""Assertions shared by the registry tests that run erostream-mkfs."""

from __future__ import annotations

import json
from pathlib import Path

from . import tools
from .images import MT_INDEX, read_layout_manifest, verify_layout_blobs


def artifact_digests(run: tools.Run) -> list[str]:
    """Artifact digests from `convert --json` ({"artifacts": [{"digest": ...}]}, as the local
    conversion prints it; a bare list or a single object is accepted too)."""
    j = run.json()
    if isinstance(j, dict) and "artifacts" in j:
        j = j["artifacts"]
    if isinstance(j, dict):
        j = [j]
    return [a["digest"] for a in j]


def materialize_matches(mkfs, artifact_ref: str, out: Path, reference, *extra) -> tools.Run:
    """materialize ARTIFACT_REF into OUT and require the files to equal the reference's, byte for
    byte (same names, same sha256)."""
    r = mkfs.run("materialize", "--quiet", *extra, artifact_ref, str(out))
    assert r.returncode == 0, r.describe()
    got = tools.tree_digests(out)
    assert got == reference.files, (
        f"materialize of {artifact_ref} differs from the local reference:\n"
        f"  only here: {sorted(set(got) - set(reference.files))}\n"
        f"  missing:   {sorted(set(reference.files) - set(got))}\n"
        f"  differing: {sorted(k for k in got if k in reference.files and got[k] != reference.files[k])}")
    return r


def local_artifact_matches(mkfs, layout: Path, tag: str, out: Path, reference) -> None:
    """A converted OCI layout is sound (every blob hashes to its name) and materializes like the
    reference."""
    assert verify_layout_blobs(layout) == [], f"blobs with wrong content in {layout}"
    materialize_matches(mkfs, f"oci:{layout}:{tag}", out, reference)


def assert_clear_failure(run: tools.Run, *words: str) -> None:
    """A failed run with a message on stderr that names the problem: exit code not 0, no crash
    (signal), and at least one of WORDS (case-insensitive) in stderr."""
    assert run.returncode not in (0,), f"expected a failure:\n{run.describe()}"
    assert run.returncode > 0, f"killed by signal {-run.returncode}:\n{run.describe()}"
    err = run.stderr.lower()
    assert err.strip(), f"failure without a message:\n{run.describe()}"
    if words:
        assert any(w.lower() in err for w in words), \
            f"stderr names none of {words}:\n{run.describe()}"


def no_partial_output(layout: Path | None = None, tag: str | None = None,
                      materialized: Path | None = None) -> None:
    """Nothing wrong was left behind by a failed run: no device files from materialize; in an OCI
    layout no blob with wrong content and no TAG."""
    if materialized is not None:
        left = tools.device_files(materialized)
        assert left == [], f"a failed materialize left {left} in {materialized}"
    if layout is not None and Path(layout).exists():
        assert verify_layout_blobs(layout) == [], f"blobs with wrong content in {layout}"
        if tag and (Path(layout) / "index.json").exists():
            try:
                read_layout_manifest(layout, tag)
            except KeyError:
                return
            raise AssertionError(f"a failed convert tagged {tag} in {layout}")


def fallback_index(client, repo: str, subject_digest: str) -> dict | None:
    """The referrers tag-schema index (tag sha256-<hex>) of SUBJECT in REPO, or None."""
    tag = subject_digest.replace(":", "-")
    if client.manifest_status(repo, tag) != 200:
        return None
    data, ct, _ = client.get_manifest(repo, tag)
    idx = json.loads(data)
    assert ct.split(";")[0] == MT_INDEX and idx.get("mediaType") == MT_INDEX, (ct, idx)
    return idx
