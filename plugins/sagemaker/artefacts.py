"""The artefacts SageMaker's Triton container reads, built the same way for S3 and for the twin.

Single-model: one ``model.tar.gz`` whose root is the repository (``<model>/config.pbtxt``...),
or the same files as an uncompressed S3 prefix. Multi-model: one ``<model>.tar.gz`` per
top-level model, holding the model folder and, for an ensemble, the folders of every model it
uses. Tars are reproducible (fixed owners, modes and times), hold regular files and folders only
(never a symlink: ``Repository.files`` yields a link's target), and are streamed: a repository is
never copied on disk. Keys are content addressed: the sha256 of a listing of every member's path,
size and content hash, so an unchanged repository maps to objects that already exist.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import struct
import tarfile
import threading
import zlib
from collections import deque
from pathlib import Path
from typing import BinaryIO, Iterable

#: bump when the archive layout changes, so old keys are not reused for a new layout
LAYOUT_VERSION = "1"
CHUNK = 4 << 20


@dataclasses.dataclass(frozen=True)
class Artefact:
    """One object SageMaker downloads: ``name`` is ``model.tar.gz`` or ``<model>.tar.gz``."""

    name: str
    #: (path inside the archive, file on disk), sorted; folders are derived from them
    members: tuple[tuple[str, Path], ...]
    #: folders to create even when empty (an ensemble's version folder often is)
    folders: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for _, path in self.members)


def single(repository) -> Artefact:
    return Artefact("model.tar.gz", tuple(repository.files()), _version_folders(
        repository, list(repository.models)))


def multi(repository) -> list[Artefact]:
    """One artefact per top-level model, with every model it uses (ensemble steps)."""
    files = list(repository.files())
    result = []
    for name in repository.top_level():
        wanted = repository.dependencies(name)
        members = tuple((rel, path) for rel, path in files if rel.split("/", 1)[0] in wanted)
        result.append(Artefact(f"{name}.tar.gz", members, _version_folders(repository, wanted)))
    return result


def _version_folders(repository, names: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(f"{name}/{version}" for name in names
                        for version in repository.models[name].versions))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def listing_digest(artefacts: Iterable[Artefact], layout: str) -> str:
    """sha256 of the content listing: layout, then every member's name, size and sha256."""
    digest = hashlib.sha256(f"triton-deployer sagemaker {LAYOUT_VERSION} {layout}\n".encode())
    for artefact in artefacts:
        digest.update(f"artefact {artefact.name}\n".encode())
        for folder in artefact.folders:
            digest.update(f"dir {folder}\n".encode())
        for rel, path in artefact.members:
            digest.update(f"file {rel} {path.stat().st_size} {file_digest(path)}\n".encode())
    return digest.hexdigest()


# -- gzip, compressed on every core, as one standard gzip member ---------------------------------

class ParallelGzip:
    """A write-only stream that gzips what it gets into ``sink`` using several threads.

    Each 4 MiB chunk is deflated on its own (zlib releases the GIL) and ends with a sync flush,
    so the chunks concatenate into one valid deflate stream (pigz's layout, without the shared
    dictionary): one ordinary gzip member that ``tar -xzf`` and every gzip reader accept.
    """

    def __init__(self, sink: BinaryIO, level: int = 6, workers: int | None = None):
        self._sink = sink
        self._level = level
        self._workers = max(1, workers or os.cpu_count() or 1)
        self._pool = concurrent.futures.ThreadPoolExecutor(self._workers)
        self._pending: deque = deque()
        self._buffer = bytearray()
        self._crc = 0
        self._size = 0
        self.compressed = 0
        #: bytes given to write() whose compressed form is already in ``sink``
        self.consumed = 0
        self._emit(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def _emit(self, data: bytes) -> None:
        self._sink.write(data)
        self.compressed += len(data)

    def _deflate(self, data: bytes) -> bytes:
        compressor = zlib.compressobj(self._level, zlib.DEFLATED, -15)
        return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

    def _submit(self, data: bytes) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._pending.append((len(data), self._pool.submit(self._deflate, data)))
        while len(self._pending) > self._workers * 2:
            self._emit_next()

    def _emit_next(self) -> None:
        size, future = self._pending.popleft()
        self._emit(future.result())
        self.consumed += size

    def write(self, data) -> int:
        self._buffer += data
        while len(self._buffer) >= CHUNK:
            self._submit(bytes(self._buffer[:CHUNK]))
            del self._buffer[:CHUNK]
        return len(data)

    def close(self) -> None:
        if self._buffer:
            self._submit(bytes(self._buffer))
            self._buffer.clear()
        while self._pending:
            self._emit_next()
        self._pool.shutdown()
        final = zlib.compressobj(self._level, zlib.DEFLATED, -15)
        self._emit(final.flush(zlib.Z_FINISH))  # an empty final block ends the stream
        self._emit(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))


