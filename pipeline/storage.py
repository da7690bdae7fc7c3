"""Every location a run reads or writes, by URL: the one module that touches run data.

A location is a plain path, `file://…`, `s3://bucket/prefix`, `gs://bucket/prefix` (gcsfs) or
`http(s)://…` (read only: shards served by a web server). Everything goes through fsspec, so
a local path is just the `file` case; nothing assumes two processes share a disk except
through here.

Credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, …), never from a URL, so a URL is safe to
print: every error is one line naming the URL and what went wrong.

Object stores have no rename. `write_bytes` publishes one object whole (a local file goes
through a temporary name, fsync and rename); a directory of several objects counts as written
only once its commit marker, written last, exists (see pipeline/checkpoint.py).

Transient faults (a dropped connection, a 5xx) are retried with backoff; a missing object,
a missing bucket or refused credentials are not.
"""
from __future__ import annotations

import os
import posixpath
import time
import urllib.parse
from typing import Callable, TypeVar

from pipeline.errors import GantryError

SCHEMES = ("file", "s3", "gs", "gcs", "http", "https")
READ_ONLY = ("http", "https")
RETRIES = 2
BACKOFF_S = 0.5

T = TypeVar("T")


def scheme(url: str) -> str:
    """'file' for plain paths."""
    parsed = urllib.parse.urlsplit(str(url))
    return parsed.scheme.lower() if len(parsed.scheme) > 1 else "file"  # 'c:' is not a scheme


def is_local(url: str) -> bool:
    return scheme(url) == "file"


def local_path(url: str) -> str:
    """The file-system path of a local location."""
    url = str(url)
    return url[len("file://"):] if url.startswith("file://") else url


def join(url: str, *parts: str) -> str:
    url = str(url)
    if is_local(url):
        return os.path.join(url, *parts)
    return posixpath.join(url.rstrip("/"), *parts)


def basename(url: str) -> str:
    return posixpath.basename(str(url).rstrip("/"))


def parent(url: str) -> str:
    url = str(url).rstrip("/")
    return (os.path.dirname(url) or ".") if is_local(url) else posixpath.dirname(url)


def check(url: str, write: bool = False) -> None:
    """Refuse a location gantry cannot use, before any work starts."""
    s = scheme(url)
    if s not in SCHEMES:
        raise GantryError(f"{url}: unknown storage scheme '{s}://' (use a path, file://, s3://, gs:// or http(s)://)")
    if urllib.parse.urlsplit(str(url)).username:
        raise GantryError(f"{scheme(url)}:// location with credentials in it: pass them in the environment, "
                          f"not the URL")
    if write and s in READ_ONLY:
        raise GantryError(f"{url}: {s}:// locations are read only; write to a path, s3:// or gs://")


class StorageError(GantryError):
    """`url: what: reason`, one line; `reason` alone for callers that name the URL themselves."""

    def __init__(self, url: str, what: str, reason: str):
        super().__init__(f"{url}: {what}: {reason}")
        self.url, self.reason = url, reason


def filesystem(url: str):
    """(fsspec file system, path inside it) for `url`."""
    import fsspec

    check(url)
    options = {}
    if scheme(url) == "s3" and os.environ.get("AWS_ENDPOINT_URL"):
        # Named here, not left to botocore, so that fsspec's cache of file systems is keyed
        # by the endpoint: a process whose endpoint changes never reuses a client of the old one.
        options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    try:
        return fsspec.core.url_to_fs(str(url), **options)
    except ImportError as e:  # s3fs / gcsfs are extras
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme(url), scheme(url))
        raise GantryError(f"{url}: {scheme(url)}:// needs an extra package: pip install 'gantry[{extra}]' "
                          f"({e})") from None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _permanent(e: BaseException) -> bool:
    return isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                          FileExistsError, ValueError, GantryError))


def _call(url: str, what: str, fn: Callable[[], T], retries: int = RETRIES) -> T:
    """fn(), retried with exponential backoff on transient faults; one-line GantryError else."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as e:
            if isinstance(e, GantryError):
                raise
            if _permanent(e) or attempt == retries:
                gave_up = "" if _permanent(e) else f" (after {retries + 1} tries)"
                found = "not found: " if isinstance(e, FileNotFoundError) else ""
                raise StorageError(url, what, f"{found}{_reason(e)}{gave_up}") from None
            time.sleep(BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return _call(url, "cannot read", lambda: fs.cat_file(path))


def write_bytes(url: str, data: bytes) -> None:
    """Publish `data` at `url` whole: a reader sees the old object or the new one, never part."""
    check(url, write=True)
    if is_local(url):
        _write_local(local_path(url), data)
        return
    fs, path = filesystem(url)
    _call(url, "cannot write", lambda: fs.pipe_file(path, data))


def _write_local(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return _call(url, "cannot look up", lambda: fs.exists(path))


def list_names(url: str) -> list[str]:
    """Names of the entries directly under `url`, sorted; [] when there is nothing there."""
    fs, path = filesystem(url)

    def ls():
        try:
            return fs.ls(path, detail=False, refresh=True) if not is_local(url) else fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
    return sorted(basename(p) for p in _call(url, "cannot list", ls) if basename(p))


def remove(url: str) -> None:
    """Remove a file or a whole directory; nothing there is fine."""
    fs, path = filesystem(url)

    def rm():
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
    _call(url, "cannot remove", rm)


def open_read(url: str):
    """A binary file object streaming `url` (for data too large to hold whole)."""
    fs, path = filesystem(url)
    return _call(url, "cannot open", lambda: fs.open(path, "rb"))


def download(url: str, dest: str) -> None:
    """Copy a file, or a directory's whole tree, at `url` to the local path `dest`."""
    fs, path = filesystem(url)
    _call(url, "cannot download", lambda: fs.get(path, dest, recursive=True))


def ensure_dir(url: str) -> None:
    """Create a local directory; object stores have none to create, but their bucket must
    exist and take our credentials, which this checks before any work starts."""
    check(url, write=True)
    if is_local(url):
        os.makedirs(local_path(url), exist_ok=True)
        return
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    _call(url, f"bucket '{bucket}' is not usable", lambda: fs.ls(bucket, detail=False), retries=1)
