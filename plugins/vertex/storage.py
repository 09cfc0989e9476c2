"""The artefact Vertex reads: the repository under ``gs://BUCKET/PREFIX/<digest>/``.

The objects are the repository's files at their paths (Vertex copies ``artifact_uri`` to
``AIP_STORAGE_URI`` and Triton reads it as the model repository), plus a zero-byte ``folder/``
object for each empty version folder: Triton's GCS filesystem lists an empty folder as that
placeholder (an ensemble's ``1/`` is usually empty). The digest is the sha256 of a listing of
every object's name, size and content hash (as the SageMaker artefacts), so an unchanged
repository maps to objects that already exist and a redeploy sends nothing.

google.cloud.storage is imported only inside :class:`Storage`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

from deployer.progress import transfer

#: bump when the layout changes, so old digests are not reused for a new layout
LAYOUT_VERSION = "1"
#: files uploaded at once
WORKERS = 4
#: a file over 8 MiB goes up in resumable chunks of this size (a multiple of 256 KiB), each
#: read from disk just before it is sent: what the upload's progress counts
CHUNK = 16 << 20


class StorageError(Exception):
    """A Cloud Storage call failed; ``str()`` is one line, ``hint`` what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclasses.dataclass(frozen=True)
class Layout:
    """The objects of an artefact, by name under its root (sorted); a None path is a
    zero-byte folder placeholder (its name ends with ``/``)."""

    digest: str
    objects: tuple[tuple[str, Path | None], ...]

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for _, path in self.objects if path is not None)


def layout(repository) -> Layout:
    """Every file of the repository (symlinks resolved), and a placeholder for each empty
    version folder; the digest of their listing."""
    from deployer_plugins.sagemaker.artefacts import file_digest

    files = list(repository.files())
    names = {rel for rel, _ in files}
    objects: list[tuple[str, Path | None]] = list(files)
    for model in repository.models.values():
        for version in model.versions:
            folder = f"{model.name}/{version}/"
            if not any(n.startswith(folder) for n in names):
                objects.append((folder, None))
    objects.sort(key=lambda item: item[0])
    digest = hashlib.sha256(f"triton-deployer vertex {LAYOUT_VERSION}\n".encode())
    for name, path in objects:
        if path is None:
            digest.update(f"dir {name}\n".encode())
        else:
            digest.update(f"file {name} {path.stat().st_size} {file_digest(path)}\n".encode())
    return Layout(digest.hexdigest(), tuple(objects))


def artefact_uri(bucket: str, prefix: str, digest: str) -> str:
    """``gs://BUCKET/PREFIX/DIGEST/``."""
    folder = "/".join(p for p in str(prefix or "").split("/") if p)
    return f"gs://{bucket}/{folder + '/' if folder else ''}{digest}/"


def parse_uri(uri: str) -> tuple[str, str]:
    """``(bucket, path)`` of ``gs://BUCKET/PATH/``; the path keeps its trailing ``/``."""
    if not uri.startswith("gs://"):
        raise StorageError(f"{uri!r} is not a gs:// uri")
    bucket, _, path = uri[len("gs://"):].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} names no bucket")
    return bucket, path


def materialize(layout_: Layout, folder: Path) -> Path:
    """The artefact as a local folder (what the container sees as AIP_STORAGE_URI): built
    beside ``folder`` and renamed into place, so a folder that exists is complete."""
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, path in layout_.objects:
        target = partial / name
        if path is None:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if os.access(path, os.X_OK):
            target.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def _error(exc: Exception, bucket: str, what: str) -> StorageError:
    """One line, with a hint, for a failed Cloud Storage call."""
    from google.api_core import exceptions

    code = getattr(exc, "code", None)
    text = " ".join(str(getattr(exc, "message", "") or exc).split())[:300]
    if isinstance(exc, exceptions.NotFound):
        return StorageError(f"{what}: bucket gs://{bucket} does not exist (404)",
                            hint=f"create it: gcloud storage buckets create gs://{bucket} "
                                 "--location=REGION")
    if isinstance(exc, (exceptions.Forbidden, exceptions.Unauthorized)):
        return StorageError(f"{what}: access to gs://{bucket} denied ({code}: {text})",
                            hint=f"grant roles/storage.objectAdmin on gs://{bucket} to the "
                                 "account these credentials belong to")
    if isinstance(exc, exceptions.GoogleAPICallError):
        return StorageError(f"{what}: Cloud Storage answered {code}: {text}")
    return StorageError(f"{what}: cannot reach Cloud Storage ({type(exc).__name__}: {text})",
                        hint="check the network, or STORAGE_EMULATOR_HOST when set")


class _Counted:
    """A file read by an upload: ``advance(n)`` hears of each byte the first time it is read
    (a retried chunk is read again after a seek back, and not counted twice)."""

    def __init__(self, handle, advance: Callable[[int], None]):
        self._handle, self._advance, self._furthest = handle, advance, handle.tell()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        position = self._handle.tell()
        if position > self._furthest:
            self._advance(position - self._furthest)
            self._furthest = position
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


