"""The shared image cache: where an image lives in a bucket or a folder, and how to reach it.

A cache is an object store (an S3-compatible bucket, or a plain folder) that every machine
running the same manifests shares, so that no image is paid for twice. This module knows
the layout, opens the store from a URL, checks it before a run sends anything, and lists
what it holds; verifying and moving images is `imagebatch.running.cache`'s part.

Layout, under the URL's prefix::

    v1/<backend-id>/<key[:2]>/<key>.<sha256>.<ext>

`key` is the job's content key (the SHA-256 of the exact request body), `backend-id` a
path-safe form of the backend name (`local` for the embedded server, else the base URL's
host and path plus a short hash of the whole name: never a credential), and `sha256` the
SHA-256 of the object's bytes, so the hash is recorded with the object itself and needs no
second object to keep in step with it. Objects are written once (a conditional put that
fails when the name exists) and never changed; two machines writing the same image write
the same name, and two different images of one key (a hosted service need not be
deterministic) both stand, each whole. A put is atomic on S3 and, in a folder, a staging
file renamed into place: no partial object ever carries a final name (a staging file's name
does not parse as one, so a listing skips it).

Claims, beside the images (`claims/<backend-id>/<key[:2]>/<key>.<generation>.json`): a run
about to send a job's request first claims it, so that two runs at once on one cache pay
for each image once (`imagebatch.running.claims` uses them). A claim is a small JSON object
(the claiming run's id and when the claim expires, nothing secret), made with the same
create-only put as an image. Taking over a lapsed claim creates the next generation rather
than replacing it, so that of two runs taking over at once only one succeeds: stores have
no portable compare-and-swap (a folder has none), but every store we support has
create-only puts. Claims are not images: listings of images never see them.

The library is obstore (the Rust `object_store` crate's Python binding): one small wheel
with no Python dependencies, async calls, conditional puts on S3 and on local folders
alike, and S3 / GCS / Azure / local behind one interface.

Checks and listings use obstore's synchronous calls (on a Python thread of ours when an
event loop is running), never its async ones: an async call is completed by a thread of
obstore's own runtime, which calls into the event loop after the result is handed over. A
command that ends right after such a call (`status --cache`, `plan`, `diff`: one listing,
then exit) lets the interpreter shut down while that thread still runs Python; the thread
is then ended from inside Rust code and the process aborts (SIGABRT, exit 134) after its
output was printed. A synchronous call runs on the thread that asked and leaves nothing
behind. Transfers (`get`, `put`, `delete`) stay async: only a run, `pull` and `push` make
them, inside an event loop that goes on long after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import ImagebatchError
from ..planning.config import LOCAL_BACKEND
from ..planning.plan import Job

#: The environment variable that sets the cache for every command that takes --cache.
CACHE_VARIABLE = "IMAGEBATCH_CACHE"
LAYOUT = "v1"  # the first path part: a later layout gets a new one, old objects stay readable
CLAIMS = "claims"  # the first path part of claims: beside the images, never listed with them
#: The environment variable that sets how long a claim lasts unless renewed (seconds).
LEASE_VARIABLE = "IMAGEBATCH_CLAIM_LEASE"
LEASE = 300.0  # five minutes: many times a request's timeout, short enough to wait out

# What a store says when it refuses the credentials (or finds none): S3's error codes, an
# HTTP 401/403 (not a port or size that merely contains the digits), a credential error.
_REFUSED = re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|ExpiredToken|"
                      r"InvalidToken|(?<![\d:])40[13](?!\d)|[Cc]redential")
_NAME = re.compile(r"^([0-9a-f]{64})\.([0-9a-f]{64})\.(png|jpg|webp)$")
# The user:password@ of any URL in a text (up to the last @ before the path): obstore's
# error texts carry the URL of the request, and so the endpoint's userinfo if it had one.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#]*@")
# The variables that name an S3-compatible endpoint, the first one set wins.
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_CLAIM = re.compile(r"^([0-9a-f]{64})\.([0-9]{6})\.json$")
# Credentials read from the environment: scrubbed from any message that could echo them.
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
# A cache check or transfer must fail in seconds, not retry for minutes: a cache that does
# not answer is reported (at start) or counted (an upload), never waited on.
_RETRY = {"max_retries": 2, "retry_timeout": timedelta(seconds=20),
          "init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=2),
          "backoff_base": 2.0}
_CLIENT = {"connect_timeout": "5s", "timeout": "120s"}


class CacheError(ImagebatchError):
    """A cache that cannot be used as given (exit 2, before anything is sent)."""


def without_userinfo(text: str) -> str:
    """`text` with the user:password@ part of every URL in it removed."""
    return _USERINFO.sub(r"\1", text)


@dataclass(frozen=True, slots=True)
class Entry:
    """One object of the cache: an image of job `key` made by backend `backend`."""

    key: str
    sha256: str
    ext: str
    backend: str  # the backend name (as results.jsonl records it)
    name: str  # the object's path inside the store


def backend_id(backend: str) -> str:
    """The path-safe folder of a backend's images: `local`, or host and path plus a hash.

    The name it comes from is a base URL with no credentials (config.backend_name), and only
    its host and path are kept in clear; the hash tells apart names that read alike.
    """
    if backend == LOCAL_BACKEND:
        return LOCAL_BACKEND
    parts = urlsplit(backend)
    readable = re.sub(r"[^a-z0-9.-]+", "_", f"{parts.hostname or ''}{parts.path}".lower())
    digest = hashlib.sha256(backend.encode()).hexdigest()[:12]
    return f"{readable.strip('_') or 'backend'}-{digest}"


def object_name(key: str, backend: str, sha256: str, ext: str) -> str:
    """Where the image `sha256` of job `key` by `backend` lives in the store."""
    return f"{LAYOUT}/{backend_id(backend)}/{key[:2]}/{key}.{sha256}.{ext}"


def backend_of(folder: str) -> str | None:
    """The backend name a backend folder is for, when the folder tells it: `local`, or a
    base URL with no port whose hash the folder's matches; else None (a port is not kept
    in clear, so `http://127.0.0.1:8000` cannot be told back)."""
    if folder == LOCAL_BACKEND:
        return LOCAL_BACKEND
    readable, _, _digest = folder.rpartition("-")
    for path in {readable, readable.replace("_", "/")}:
        for scheme in ("https", "http"):
            if backend_id(f"{scheme}://{path}") == folder:
                return f"{scheme}://{path}"
    return None


def claim_folder(key: str, backend: str) -> str:
    """The folder of the claims on job `key` by `backend` (and of a few other keys')."""
    return f"{CLAIMS}/{backend_id(backend)}/{key[:2]}"


def claim_name(key: str, backend: str, generation: int) -> str:
    """Where generation `generation` of the claim on job `key` by `backend` lives.

    Zero-padded, so that names sort as their generations do.
    """
    return f"{claim_folder(key, backend)}/{key}.{generation:06d}.json"


def claim_body(run: str, expires: float, where: str = "") -> bytes:
    """A claim's bytes: the claiming run's id, when it expires (seconds since the epoch,
    and the same as a UTC time for people reading the store), and `where` it runs (a hash
    of the machine's name and the outputs folder: no name in clear)."""
    when = datetime.fromtimestamp(expires, timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"run": run, "expires": round(expires, 3), "expires_at": when,
                       "where": where}).encode()


