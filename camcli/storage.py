"""Inputs and outputs that are URLs: object stores and web servers, through fsspec.

A URL (``s3://bucket/prefix/``, ``gs://…``, ``memory://…``, ``http(s)://host/img.jpg``) becomes
a :class:`Url`, which behaves like the few bits of :class:`pathlib.Path` the rest of camcli uses
(``name``, ``parent``, ``/``, ``with_name``), so output naming works the same for both. Plain
paths and ``file://`` URLs stay :class:`~pathlib.Path` and take the local code path unchanged.

This module owns, for URLs: listing (streamed, page by page: a prefix of a million keys is never
held in memory), reading an object's bytes, putting an object whole (one call with the complete
bytes: a reader never sees a partial object), and the object's version (size, ETag, modification
time) that ``--skip-existing`` compares. Backends come as extras; credentials and endpoints are
the backend's own (environment, config files), plus ``--storage-option KEY=VALUE``.

Every read is bounded: an object or web page by a byte limit (streamed, never held whole past
it), and a local file by the same limit, read only when it is a regular file
(:func:`read_file`: a FIFO or a device is refused, never waited on).

Secrets never reach the screen: :func:`redact` masks storage option values, URL passwords, the
values of query parameters named like secrets (signed URLs) and the usual credential variables
in any text camcli prints, where they stand (a password ``1`` masks that password, not every
``1`` of the text).

fsspec is imported only when a URL is used. Knows nothing of images or models.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from camcli.errors import InputError, UsageError
from camcli.limits import DEFAULT_READ_LIMIT, too_large

#: Threads fetching inputs (and putting outputs) when they are URLs: each request waits tens of
#: milliseconds on the network, so many run at once; local disks keep the CPU-bound pool.
IO_WORKERS = 32
#: Keys per S3 listing page (S3's maximum): a listing holds one page at a time.
S3_PAGE_KEYS = 1000

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: protocol → the extra that installs its backend.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN")
#: The environment variables the backends read for credentials, regions and endpoints:
#: botocore (s3://) and google-auth/gcsfs (gs://). A Ray run hands them to its workers
#: (:func:`backend_environment`). Those naming a file pass as the name: the file must be there.
BACKEND_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
    "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CA_BUNDLE",
    "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GOOGLE_OAUTH_ACCESS_TOKEN",
    "STORAGE_EMULATOR_HOST",
)
_secrets: set[str] = set()


# --------------------------------------------------------------------------- secrets


_SECRET_NAME = re.compile(r"key|secret|token|pass|cred|sig|auth", re.IGNORECASE)
#: Secrets also masked wherever they appear, not only at their place, are at least this long:
#: a short one would hit ordinary text (a password ``1`` must not mask every 1 of a message).
_MIN_SECRET_LENGTH = 8
_option_names: set[str] = set()
# The password of a URL's userinfo (``scheme://user:PASSWORD@host``).
_USERINFO_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@?#]*:)[^@/\s?#]*@")
# A URL's query string (after ``?``, up to a fragment or whitespace).
_QUERY = re.compile(r"(://[^\s?#]*\?)([^\s#]*)")


def _remember_secret(value, name: str = "") -> None:
    """Mask the value of option ``name`` from now on: where it follows its name (``name=…``,
    ``'name': …``), and anywhere when it is long enough not to mask ordinary text. A dict
    value's items are options too (``client_kwargs={"aws_secret_access_key": …}``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _remember_secret(item, str(key))
    if name:
        _option_names.add(name)
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) >= _MIN_SECRET_LENGTH:
        _secrets.add(text)


def _mask_query(match: re.Match) -> str:
    """A URL's query with the values of the parameters named like secrets masked."""
    parts = re.split(r"([&;])", match.group(2))
    for i, part in enumerate(parts):
        name, equals, value = part.partition("=")
        if equals and value and _SECRET_NAME.search(name):
            parts[i] = f"{name}=***"
    return match.group(1) + "".join(parts)


def _mask_option_values(text: str) -> str:
    """``text`` with the value after each storage option's name (``name=…``, ``"name": …``)
    masked."""
    for name in sorted(_option_names, key=len, reverse=True):
        quoted = re.escape(name)
        text = re.sub(rf"""(\b{quoted}=|['"]{quoted}['"]\s*:\s*)(?:(['"]).*?\2|[^\s,&;}})]+)""",
                      lambda m: f"{m.group(1)}{m.group(2) or ''}***{m.group(2) or ''}", text)
    return text


