"""Fetch Hub files into the standard Hugging Face cache, verified and resumable.

Two steps, so the licences and sizes can be shown before any weight moves: :func:`plan` asks the Hub for each
repository's commit and file metadata (one request per repository), :func:`fetch_file` downloads each file the
cache lacks at that commit.

Why not ``hf_hub_download``: since huggingface_hub 1.x it downloads to a process-unique temporary file that it
deletes when the call fails, so an interrupted 10 GB download restarts from zero. Here each file goes to
``blobs/<etag>.incomplete`` (the name huggingface_hub itself used before), which a rerun continues with an HTTP
Range request, through huggingface_hub's own ``http_get`` (which also retries a dropped connection within one
run). The file is hashed before it enters the cache, so a corrupt download never lands there; the finished
file is placed exactly where ``hf_hub_download`` would put it (``blobs/<etag>``, a ``snapshots/<commit>/``
link, ``refs/<revision>``), so every loader, online or offline, finds it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from instantid.errors import InstantIDError
from instantid.hub.catalog import HubModel, Licence

CHUNK = 8 * 1024 * 1024


class DownloadError(InstantIDError):
    """A model could not be fetched: offline, unknown repository, network failure, refused licence."""


class ChecksumError(DownloadError):
    """A downloaded file's bytes are not the published ones."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository at a resolved commit, with the digest its bytes must have."""

    repo: str
    commit: str
    path: str  # inside the repository
    size: int
    etag: str  # the cache's blob name: the LFS SHA-256, or the git blob id of a small file
    digest: str  # expected hex digest of the content
    algorithm: str  # "sha256" or "git-sha1" (git's blob hash, for files kept in git rather than LFS)
    source: str  # where the digest comes from: "pinned", "hub-lfs" or "hub-git"