@dataclass(frozen=True, slots=True)
class Claim:
    """One generation of a claim on a job: who holds it and until when."""

    name: str  # the object's path inside the store
    generation: int
    run: str | None  # the claiming run's id; None when the object cannot be read as a claim
    expires: float  # seconds since the epoch; 0 for an unreadable claim (lapsed)
    where: str = ""  # the hash of the machine and outputs folder it was made for

    def live(self, now: float) -> bool:
        """Whether it still holds at wall-clock time `now`."""
        return self.run is not None and now < self.expires


def read_claim(name: str, generation: int, data: bytes) -> Claim:
    """The claim stored as `data`; an object that is not one counts as lapsed."""
    try:
        doc = json.loads(data)
        return Claim(name, generation, str(doc["run"]), float(doc["expires"]),
                     str(doc.get("where", "")))
    except (ValueError, KeyError, TypeError):
        return Claim(name, generation, None, 0.0)


def claim_lease(env: Mapping[str, str]) -> float:
    """How long a claim lasts unless renewed: $IMAGEBATCH_CLAIM_LEASE seconds, else five
    minutes; CacheError (exit 2) for a value that is not a positive number."""
    text = env.get(LEASE_VARIABLE, "").strip()
    if not text:
        return LEASE
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 86400:  # nan fails this too
        raise CacheError(f"{LEASE_VARIABLE} must be a number of seconds above 0 (at most "
                         f"a day), not {text[:40]!r}")
    return value