def redact(text: str) -> str:
    """``text`` with secrets replaced by ``***`` where they stand — URL passwords, the values
    of query parameters named like secrets (``X-Amz-Signature``, ``token``, ``sig``…) and of
    storage options — and, anywhere, credential variables, storage option values and URL
    passwords of at least :data:`_MIN_SECRET_LENGTH` characters."""
    text = str(text)
    for name in _SECRET_ENV:
        if len(os.environ.get(name, "")) >= _MIN_SECRET_LENGTH:
            text = text.replace(os.environ[name], "***")
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _USERINFO_PASSWORD.sub(r"\1***@", text)
    return _mask_option_values(_QUERY.sub(_mask_query, text))


class Environment(dict):
    """Environment variables that may hold secrets: a dict whose repr never shows a value."""

    def __repr__(self) -> str:
        return f"Environment({', '.join(f'{k}=***' for k in self)})"


def backend_environment() -> Environment:
    """The :data:`BACKEND_ENV` variables this process has: what a worker elsewhere needs to
    reach URLs as this process would."""
    return Environment({name: os.environ[name] for name in BACKEND_ENV if name in os.environ})


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class StorageOptions:
    """``--storage-option KEY=VALUE`` pairs, passed to every URL backend of a run. Values are
    JSON when they parse (``anon=true``, ``client_kwargs={"region_name": "eu-west-1"}``),
    text otherwise. The repr never shows a value."""

    items: tuple[tuple[str, object], ...] = ()

    @classmethod
    def parse(cls, texts) -> StorageOptions:
        items = []
        for text in texts or ():
            key, sep, raw = str(text).partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--storage-option wants KEY=VALUE, not {key.strip()!r}=…")
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
            _remember_secret(value, key)
            items.append((key.strip(), value))
        return cls(tuple(items))

    def as_dict(self) -> dict:
        return dict(self.items)

    def __repr__(self) -> str:
        return f"StorageOptions({', '.join(f'{k}=***' for k, _ in self.items)})"


NO_OPTIONS = StorageOptions()


# --------------------------------------------------------------------------- locations


def is_url(location) -> bool:
    """True for a :class:`Url`, or text naming one (``file://`` too)."""
    return isinstance(location, Url) or (
        isinstance(location, str) and _URL.match(location) is not None
    )


def location(text, options: StorageOptions = NO_OPTIONS):
    """``text`` as a :class:`Url`, or a :class:`~pathlib.Path` for plain and ``file://``
    paths; ``None`` stays ``None``."""
    if text is None or isinstance(text, (Path, Url)):
        return text
    text = str(text)
    if not is_url(text):
        return Path(text)
    protocol = _URL.match(text).group(1).lower()
    if protocol in ("file", "local"):
        return Path(urlsplit(text).path or "/")
    split = urlsplit(text)
    if split.password:
        _remember_secret(split.password, "password")
    return Url(text, protocol, options)


@dataclass(frozen=True)
class Url:
    """An object or prefix on a remote store; ``str()`` is safe to print (redacted)."""

    text: str  # the URL as given (may hold credentials: never print it, print str(url))
    protocol: str
    options: StorageOptions = field(default=NO_OPTIONS, compare=False, repr=False)
    info: dict | None = field(default=None, compare=False, repr=False)  # from the listing

    def __str__(self) -> str:
        return redact(self.text)

    def __repr__(self) -> str:
        return f"Url({str(self)!r})"

    def _derived(self, text: str) -> Url:
        return Url(text, self.protocol, self.options)

    @property
    def _root(self) -> str:  # scheme://netloc
        split = urlsplit(self.text)
        return f"{split.scheme}://{split.netloc}"

    @property
    def name(self) -> str:
        return PurePosixPath(urlsplit(self.text).path).name

    @property
    def parent(self) -> Url:
        path = urlsplit(self.text).path.rstrip("/")
        return self._derived(self._root + path.rpartition("/")[0])

    def __truediv__(self, other) -> Url:
        tail = str(PurePosixPath(str(other))).lstrip("/")
        return self._derived(self.text.rstrip("/") + "/" + tail)

    def with_name(self, name: str) -> Url:
        return self.parent / name

    def key(self) -> str:
        """``bucket/key`` (or ``host/path``): mirrored under a URL or folder ``--out-dir``."""
        split = urlsplit(self.text)
        return (split.hostname or "") + split.path

    @property
    def is_prefix(self) -> bool:
        return self.text.endswith("/") or not urlsplit(self.text).path.strip("/")

    def with_info(self, info: dict) -> Url:
        return Url(self.text, self.protocol, self.options, info)


