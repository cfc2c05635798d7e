"""The server's options (:class:`ServerSettings`), apart from the job service so that reading them is cheap: the
CLI builds ``instantid serve``'s flags from them at every start."""

from __future__ import annotations

from pathlib import Path

from instantid.api.model_settings import ModelSettings, option


class ServerSettings(ModelSettings):
    """The server's options on top of the model's, declared once: ``instantid serve`` derives its flags from these
    fields (:func:`instantid.cli.options.with_settings_options`), with these words."""

    out_dir: Path = option(Path("instantid-jobs"), "Job store and job folders; with --queue a path every worker sees "
                           "(shared disk).", flag="--out")
    queue: str | None = option(None, "redis://host:6379/0: jobs go to `instantid worker` processes (default: SQLite "
                               "under --out and one worker in this process).")
    max_upload_mb: float = option(20.0, "Largest request body accepted, in MiB (413 above).", gt=0)
    max_queued_jobs: int = option(16, "Waiting jobs beyond this are refused with 429.", gt=0)
    keep_hours: float = option(24.0, "Finished jobs and their images are deleted after this.", gt=0)
    max_attempts: int = option(2, "Runs of a job whose worker died (or server restarted) before it fails.", ge=1,
                               le=10)
    wait_timeout_s: float = option(600.0, "Longest ?wait=true call; then 202 and polling.", gt=0)
    job_timeout_s: int = option(3600, "A worker stops a job running longer than this.", gt=0)
    api_key_file: Path | None = option(None, "Hashed API keys, one 'NAME sha256:HEX [rate=N] [jobs=N]' per line; "
                                       "every /v1 call then needs one (see instantid.service.auth).")
    rate_limit: float | None = option(None, "Submissions per minute per key (or client address).", gt=0)
    max_jobs_per_key: int | None = option(None, "Queued + running jobs per API key.", gt=0)
    cors_origins: list[str] = option([], "Allow browser calls from this origin (repeat; default: CORS off).",
                                     flag="--cors-origin")
    mount_ui: bool = option(True, "Mount the web UI at /ui (its jobs, every tab's, join this server's queue and "
                            "limits, also with --queue; with --api-key-file it asks to sign in: user name = the "
                            "key's name, password = the key).", flag="--ui")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


__all__ = ["ServerSettings"]