@dataclass(eq=False)
class Cache:
    """An opened cache: its store, and the URL to name it by (never a credential)."""

    url: str  # as a person gave it, credentials removed
    source: str  # what set it: "--cache" or IMAGEBATCH_CACHE, named in errors
    store: Any = field(repr=False)  # an obstore store
    secrets: tuple[str, ...] = field(default=(), repr=False)  # values to scrub from messages
    # whether credentials were given (keys or a profile); without, the store looks for an
    # instance role, and its failure means "none found" rather than "refused"
    credentials: bool = True

    def scrub(self, text: str) -> str:
        """`text` with no credential in it: no URL's userinfo, no secret's value. Every
        text of the store's (an error, a warning) passes here before it is shown."""
        text = without_userinfo(text)
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def describe(self, exc: BaseException) -> str:
        """An obstore error as one line with no credential in it."""
        text = self.scrub(str(exc).split("\n", 1)[0].strip())
        return text[:300] or type(exc).__name__

    def reach(self) -> None:
        """Reach the store once (a listing of one object); CacheError naming what to fix.

        Run before a single image request, so that a misconfigured cache never turns into a
        silent full-price run.
        """
        try:
            import obstore

            next(iter(obstore.list(self.store, LAYOUT, chunk_size=1)), None)
        except Exception as exc:  # noqa: BLE001 - obstore raises many kinds; each is named
            raise CacheError(self.problem(exc)) from None

    async def check(self) -> None:
        """`reach` from an event loop (on a thread, so the loop goes on meanwhile)."""
        await asyncio.to_thread(self.reach)

    def problem(self, exc: BaseException) -> str:
        """What a failed call to the store says to fix, naming the variable or URL."""
        text = str(exc)
        where = f"cache {self.url} ({self.source})"
        if "NoSuchBucket" in text:
            return f"{where}: the bucket does not exist; create it or fix the bucket name"
        if _REFUSED.search(text) and not self.credentials:
            return (f"{where}: no credentials found; set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
        if _REFUSED.search(text):
            return (f"{where}: the credentials were refused; check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
        if any(word in text for word in ("error sending request", "connect", "Connect",
                                          "dns error", "timed out", "Timeout")):
            return (f"{where}: the endpoint cannot be reached; check AWS_ENDPOINT_URL "
                    "(or the network)")
        if "NotFound" in type(exc).__name__ or "No such file" in text:
            return f"{where}: the folder does not exist"
        return f"{where}: {self.describe(exc)}"

    def scan(self, backends: Iterable[str]) -> dict[str, list[Entry]]:
        """Every object of `backends` in the store, by job key (a listing; nothing is read).

        One listing per backend (a thousand names a request on S3): cheaper than a request
        per job for any plan that is not tiny next to the cache.
        """
        found: dict[str, list[Entry]] = {}
        for backend in sorted(set(backends)):
            for entry in self._listed(backend_id(backend), backend):
                found.setdefault(entry.key, []).append(entry)
        for entries in found.values():
            entries.sort(key=lambda e: e.name)  # the same choice on every machine
        return found

    async def index(self, backends: Iterable[str]) -> dict[str, list[Entry]]:
        """`scan` from an event loop (on a thread, so the loop goes on meanwhile)."""
        return await asyncio.to_thread(self.scan, backends)

    def _listed(self, folder: str, backend: str) -> list[Entry]:
        """The objects under one backend's folder, as made by `backend`."""
        import obstore

        try:
            return [entry for chunk in obstore.list(self.store, f"{LAYOUT}/{folder}",
                                                    chunk_size=1000)
                    for meta in chunk
                    if (entry := _entry(str(meta["path"]), backend)) is not None]
        except Exception as exc:  # noqa: BLE001 - named for the user
            raise CacheError(self.problem(exc)) from None

    def folders(self) -> list[str]:
        """The backend folders the store holds (`local`, `HOST-HASH`): one listing."""
        import obstore

        try:
            listed = obstore.list_with_delimiter(self.store, LAYOUT)
        except Exception as exc:  # noqa: BLE001 - named for the user
            raise CacheError(self.problem(exc)) from None
        return sorted(str(p).removeprefix("/").rstrip("/").rsplit("/", 1)[-1]
                      for p in listed["common_prefixes"])

    def elsewhere(self, keys: Collection[str], backends: Iterable[str]
                  ) -> dict[str, frozenset[str]]:
        """The backend folders other than those of `backends` that hold images of `keys`:
        folder -> the ones of `keys` it has (a listing of each; nothing is read)."""
        skip = {backend_id(b) for b in backends}
        wanted = set(keys)
        held: dict[str, frozenset[str]] = {}
        for folder in self.folders():
            if folder not in skip:
                have = frozenset(e.key for e in self._listed(folder, "")) & wanted
                if have:
                    held[folder] = have
        return held

    async def get(self, entry: Entry) -> bytes:
        """The bytes of `entry` (obstore errors pass through, for the caller to count)."""
        import obstore

        result = await obstore.get_async(self.store, entry.name)
        return bytes(await result.bytes_async())

    async def put(self, key: str, backend: str, blob: bytes, ext: str) -> bool:
        """Write `blob` as job `key`'s image by `backend`, once: True if written, False when
        that very object (same name, so same bytes) was there already."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        sha = hashlib.sha256(blob).hexdigest()
        try:
            await obstore.put_async(self.store, object_name(key, backend, sha, ext), blob,
                                    mode="create")
        except AlreadyExistsError:
            return False
        return True

    async def delete(self, entry: Entry) -> None:
        """Remove a bad object (a corrupt, truncated or foreign one)."""
        import obstore

        await obstore.delete_async(self.store, entry.name)

    async def entries(self, keys: Iterable[str], backends: Iterable[str]
                      ) -> dict[str, list[Entry]]:
        """The objects of jobs `keys` by `backends`, by key: a listing of the few folders
        they are in, not of the whole cache (what a run looks at again mid-run)."""
        import obstore

        wanted = set(keys)
        found: dict[str, list[Entry]] = {}
        for backend in sorted(set(backends)):
            for head in sorted({k[:2] for k in wanted}):
                async for chunk in obstore.list(self.store, f"{LAYOUT}/{backend_id(backend)}/"
                                                f"{head}", chunk_size=1000):
                    for meta in chunk:
                        entry = _entry(str(meta["path"]), backend)
                        if entry is not None and entry.key in wanted:
                            found.setdefault(entry.key, []).append(entry)
        for with_key in found.values():
            with_key.sort(key=lambda e: e.name)
        return found

    async def create(self, name: str, blob: bytes) -> bool:
        """Write object `name` only if there is none: True if written, False if it was."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        try:
            await obstore.put_async(self.store, name, blob, mode="create")
        except AlreadyExistsError:
            return False
        return True

    async def overwrite(self, name: str, blob: bytes) -> None:
        """Write object `name` whether or not it exists (a claim renewed)."""
        import obstore

        await obstore.put_async(self.store, name, blob, mode="overwrite")

    async def remove(self, name: str) -> None:
        """Delete object `name`; one already gone is no error."""
        import obstore
        from obstore.exceptions import NotFoundError

        with contextlib.suppress(NotFoundError, FileNotFoundError):
            await obstore.delete_async(self.store, name)

    async def claims(self, key: str, backend: str) -> list[tuple[int, str]]:
        """The generations of the claim on job `key` by `backend` in the store, lowest
        first: (generation, object name)."""
        import obstore

        found: list[tuple[int, str]] = []
        async for chunk in obstore.list(self.store, claim_folder(key, backend),
                                        chunk_size=1000):
            for meta in chunk:
                path = str(meta["path"]).removeprefix("/")
                match = _CLAIM.match(path.rsplit("/", 1)[-1])
                if match is not None and match.group(1) == key:
                    found.append((int(match.group(2)), path))
        return sorted(found)

    async def claim(self, name: str, generation: int) -> Claim | None:
        """The claim stored at `name`, or None when it is gone."""
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            result = await obstore.get_async(self.store, name)
            data = bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError):
            return None
        return read_claim(name, generation, data)

    async def conditional_puts(self, run: str) -> str | None:
        """Why this store cannot make claims, or None when it can: a probe object is
        created twice, create-only; the second must be refused. A store that ignores
        `If-None-Match` (overwriting instead) fails this, as does one that refuses the
        header or the write itself."""
        name = f"{CLAIMS}/probe/{run}.json"
        blob = claim_body(run, 0.0)
        try:
            if not await self.create(name, blob):
                return None  # refused over an object there already: it keeps what exists
            if await self.create(name, blob):
                return "it overwrote an object that a create-only put must keep"
        except Exception as exc:  # noqa: BLE001 - any refusal means no claims; named
            return f"a create-only put failed: {self.describe(exc)}"
        finally:
            with contextlib.suppress(Exception):  # a probe left behind is harmless
                await self.remove(name)
        return None


def _entry(path: str, backend: str) -> Entry | None:
    """The Entry a listed path names, or None for anything else (a staging file, a stray)."""
    match = _NAME.match(path.rsplit("/", 1)[-1])
    if match is None:
        return None
    key, sha, ext = match.groups()
    return Entry(key, sha, ext, backend, path.removeprefix("/"))


def cache_url(given: str | None, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(the cache URL, what set it): `--cache` when given, else $IMAGEBATCH_CACHE; None
    when neither is set (an empty variable is unset, as a CI variable left blank is)."""
    if given:
        return given, "--cache"
    value = env.get(CACHE_VARIABLE, "").strip()
    return (value, CACHE_VARIABLE) if value else None


def check_cache(given: str | None, env: Mapping[str, str]) -> Cache | None:
    """The cache `--cache` (`given`) or $IMAGEBATCH_CACHE names, opened and reached once;
    None when neither is set. CacheError (exit 2) when it cannot be used: call it before
    anything is sent."""
    found = cache_url(given, env)
    if found is None:
        return None
    cache = open_cache(found[0], env, found[1])
    cache.reach()
    return cache


def open_cache(url: str, env: Mapping[str, str], source: str = "--cache") -> Cache:
    """The cache at `url` (`s3://BUCKET/PREFIX`, `file:///PATH` or a folder); CacheError
    for a URL that cannot name one. Nothing is sent: `Cache.check` reaches it."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if len(scheme) == 1 or not scheme:  # a plain path (a Windows drive letter too)
        return _folder(Path(url), url, source)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise CacheError(f"{source}: a file:// URL names a folder on this machine "
                             "(file:///PATH); mount the share and give its path")
        return _folder(Path(unquote(parts.path)), url, source)
    if scheme in ("s3", "s3a"):
        return _s3(parts.netloc, parts.path, url, env, source)
    raise CacheError(f"{source}: unknown cache scheme {scheme!r}: use s3://BUCKET/PREFIX "
                     "(AWS S3 or any S3-compatible store), file:///PATH or a folder")


def _folder(path: Path, url: str, source: str) -> Cache:
    from obstore.store import LocalStore

    if path.exists() and not path.is_dir():
        raise CacheError(f"cache {url} ({source}): is a file, not a folder; a folder cache "
                         "is a directory (give the folder's path, or s3://BUCKET/PREFIX)")
    if not path.is_dir():
        # A missing share (not mounted, a typo) must not become a new empty folder.
        raise CacheError(f"cache {url} ({source}): no such folder; create it (or mount the "
                         "share) first")
    return Cache(url=str(path), source=source, store=LocalStore(path.resolve()))


def _s3(netloc: str, path: str, url: str, env: Mapping[str, str], source: str) -> Cache:
    from obstore.store import S3Store

    if "@" in netloc:
        # Never echo it: it is most likely KEY:SECRET@bucket.
        raise CacheError(f"{source}: credentials do not go in the cache URL; set "
                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    bucket = netloc
    if not bucket:
        raise CacheError(f"{source}: {url!r} names no bucket; use s3://BUCKET/PREFIX")
    prefix = _prefix(path, url, source)
    shown = f"s3://{bucket}/{prefix}".rstrip("/")
    config: dict[str, Any] = {}
    named_by, endpoint = next(((v, env[v]) for v in _ENDPOINT_VARIABLES if env.get(v)),
                              ("", ""))
    if endpoint:
        _check_endpoint(named_by, endpoint)
        config["endpoint"] = endpoint
    config["region"] = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    for variable, name in (("AWS_ACCESS_KEY_ID", "access_key_id"),
                           ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
                           ("AWS_SESSION_TOKEN", "token")):
        if env.get(variable):
            config[name] = env[variable]
    provider = None
    if "access_key_id" not in config and env.get("AWS_PROFILE"):
        provider = _profile_provider(env["AWS_PROFILE"], source)
    client: dict[str, Any] = dict(_CLIENT)
    if endpoint and endpoint.startswith("http://"):
        client["allow_http"] = True  # a local MinIO or test endpoint
    try:
        store = S3Store(bucket, prefix=prefix or None, config=config,  # type: ignore[arg-type]
                        client_options=client, retry_config=_RETRY,  # type: ignore[arg-type]
                        credential_provider=provider)
    except Exception as exc:  # noqa: BLE001 - a bad setting, named without its value
        raise CacheError(f"cache {shown} ({source}): cannot be set up: "
                         f"{type(exc).__name__}") from None
    return Cache(url=shown, source=source, store=store,
                 secrets=tuple(env.get(v, "") for v in _SECRET_VARIABLES),
                 credentials="access_key_id" in config or provider is not None)


def _prefix(path: str, url: str, source: str) -> str:
    """The key prefix a URL's path names (no slash at either end); CacheError for one that
    names no plain place in a bucket: an empty part (`//`), a `.` or a `..` part."""
    prefix = path.removeprefix("/").rstrip("/")  # a trailing slash is what people write
    for part in prefix.split("/") if prefix else ():
        if part in ("", ".", ".."):
            what = "an empty part (two slashes in a row)" if not part else f"a {part!r} part"
            raise CacheError(f"{source}: the prefix of {without_userinfo(url)!r} has {what}; "
                             "a prefix is a plain path inside the bucket: "
                             "s3://BUCKET/NAME or s3://BUCKET/NAME/NAME")
    return prefix


def _check_endpoint(variable: str, endpoint: str) -> None:
    """CacheError for an endpoint URL that cannot be used, naming `variable` but never its
    value: not a URL, not http(s), or with credentials in it."""
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        raise CacheError(f"{variable} is not a valid URL (check its host and port)") from None
    if parts.scheme not in ("http", "https"):
        raise CacheError(f"{variable} must be an http(s) URL, e.g. "
                         "https://ACCOUNT.r2.cloudflarestorage.com")
    if "@" in parts.netloc:
        # user:password@ would be sent as is and printed in every error of the store (its
        # texts carry the URL): refused before anything is sent, and never repeated.
        raise CacheError(f"{variable} has credentials in it (user:password@ before the "
                         "host); give the endpoint's URL alone and the keys in "
                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")


def _profile_provider(profile: str, source: str) -> Any:
    """Credentials of an AWS profile, through boto3 when it is installed."""
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        raise CacheError(f"{source}: AWS_PROFILE needs boto3 (pip install boto3); or set "
                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
    return Boto3CredentialProvider(boto3.Session(profile_name=profile))


def restorable(cache: Cache, jobs: Sequence[Job], backends: Iterable[str]) -> frozenset[str]:
    """Which of `jobs` the cache can fill, by key, without downloading them (a listing).

    `backends` are the names whose images count as done (context.Context.judged, or a
    Store's `backends`): an image by another backend never stands in. Objects are verified
    only when downloaded, so a corrupt one counts here and is regenerated by the run. For a
    mixed pool's job, an image under any of its requests' keys counts.
    """
    found = cache.scan(backends)
    return frozenset(j.key for j in jobs if any(k in found for k in j.keys))