# --------------------------------------------------------------------------- backends


def filesystem(url: Url):
    """The fsspec filesystem for ``url`` (cached by fsspec), or a UsageError naming the extra
    to install. S3's endpoint comes from ``AWS_ENDPOINT_URL`` (botocore reads it) or
    ``--storage-option endpoint_url=…``."""
    import fsspec

    try:
        return fsspec.filesystem(url.protocol, **url.options.as_dict())
    except ImportError as exc:
        extra = EXTRAS.get(url.protocol)
        hint = f"pip install 'camcli[{extra}]'" if extra else redact(str(exc))
        raise UsageError(f"{url}: no backend for {url.protocol}:// installed: {hint}") from None
    except ValueError as exc:
        if "protocol" in str(exc).lower():
            raise UsageError(f"{url}: unknown URL scheme {url.protocol}://") from None
        raise UsageError(f"{url}: bad storage options: {redact(str(exc))}") from None
    except TypeError as exc:
        raise UsageError(f"{url}: bad storage options: {redact(str(exc))}") from None


def _reason(exc: BaseException) -> str:
    """One line saying why a request failed, with no secret in it."""
    if isinstance(exc, FileNotFoundError):
        return "not found (no such bucket, key or page)"
    if isinstance(exc, PermissionError):
        return "access denied"
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ""
    if isinstance(status, int):
        return redact(f"HTTP {status} {detail}".strip())
    return redact(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)


# --------------------------------------------------------------------------- listing


def expand(url: Url, recursive: bool, suffixes: frozenset[str]) -> Iterator[Url]:
    """The objects ``url`` names: itself, those under a prefix whose name ends in one of
    ``suffixes`` (all levels with ``recursive``; a prefix behaves like a folder) or the matches
    of a glob pattern, streamed in key order. Raises UsageError when a prefix cannot be listed."""
    from fsspec.utils import glob_translate

    if url.protocol in ("http", "https"):
        yield url
        return
    fs = filesystem(url)
    if _has_magic(url.text):
        root, pattern = _split_glob(url)
        matcher = re.compile(glob_translate(fs._strip_protocol(url.text)))
        deep = "**" in pattern or "/" in pattern
        for item in _iter_files(fs, root, deep):
            if matcher.match(fs._strip_protocol(item.text)):
                yield item
    elif url.is_prefix or _is_dir(fs, url):
        for item in _iter_files(fs, url, recursive):
            if PurePosixPath(item.name).suffix.lower() in suffixes:
                yield item
    else:
        yield url


def check_listable(url: Url) -> None:
    """Fail with a UsageError (exit 2) now when ``url`` is a prefix or pattern that cannot be
    listed (missing bucket, access denied, no network): before any model is loaded."""
    if url.protocol in ("http", "https"):
        filesystem(url)
        return
    root = _split_glob(url)[0] if _has_magic(url.text) else url
    fs = filesystem(root)
    if root.is_prefix or _is_dir(fs, root):
        next(_iter_chunks(fs, root, False), None)


def preflight(paths, out_dir, options: StorageOptions = NO_OPTIONS) -> None:
    """Check a run's URLs before any model is loaded (each failure a UsageError, exit 2): their
    backends are installed, every prefix or pattern can be listed, and outputs have somewhere
    to go (a web server is read-only)."""
    out_dir = location(out_dir, options)
    if isinstance(out_dir, Url):
        if out_dir.protocol in ("http", "https"):
            raise UsageError(f"--out-dir {out_dir}: web servers are read-only")
        filesystem(out_dir)
    for text in paths:
        url = location(text, options) if is_url(text) else None
        if not isinstance(url, Url):
            continue
        if url.protocol in ("http", "https") and out_dir is None:
            raise UsageError(f"{url}: outputs cannot go beside a web page's image: give --out-dir")
        check_listable(url)


def _has_magic(text: str) -> bool:
    return re.search(r"[*?\[]", urlsplit(text).path) is not None


def _split_glob(url: Url) -> tuple[Url, str]:
    """``(prefix before the first wildcard's folder, the rest)`` of a glob URL."""
    root, path = url._root, urlsplit(url.text).path
    parts = path.split("/")
    first = next(i for i, part in enumerate(parts) if _has_magic("x://h/" + part))
    return url._derived(root + "/".join(parts[:first]) + "/"), "/".join(parts[first:])


def _is_dir(fs, url: Url) -> bool:
    try:
        return bool(fs.isdir(url.text))
    except Exception as exc:  # isdir raising (access denied) is a listing failure
        raise UsageError(f"{url}: cannot list: {_reason(exc)}") from None