@dataclass(frozen=True)
class ResolvedModel:
    model: HubModel
    commit: str
    licence: Licence
    files: tuple[RemoteFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport failures of whichever HTTP client this huggingface_hub uses (httpx2, httpx or requests; the
    last one's errors are OSErrors)."""
    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        errors.append(module.HTTPError)
    return tuple(errors)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def _hub_error(repo: str, exc: BaseException) -> DownloadError:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled):
        return DownloadError(f"offline (HF_HUB_OFFLINE is set): cannot fetch {repo}; unset it to download")
    if isinstance(exc, GatedRepoError):
        return DownloadError(f"{repo} is gated: accept its terms on its Hub page and log in (`hf auth login`)")
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(f"no repository {repo} on {constants.ENDPOINT} (check the id, or log in if private)")
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(f"{repo}: no such revision ({_first_line(exc)})")
    return DownloadError(f"cannot reach {constants.ENDPOINT} for {repo}: {_first_line(exc)}")


def plan(models: Iterable[HubModel], revision: str = "main") -> list[ResolvedModel]:
    """Resolve each model's ``revision`` to a commit and list its matching files with the digest each must have:
    the pinned SHA-256 where the project knows the published file's, else the Hub's LFS SHA-256, else (small
    files kept in git) the git blob id."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import filter_repo_objects, validate_repo_id

    if offline():
        raise DownloadError("offline (HF_HUB_OFFLINE is set): nothing can be downloaded; unset it, or see "
                            "`instantid doctor` for what the cache already holds")
    api = HfApi(endpoint=constants.ENDPOINT)
    resolved = []
    for model in models:
        try:
            validate_repo_id(model.repo)
        except HFValidationError as exc:
            raise DownloadError(
                f"{model.key}: {model.repo!r} is not a Hub repository id ({_first_line(exc)})") from None
        try:
            info = api.model_info(model.repo, revision=revision, files_metadata=True)
        except (HfHubHTTPError, *_network_errors()) as exc:
            raise _hub_error(model.repo, exc) from None
        siblings = list(filter_repo_objects(info.siblings or [], allow_patterns=list(model.patterns),
                                            key=lambda s: s.rfilename))
        missing = [p for p in model.patterns if "*" not in p and p not in {s.rfilename for s in siblings}]
        if missing or not siblings:
            raise DownloadError(f"{model.repo}@{info.sha}: no {', '.join(missing or model.patterns)} in it")
        files = tuple(_remote_file(model, info.sha, s) for s in siblings)
        licence = model.licence or _card_licence(model.repo, getattr(info, "card_data", None))
        resolved.append(ResolvedModel(model, info.sha, licence, files))
    return resolved


def _remote_file(model: HubModel, commit: str, sibling: object) -> RemoteFile:
    path, lfs, blob_id = sibling.rfilename, sibling.lfs, sibling.blob_id  # type: ignore[attr-defined]
    if lfs is not None:
        size, etag = lfs["size"], lfs["sha256"]
        pinned = model.pinned.get(path)
        if pinned is not None and pinned != etag:
            # The mirror serves other bytes than the published file: refuse before moving gigabytes.
            raise ChecksumError(f"{model.repo}@{commit[:12]} {path}: the Hub's SHA-256 {etag} is not the published "
                                f"file's {pinned}; use another repository")
        return RemoteFile(model.repo, commit, path, size, etag, pinned or etag, "sha256",
                          "pinned" if pinned else "hub-lfs")
    if path in model.pinned:
        raise ChecksumError(f"{model.repo}@{commit[:12]} {path}: not an LFS file, so not the published weights")
    size = sibling.size  # type: ignore[attr-defined]
    return RemoteFile(model.repo, commit, path, size, blob_id, blob_id, "git-sha1", "hub-git")


def _card_licence(repo: str, card: object) -> Licence:
    tag = getattr(card, "license", None) if card is not None else None
    name = tag if isinstance(tag, str) and tag else "not stated on the model card"
    return Licence(name, f"https://huggingface.co/{repo}", "as tagged on its model card; read the card for its terms")


# ---- the cache ------------------------------------------------------------------------------------------
def _storage(cache_dir: Path, repo: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir / repo_folder_name(repo_id=repo, repo_type="model")


def cached_path(file: RemoteFile, cache_dir: Path) -> Path | None:
    """The file's snapshot path when the cache already holds it at this commit (or its blob from another)."""
    storage = _storage(cache_dir, file.repo)
    blob = storage / "blobs" / file.etag
    if not blob.is_file():
        return None
    pointer = storage / "snapshots" / file.commit / file.path
    if not pointer.exists():
        _link(blob, pointer)
    return pointer


def _link(blob: Path, pointer: Path) -> None:
    # huggingface_hub's own linking: relative symlinks, or a copy where symlinks are unavailable (Windows).
    from huggingface_hub.file_download import _create_symlink

    pointer.parent.mkdir(parents=True, exist_ok=True)
    _create_symlink(str(blob), str(pointer), new_blob=False)


def digest_of(path: Path, algorithm: str, size: int) -> str:
    """The hex digest ``algorithm`` gives ``path``: plain SHA-256, or git's blob SHA-1 (``blob <size>\\0`` + bytes)."""
    digest = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1(f"blob {size}\0".encode())
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check(file: RemoteFile, path: Path) -> None:
    """Delete ``path`` and raise unless its bytes have ``file``'s digest."""
    actual = digest_of(path, file.algorithm, file.size)
    if actual != file.digest:
        path.unlink()
        raise ChecksumError(f"{file.repo}@{file.commit[:12]} {file.path}: {file.algorithm} {actual} is not the "
                            f"expected {file.digest} ({file.source}); the file was deleted, run again")


def verify_cached(file: RemoteFile, cache_dir: Path) -> None:
    """Re-hash a file the cache already holds (``--verify``): a bad one leaves the cache, blob and link."""
    storage = _storage(cache_dir, file.repo)
    pointer = storage / "snapshots" / file.commit / file.path
    try:
        _check(file, storage / "blobs" / file.etag)
    except ChecksumError:
        pointer.unlink(missing_ok=True)
        raise


def fetch_file(file: RemoteFile, cache_dir: Path, on_start: Callable[[RemoteFile, int], None] | None = None) -> Path:
    """Download ``file`` into the cache; resume a partial download left by an earlier run; verify it before it
    enters the cache. Returns its snapshot path. (A file already cached is :func:`cached_path`'s.)"""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    storage = _storage(cache_dir, file.repo)
    blob = storage / "blobs" / file.etag
    partial = blob.with_name(f"{file.etag}.incomplete")
    blob.parent.mkdir(parents=True, exist_ok=True)
    url = f"{constants.ENDPOINT}/{file.repo}/resolve/{file.commit}/{quote(file.path)}"
    # The lock huggingface_hub takes for the same blob, so a concurrent hf_hub_download waits for us.
    with WeakFileLock(cache_dir / ".locks" / storage.name / f"{file.etag}.lock"):
        if blob.is_file():  # another process finished it while we waited
            return cached_path(file, cache_dir) or blob
        done = partial.stat().st_size if partial.is_file() else 0
        if done > file.size:  # not a prefix of this file: start over
            partial.unlink()
            done = 0
        if on_start is not None:
            on_start(file, done)
        try:
            with partial.open("ab") as out:
                http_get(url, out, resume_size=done, headers=build_hf_headers(), expected_size=file.size,
                         displayed_filename=file.path)
        except (HfHubHTTPError, *_network_errors()) as exc:
            kept = partial.stat().st_size if partial.is_file() else 0
            raise DownloadError(f"{file.repo}: {file.path} interrupted at {kept} of {file.size} bytes "
                                f"({_first_line(exc)}); run the command again to resume") from None
        _check(file, partial)  # a bad download is deleted, never resumed: the next run starts it from zero
        os.replace(partial, blob)
    pointer = storage / "snapshots" / file.commit / file.path
    _link(blob, pointer)
    return pointer


def record_revision(resolved: ResolvedModel, cache_dir: Path, revision: str = "main") -> None:
    """Point ``refs/<revision>`` at the fetched commit, as ``hf_hub_download`` does, so offline lookups (which
    read ``refs/main``) find this snapshot."""
    from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision

    storage = _storage(cache_dir, resolved.model.repo)
    _cache_commit_hash_for_specific_revision(str(storage), revision, resolved.commit)
