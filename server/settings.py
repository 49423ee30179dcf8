"""Service settings, read from VITPRUNE_* environment variables (pydantic-settings).

Everything has a default that needs no set-up: a data directory `./vitprune-data` holding the
SQLite database and the artifact store. Point VITPRUNE_DB_URL at PostgreSQL when workers on
several machines share the service; they must then also share VITPRUNE_HOME's artifacts (a
volume or a network file system).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITPRUNE_", extra="ignore")

    home: Path = Field(default=Path("vitprune-data"), description="data directory: database, artifacts, uploads")
    db_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite:///HOME/vitprune.db")
    roots: list[Path] = Field(
        default_factory=list,
        description="server-side directories that jobs may name directly (weights, image folders); uploads always work",
    )
    max_upload_mb: int = Field(default=2048, ge=1, description="largest accepted upload (weights or dataset zip)")
    lease_s: int = Field(default=60, ge=5, description="a job whose lease is not renewed this long is re-claimed")
    heartbeat_s: int = Field(default=10, ge=1, description="how often a worker renews its lease and trial heartbeats")
    grace_s: int = Field(default=45, ge=2, description="a trial without a heartbeat this long is retried elsewhere")
    poll_s: float = Field(default=2.0, gt=0, description="how often an idle worker looks for work")
    compute: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="a worker's compute: where it scores trials of jobs that leave it to the worker (cpu, cuda, "
        "cuda:N, auto = the GPU when torch sees one); with a GPU it takes the jobs that need one",
    )
    token: SecretStr | None = Field(
        default=None, description="API token; when set, every request that changes state must send it as a bearer token"
    )
    protect_reads: bool = Field(default=False, description="with a token: reads need it too")
    profiles_dir: Path | None = Field(default=None, description="device tables; default HOME/profiles")

    @cached_property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.home / 'vitprune.db').resolve()}"

    @property
    def artifacts(self) -> Path:
        return self.home.resolve() / "artifacts"

    @property
    def profiles(self) -> Path:
        return (self.profiles_dir or self.home / "profiles").resolve()

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb << 20