class Storage:
    """Cloud Storage through google-cloud-storage (anonymous against an emulator named by
    ``STORAGE_EMULATOR_HOST``). Every failure is a :class:`StorageError`."""

    def __init__(self, project: str | None):
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage

        try:
            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                self.client = storage.Client(project=project or "emulator",
                                             credentials=AnonymousCredentials())
            else:
                self.client = storage.Client(project=project)
        except DefaultCredentialsError:
            raise StorageError("no Google Cloud credentials found",
                               hint="run 'gcloud auth application-default login' or set "
                                    "GOOGLE_APPLICATION_CREDENTIALS") from None

    def _call(self, bucket: str, what: str, fn: Callable):
        from google.api_core.exceptions import GoogleAPICallError
        from google.auth.exceptions import GoogleAuthError
        from requests.exceptions import RequestException

        try:
            return fn()
        except (GoogleAPICallError, GoogleAuthError, RequestException) as exc:
            if isinstance(exc, GoogleAuthError):
                raise StorageError(f"{what}: Google Cloud credentials refused: {exc}",
                                   hint="run 'gcloud auth application-default login'") from None
            raise _error(exc, bucket, what) from None

    def _listing(self, uri: str) -> dict[str, int]:
        """Objects under ``uri`` (name relative to it → size); empty when the bucket is gone."""
        from google.api_core.exceptions import NotFound

        bucket, path = parse_uri(uri)

        def run():
            try:
                return {b.name[len(path):]: int(b.size or 0)
                        for b in self.client.list_blobs(bucket, prefix=path)}
            except NotFound:
                return {}

        return self._call(bucket, f"listing {uri}", run)

    def bucket_location(self, bucket: str) -> str | None:
        """The bucket's location (e.g. ``US-CENTRAL1``); None when there is no such bucket."""
        found = self._call(bucket, f"looking up gs://{bucket}",
                           lambda: self.client.lookup_bucket(bucket))
        return None if found is None else found.location

    def upload(self, layout_: Layout, uri: str,
               progress: Callable[[str], None]) -> tuple[int, int]:
        """Upload the objects missing under ``uri`` (same name and size: present), files
        streamed from disk; return ``(objects sent, bytes sent)``."""
        bucket_name, path = parse_uri(uri)
        present = self._listing(uri)
        missing = [(name, file) for name, file in layout_.objects
                   if present.get(name) != (0 if file is None else file.stat().st_size)]
        if not missing:
            return 0, 0
        bucket = self.client.bucket(bucket_name)
        total = sum(f.stat().st_size for _, f in missing if f is not None)
        moving = transfer(progress, f"  sending {len(missing)} of "
                                    f"{len(layout_.objects)} object(s) to {uri}", total)

        def one(item) -> int:
            name, file = item
            blob = bucket.blob(path + name, chunk_size=CHUNK)
            if file is None:
                blob.upload_from_string(b"", content_type="application/x-directory")
                return 0
            size = file.stat().st_size
            with open(file, "rb") as handle:
                blob.upload_from_file(_Counted(handle, moving.advance), size=size,
                                      content_type="application/octet-stream")
            return size

        def run() -> int:
            with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
                return sum(pool.map(one, missing))

        with moving:
            sent = self._call(bucket_name, f"uploading to {uri}", run)
        return len(missing), sent

    def delete(self, uri: str) -> int:
        """Delete every object under ``uri``; how many were (0 when gone already)."""
        from google.api_core.exceptions import NotFound

        bucket_name, path = parse_uri(uri)
        names = list(self._listing(uri))
        bucket = self.client.bucket(bucket_name)

        def one(name: str) -> int:
            try:
                bucket.blob(path + name).delete()
                return 1
            except NotFound:  # deleted meanwhile: done
                return 0

        def run() -> int:
            with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
                return sum(pool.map(one, names))

        return self._call(bucket_name, f"deleting {uri}", run) if names else 0

    def exists(self, uri: str) -> bool:
        """Whether any object is under ``uri``."""
        return bool(self._listing(uri))

    def download(self, uri: str, folder) -> Path:
        """The objects under ``uri`` into ``folder`` (placeholders become empty folders)."""
        bucket_name, path = parse_uri(uri)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = list(self._listing(uri))
        bucket = self.client.bucket(bucket_name)

        def one(name: str) -> None:
            target = (folder / name).resolve()
            if not target.is_relative_to(folder.resolve()):
                raise StorageError(f"object {path + name} would land outside {folder}")
            if name.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            bucket.blob(path + name).download_to_filename(str(target))

        def run() -> None:
            with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(one, names))

        self._call(bucket_name, f"downloading {uri}", run)
        return folder