def _info(name: str, *, size: int = 0, directory: bool = False, executable: bool = False):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory or executable else 0o644
    info.size = 0 if directory else size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar_gz(artefact: Artefact, sink: BinaryIO, workers: int | None = None,
                 gz: ParallelGzip | None = None) -> int:
    """Stream ``artefact`` as a tar.gz into ``sink`` (through ``gz`` when given, which must
    write to ``sink``); return the compressed size."""
    gz = gz or ParallelGzip(sink, workers=workers)
    folders = set(artefact.folders)
    for rel, _ in artefact.members:
        parts = rel.split("/")[:-1]
        folders.update("/".join(parts[:i + 1]) for i in range(len(parts)))
    with tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT,
                      bufsize=1 << 20) as tar:  # type: ignore[arg-type]
        for folder in sorted(folders):
            tar.addfile(_info(folder, directory=True))
        for rel, path in artefact.members:
            stat = path.stat()
            with open(path, "rb") as handle:
                tar.addfile(_info(rel, size=stat.st_size,
                                  executable=bool(stat.st_mode & 0o111)), handle)
    gz.close()
    return gz.compressed


class _Pipe:
    """A reader fed by a producer thread through an OS pipe (the upload reads while we pack)."""

    def __init__(self, produce):
        read_fd, write_fd = os.pipe()
        self.reader = os.fdopen(read_fd, "rb", buffering=1 << 20)
        self._writer = os.fdopen(write_fd, "wb", buffering=1 << 20)
        self.error: BaseException | None = None
        self.result = None
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True)
        self._thread.start()

    def _run(self, produce) -> None:
        try:
            self.result = produce(self._writer)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self.error = exc
        finally:
            try:
                self._writer.close()
            except OSError:
                pass

    def finish(self):
        self.reader.close()  # unblocks a producer stuck on a full pipe after a failed upload
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.result


class PackedMeter:
    """How much of an artefact's content has reached S3, for a progress bar in content bytes
    (the archive's size is known only at its end; its content's size is known at once).

    The upload reports compressed bytes sent, and the packer may run far ahead of it (the
    transfer buffers whole parts): the content sent is estimated as the compressed bytes sent
    times the tar bytes per compressed byte emitted so far, never more than ``total`` nor less
    than before. ``report(done)`` gets it when it grows; at the end the caller reports the whole.
    """

    def __init__(self, total: int, report):
        self.total, self.report = total, report
        self.gz: ParallelGzip | None = None
        self.sent = self.reported = 0
        self._lock = threading.Lock()

    def __call__(self, count: int) -> None:
        """boto3's upload Callback (called from its threads; negative on a retried part)."""
        with self._lock:
            self.sent = max(0, self.sent + count)
            gz = self.gz
            if gz is None or not gz.compressed:
                return
            ratio = gz.consumed / gz.compressed  # the ratio so far, not a count
            done = min(self.total, int(self.sent * ratio))
            if done > self.reported:
                self.reported = done
                self.report(done)


def upload_tar_gz(artefact: Artefact, s3, bucket: str, key: str, transfer_config,
                  meter: PackedMeter | None = None) -> int:
    """Pack ``artefact`` straight into a parallel multipart upload; return the bytes sent.
    ``meter`` (when given) follows the upload."""
    def pack(sink):
        gz = ParallelGzip(sink)
        if meter is not None:
            meter.gz = gz
        return write_tar_gz(artefact, sink, gz=gz)

    pipe = _Pipe(pack)
    try:
        s3.upload_fileobj(pipe.reader, bucket, key, Config=transfer_config,
                          ExtraArgs={"ContentType": "application/gzip"},
                          Callback=meter)
    except BaseException:
        # the upload's error is the cause; the packer then only sees its pipe closed
        with contextlib.suppress(Exception):
            pipe.finish()
        raise
    return pipe.finish()


def unpack(archive: Path, destination: Path) -> None:
    """Extract like the container does, refusing links and paths that leave ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"{archive.name}: {member.name} is not a file or folder "
                                 "(Failed to extract model data archive)")
        tar.extractall(destination, filter="data")