def _iter_files(fs, prefix: Url, recursive: bool) -> Iterator[Url]:
    for chunk in _iter_chunks(fs, prefix, recursive):
        yield from chunk


def _iter_chunks(fs, prefix: Url, recursive: bool) -> Iterator[list[Url]]:
    """Lists of objects under ``prefix``, in key order, one listing page at a time."""
    try:
        if hasattr(fs, "_call_s3"):  # s3fs: ListObjectsV2 pages, fetched as they are consumed
            yield from _s3_pages(fs, prefix, recursive)
        else:  # any other backend: one folder level at a time
            yield from _walk(fs, prefix, recursive)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{prefix}: cannot list: {_reason(exc)}") from None


def _s3_pages(fs, prefix: Url, recursive: bool) -> Iterator[list[Url]]:
    """s3fs's own listings (``find``, ``ls``) hold every key before returning; this asks for
    one page of :data:`S3_PAGE_KEYS` keys at a time, through s3fs's retrying request call."""
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(prefix.text)
    request = {"Bucket": bucket, "Prefix": key.rstrip("/") + "/" if key else "",
               "MaxKeys": S3_PAGE_KEYS}
    if not recursive:
        request["Delimiter"] = "/"
    scheme = urlsplit(prefix.text).scheme
    while True:
        page = sync(fs.loop, fs._call_s3, "list_objects_v2", **request)
        yield [
            prefix._derived(f"{scheme}://{bucket}/{item['Key']}").with_info(
                {**item, "size": item["Size"]}
            )
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")
        ]
        if not page.get("IsTruncated"):
            return
        request["ContinuationToken"] = page["NextContinuationToken"]


def _walk(fs, prefix: Url, recursive: bool) -> Iterator[list[Url]]:
    entries = sorted(fs.ls(prefix.text.rstrip("/") or prefix.text, detail=True),
                     key=lambda info: info["name"])
    files, folders = [], []
    for info in entries:
        child = prefix / PurePosixPath(info["name"]).name
        (folders if info.get("type") == "directory" else files).append(child.with_info(info))
    yield files
    if recursive:
        for folder in folders:
            yield from _walk(fs, folder, recursive)


# --------------------------------------------------------------------------- objects


#: Bytes asked of a web server per read while an http(s) input streams in.
HTTP_CHUNK = 1 << 16


def read_bytes(url: Url, limit: int = DEFAULT_READ_LIMIT, stop=None) -> bytes:
    """The object's bytes (after the backend's own retries), or an InputError saying why.

    At most ``limit`` bytes are fetched: more is an InputError. An object the listing says is
    larger is refused without a request; an object store is asked for a byte range; a web
    page is streamed and dropped as soon as it passes the limit (an endless body included),
    or as soon as ``stop`` (a :class:`threading.Event`: SIGINT/SIGTERM) is set.
    """
    size = (url.info or {}).get("size")
    if isinstance(size, int) and size > limit:
        raise InputError(url, too_large(limit))
    try:
        fs = filesystem(url)
        if url.protocol in ("http", "https"):
            data = _stream_http(fs, url, limit, stop)
        else:
            data = fs.cat_file(url.text, start=0, end=limit + 1)
    except (UsageError, InputError):
        raise
    except Exception as exc:
        if not _unsatisfiable(exc):
            raise InputError(url, f"cannot read: {_reason(exc)}") from exc
        data = b""  # S3 answers a byte range of an empty object with 416
    if data is None or len(data) > limit:
        raise InputError(url, too_large(limit))
    if not data:
        raise InputError(url, "empty object (0 bytes)")
    return data


def _unsatisfiable(exc: BaseException) -> bool:
    """True for a store's "416 range not satisfiable", its answer for an empty object."""
    text = str(exc).lower()
    return getattr(exc, "status", None) == 416 or "range is not satisfiable" in text or (
        "invalidrange" in text)


#: How often a read waiting on a web server looks at the run's stop event (seconds).
STOP_POLL_SECONDS = 0.1


