"""The files orion reads and writes where Flink keeps checkpoints and savepoints: the
newest retained checkpoint of a --checkpoint-dir, and the job's lineage id beside it
(orion.flink.cluster). A directory on this machine (a path or a file: URL) is read
with Python's own file functions; any other URL (gs://, s3://, hdfs://) through Flink's
own file systems (org.apache.flink.core.fs) in this client's Java gateway, so whatever
URL the cluster checkpoints to, orion reads the same way Flink does.

A scheme this Flink installation has no file system for fails with what Flink says to
install: for gs://, the flink-gs-fs-hadoop plugin in a sub-directory of the plugins
directory (FLINK_PLUGINS_DIR), on the machine that submits the job as on the cluster.

    python -c "from orion.flink.files import files_for; print(files_for('/tmp').children('/tmp'))"
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit


class FilesError(RuntimeError):
    """A file system the checkpoint files cannot be reached through."""


class Files(Protocol):
    def join(self, base: str, *names: str) -> str: ...

    def parent(self, location: str) -> str: ...

    def name(self, location: str) -> str: ...

    def is_file(self, location: str) -> bool: ...

    def is_dir(self, location: str) -> bool: ...

    def children(self, location: str) -> list[tuple[str, bool]]: ...  # (name, is a directory)

    def modified(self, location: str) -> float: ...  # seconds since the epoch

    def read_text(self, location: str) -> str | None: ...  # None: no such file

    def write_text(self, location: str, text: str) -> None: ...  # parents created as needed


def is_local(location: str) -> bool:
    """A path on this machine, or a file: URL."""
    return urlsplit(location).scheme in ("", "file")


def local_path(location: str) -> Path:
    """A local location as a Path: Flink names a local file `file:/PATH` (one slash), a
    URI is `file:///PATH`."""
    return Path(urlsplit(location).path if urlsplit(location).scheme else location)


class LocalFiles:
    """This machine's files, locations as paths."""

    def join(self, base: str, *names: str) -> str:
        return str(Path(base, *names))

    def parent(self, location: str) -> str:
        return str(Path(location).parent)

    def name(self, location: str) -> str:
        return Path(location).name

    def is_file(self, location: str) -> bool:
        return Path(location).is_file()

    def is_dir(self, location: str) -> bool:
        return Path(location).is_dir()

    def children(self, location: str) -> list[tuple[str, bool]]:
        folder = Path(location)
        if not folder.is_dir():
            return []
        return sorted((child.name, child.is_dir()) for child in folder.iterdir())

    def modified(self, location: str) -> float:
        return Path(location).stat().st_mtime

    def read_text(self, location: str) -> str | None:
        path = Path(location)
        # A marker that is not text reads as no lineage (lineage_of checks its form), not an error.
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None

    def write_text(self, location: str, text: str) -> None:
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


class FlinkFiles:
    """Any URL Flink can read, through org.apache.flink.core.fs.FileSystem in PyFlink's
    Java gateway (started if it is not yet). Locations are URLs; names are joined with
    '/'. A scheme without a file system loads Flink's plugins (FLINK_PLUGINS_DIR) once
    and tries again, as Flink's own command line does."""

    def __init__(self, gateway=None):
        from pyflink.java_gateway import get_gateway

        self.jvm = (gateway or get_gateway()).jvm
        self.fs = self.jvm.org.apache.flink.core.fs
        self.plugins_loaded = False

    def _file_system(self, location: str):
        from py4j.protocol import Py4JJavaError

        path = self.fs.Path(location)
        try:
            return path, path.getFileSystem()
        except Py4JJavaError as err:
            if "UnsupportedFileSystemSchemeException" not in str(err.java_exception.getClass().getName()):
                raise FilesError(f"cannot reach {location}: {err.java_exception.getMessage()}") from err
            if self.plugins_loaded:
                raise FilesError(f"Flink has no file system for {location}: {err.java_exception.getMessage()}") from err
        self._load_plugins()
        return self._file_system(location)

    def _load_plugins(self) -> None:
        import os

        jvm = self.jvm
        configuration = (jvm.org.apache.flink.configuration.GlobalConfiguration.loadConfiguration()
                         if os.environ.get("FLINK_CONF_DIR") else jvm.org.apache.flink.configuration.Configuration())
        plugins = jvm.org.apache.flink.core.plugin.PluginUtils.createPluginManagerFromRootFolder(configuration)
        self.fs.FileSystem.initialize(configuration, plugins)
        self.plugins_loaded = True

    def _call(self, location: str, call):
        from py4j.protocol import Py4JJavaError

        path, file_system = self._file_system(location)
        try:
            return call(path, file_system)
        except Py4JJavaError as err:
            raise FilesError(f"cannot reach {location}: {err.java_exception.getMessage()}") from err

    def join(self, base: str, *names: str) -> str:
        return "/".join((base.rstrip("/"), *names))

    def parent(self, location: str) -> str:
        return location.rstrip("/").rpartition("/")[0]

    def name(self, location: str) -> str:
        return location.rstrip("/").rpartition("/")[2]

    def is_file(self, location: str) -> bool:
        return self._call(location, lambda path, fs: fs.exists(path) and not fs.getFileStatus(path).isDir())

    def is_dir(self, location: str) -> bool:
        return self._call(location, lambda path, fs: fs.exists(path) and fs.getFileStatus(path).isDir())

    def children(self, location: str) -> list[tuple[str, bool]]:
        def listed(path, fs):
            found = fs.listStatus(path) if fs.exists(path) else None  # null for no such directory
            return sorted((status.getPath().getName(), bool(status.isDir())) for status in (found or ()))

        return self._call(location, listed)

    def modified(self, location: str) -> float:
        return self._call(location, lambda path, fs: fs.getFileStatus(path).getModificationTime() / 1000)

    def read_text(self, location: str) -> str | None:
        def read(path, fs):
            if not fs.exists(path):
                return None
            stream = fs.open(path)
            try:
                return bytes(stream.readAllBytes()).decode("utf-8", errors="replace")
            finally:
                stream.close()

        return self._call(location, read)

    def write_text(self, location: str, text: str) -> None:
        def write(path, fs):
            stream = fs.create(path, getattr(self.fs, "FileSystem$WriteMode").OVERWRITE)
            try:
                stream.write(text.encode("utf-8"))
            finally:
                stream.close()

        self._call(location, write)


def files_for(location: str) -> Files:
    """The files of `location`: this machine's for a path or file: URL, else Flink's."""
    return LocalFiles() if is_local(location) else FlinkFiles()
