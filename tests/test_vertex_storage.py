"""The Vertex artefact (plugins/vertex/storage.py) on a real GCS emulator (tests/gcs_support.py):
content addressed, uploaded only where missing, empty version folders as placeholders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPOS
from gcs_support import gcs  # noqa: F401 (fixture)

from deployer.repository import Repository
from deployer_plugins.vertex import storage


def tree(folder: Path) -> dict[str, bytes | None]:
    """Files (content) and folders (None) under ``folder``, by relative path."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*")) if "__pycache__" not in p.parts}


@pytest.fixture
def ensemble(tmp_path) -> Path:
    """add_sub, and pipeline (an ensemble whose version folder is empty) with its step scale."""
    root = tmp_path / "repo"
    for source in (REPOS / "add_sub" / "add_sub", REPOS / "multi" / "pipeline",
                   REPOS / "multi" / "scale"):
        shutil.copytree(source, root / source.name,
                        ignore=shutil.ignore_patterns("__pycache__", ".gitkeep"))
    assert not any((root / "pipeline" / "1").iterdir())
    return root


def test_layout(ensemble):
    lay = storage.layout(Repository.load(ensemble))
    names = [name for name, _ in lay.objects]
    assert names == sorted(names)
    assert ("pipeline/1/", None) in lay.objects
    assert "add_sub/1/model.py" in names and "scale/config.pbtxt" in names
    assert not any(name.startswith("add_sub/1/") and name.endswith("/") for name in names)
    assert lay.size == sum(p.stat().st_size for _, p in lay.objects if p is not None)
    assert len(lay.digest) == 64
    assert storage.layout(Repository.load(ensemble)).digest == lay.digest


def test_uri():
    uri = storage.artefact_uri("b", "/a/b/", "d" * 8)
    assert uri == "gs://b/a/b/dddddddd/"
    assert storage.parse_uri(uri) == ("b", "a/b/dddddddd/")
    with pytest.raises(storage.StorageError):
        storage.parse_uri("s3://b/x/")


def test_upload_once_then_nothing(gcs, ensemble):  # noqa: F811
    repository = Repository.load(ensemble)
    lay = storage.layout(repository)
    uri = storage.artefact_uri(gcs.bucket, "triton-deployer", lay.digest)
    store = storage.Storage(None)
    lines: list[str] = []
    objects, sent = store.upload(lay, uri, lines.append)
    assert (objects, sent) == (len(lay.objects), lay.size) and sent > 0
    base = f"triton-deployer/{lay.digest}/"
    found = gcs.names(base)
    assert found == {base + name: (0 if path is None else path.stat().st_size)
                     for name, path in lay.objects}
    assert found[base + "pipeline/1/"] == 0
    assert store.exists(uri)
    # unchanged: nothing is sent
    assert store.upload(storage.layout(repository), uri, lines.append) == (0, 0)
    # an object lost from the bucket is sent again, alone
    gcs.client().bucket(gcs.bucket).blob(base + "scale/config.pbtxt").delete()
    size = (ensemble / "scale" / "config.pbtxt").stat().st_size
    assert store.upload(lay, uri, lines.append) == (1, size)
    # a changed file is another artefact
    with open(ensemble / "add_sub" / "1" / "model.py", "a") as handle:
        handle.write("\n# changed\n")
    changed = storage.layout(Repository.load(ensemble))
    assert changed.digest != lay.digest
    other = storage.artefact_uri(gcs.bucket, "triton-deployer", changed.digest)
    assert store.upload(changed, other, lines.append)[0] == len(changed.objects)
    assert len(gcs.names("triton-deployer/")) == 2 * len(lay.objects)


def test_delete_is_idempotent(gcs, ensemble):  # noqa: F811
    lay = storage.layout(Repository.load(ensemble))
    uri = storage.artefact_uri(gcs.bucket, "p", lay.digest)
    store = storage.Storage("a-project")
    store.upload(lay, uri, lambda line: None)
    keep = storage.artefact_uri(gcs.bucket, "p", "other")
    store.upload(lay, keep, lambda line: None)
    assert store.delete(uri) == len(lay.objects)
    assert store.delete(uri) == 0
    assert not store.exists(uri)
    assert store.exists(keep)  # a neighbour with the same prefix stays
    missing = storage.artefact_uri("no-such-bucket", "p", lay.digest)
    assert store.delete(missing) == 0 and not store.exists(missing)


def test_bucket_location(gcs):  # noqa: F811
    store = storage.Storage(None)
    assert store.bucket_location(gcs.bucket)
    assert store.bucket_location("no-such-bucket") is None


def test_upload_to_missing_bucket(gcs, ensemble):  # noqa: F811
    lay = storage.layout(Repository.load(ensemble))
    with pytest.raises(storage.StorageError) as caught:
        storage.Storage(None).upload(lay, storage.artefact_uri("no-such-bucket", "p", "d"),
                                     lambda line: None)
    assert "no-such-bucket" in str(caught.value) and "\n" not in str(caught.value)
    assert "buckets create" in caught.value.hint


def test_download_and_materialize_match(gcs, ensemble, tmp_path):  # noqa: F811
    lay = storage.layout(Repository.load(ensemble))
    uri = storage.artefact_uri(gcs.bucket, "triton-deployer", lay.digest)
    store = storage.Storage(None)
    store.upload(lay, uri, lambda line: None)
    downloaded = store.download(uri, tmp_path / "downloaded")
    local = storage.materialize(lay, tmp_path / "materialized")
    assert tree(downloaded) == tree(local) == tree(ensemble)
    assert (local / "pipeline" / "1").is_dir()
    # what came back is a repository again, with the same digest
    assert storage.layout(Repository.load(downloaded)).digest == lay.digest
    # materialize replaces what was there
    (local / "stray").write_text("x")
    storage.materialize(lay, local)
    assert tree(local) == tree(ensemble)