def _stream_http(fs, url: Url, limit: int, stop=None) -> bytes | None:
    """GET ``url`` through fsspec's session, reading at most ``limit`` + 1 bytes: the bytes,
    or None when the body is longer (the connection is then dropped). A server that stalls
    holds the read only until ``stop`` is set: then the request is cancelled."""
    import asyncio
    import concurrent.futures

    async def get():
        session = await fs.set_session()
        async with session.get(fs.encode_url(url.text), **fs.kwargs) as response:
            if response.status == 404:
                raise FileNotFoundError(url.text)
            response.raise_for_status()
            if (response.content_length or 0) > limit:
                return None
            data = bytearray()
            async for chunk in response.content.iter_chunked(HTTP_CHUNK):
                data += chunk
                if len(data) > limit:
                    response.close()
                    return None
            return bytes(data)

    pending = asyncio.run_coroutine_threadsafe(get(), fs.loop)
    while not concurrent.futures.wait([pending], timeout=STOP_POLL_SECONDS).done:
        if stop is not None and stop.is_set():
            pending.cancel()  # closes the connection in fsspec's event loop
            raise InputError(url, "interrupted while reading (the run was stopped)")
    return pending.result()


def exists(url: Url) -> bool:
    try:
        return bool(filesystem(url).exists(url.text))
    except Exception:
        return False


def version(url: Url) -> dict:
    """What identifies this version of an object: ``size``, ``etag`` and ``modified`` (epoch
    seconds), each when the backend knows it. From the listing when the URL came from one."""
    info = url.info
    if info is None:
        try:
            info = filesystem(url).info(url.text)
        except Exception:  # unknown version: --skip-existing will recompute this input
            info = {}
    modified = (
        info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("created")
    )
    if hasattr(modified, "timestamp"):
        modified = modified.timestamp()
    elif isinstance(modified, str):
        from datetime import datetime

        modified = datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp()
    etag = info.get("ETag") or info.get("etag")
    return {
        "size": info.get("size"),
        "etag": etag.strip('"') if isinstance(etag, str) else None,
        "modified": modified,
    }


def same_version(recorded: dict | None, current: dict) -> bool:
    """True when ``current`` is the object version ``recorded`` describes: same size and same
    ETag (or, when there is no ETag, the same modification time)."""
    if not isinstance(recorded, dict) or recorded.get("size") != current.get("size"):
        return False
    if recorded.get("etag") and current.get("etag"):
        return recorded["etag"] == current["etag"]
    if recorded.get("modified") is not None and current.get("modified") is not None:
        return recorded["modified"] == current["modified"]
    return False


def put(url: Url, data: bytes, protect=None, replaceable: bool = True) -> None:
    """Write ``data`` to ``url`` in one call with the complete bytes: the object appears
    whole or not at all. Never overwrites ``protect`` (the input), nor, unless
    ``replaceable``, an existing object (its name is not one of camcli's: it may be an input)."""
    if url == protect or (isinstance(protect, Url) and url.text == protect.text):
        raise OSError(f"refusing to overwrite the input {protect}")
    if url.protocol in ("http", "https"):
        raise OSError(f"cannot write to {url}: web servers are read-only; give --out-dir")
    if not replaceable and exists(url):
        raise OSError(f"refusing to overwrite {url}: not a camcli output name, may be an input")
    fs = filesystem(url)
    try:
        fs.pipe_file(url.text, data)
    except Exception as exc:
        raise OSError(f"cannot write {url}: {_reason(exc)}") from exc


# --------------------------------------------------------------------------- local files


_NOT_REGULAR = {
    stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
}


def _check_regular(path: Path, status: os.stat_result, limit: int) -> None:
    """InputError unless ``status`` is a regular file of at most ``limit`` bytes."""
    if stat.S_ISDIR(status.st_mode):
        raise InputError(path, "is a directory, not an image")
    if not stat.S_ISREG(status.st_mode):
        kind = _NOT_REGULAR.get(stat.S_IFMT(status.st_mode), "an unknown kind of file")
        raise InputError(path, f"not a regular file but {kind}: not read")
    if status.st_size > limit:
        raise InputError(path, too_large(limit))


def read_file(path: Path, limit: int = DEFAULT_READ_LIMIT) -> bytes:
    """A local file's bytes, at most ``limit`` of them (more: an InputError, nothing kept).
    Only regular files are read: a FIFO, a device (``/dev/zero``) or a socket, even behind a
    symlink, fails at once with what it is, so nothing waits on a pipe or reads for ever."""
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise InputError(path, "no such file") from exc
    except PermissionError as exc:
        raise InputError(path, "permission denied") from exc
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        _check_regular(path, os.fstat(fd), limit)
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read(os.fstat(fd).st_size + 1)
            while len(data) <= limit:  # more than fstat said: the file grew meanwhile
                more = handle.read(min(1 << 20, limit + 1 - len(data)))
                if not more:
                    break
                data += more
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputError(path, too_large(limit))
    if not data:
        raise InputError(path, "empty file (0 bytes)")
    return data
