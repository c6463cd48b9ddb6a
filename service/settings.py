"""Server settings, from the environment (prefix MOESCHED_), served by a cached getter."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the server reads from its environment; defaults work out of the box."""

    model_config = SettingsConfigDict(env_prefix="MOESCHED_", frozen=True)

    host: str = Field(default="127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port.")
    db_path: Path = Field(default=Path("moesched.db"), description="SQLite database for sessions.")
    db_url: str | None = Field(
        default=None,
        pattern=r"^postgres(ql)?://",
        description="postgresql://user@host:port/db: sessions on PostgreSQL, shared by every "
        "replica of the service (default: the SQLite file at db_path).",
    )
    api_key: str | None = Field(default=None, description="When set, every /v1 call needs it.")
    max_body_bytes: int = Field(default=8 * 2**20, gt=0, description="Largest request body.")
    max_tasks: int = Field(default=200_000, gt=0, description="Largest plan accepted.")
    max_experts: int = Field(default=1024, gt=0, description="Largest num_routed_experts.")
    max_devices: int = Field(default=256, gt=0, description="Largest device count.")
    max_layers: int = Field(default=256, gt=0, description="Largest workload layer count.")
    max_tokens_per_observation: int = Field(default=4096, gt=0, description="expert_ids rows.")
    max_concurrent_solves: int = Field(
        default=2, ge=1, description="Solves at once; more get 503 with Retry-After."
    )
    max_deadline_s: float = Field(
        default=7.0,
        gt=0,
        description="Cap on any request's deadline. With the grace, the longest any answer "
        "takes by default is 7 + 2 = 9 s; raise it for longer solves.",
    )
    solver_workers: int = Field(default=2, ge=1, le=64, description="CP-SAT search workers.")
    max_concurrent_routes: int = Field(
        default=2, ge=1, description="Cheap routing calls (route, EP batches) at once; more: 503."
    )
    worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Added to the nice value of every worker process, so that the event loop "
        "(/healthz) gets a CPU before solves do.",
    )
    default_deadline_s: float = Field(
        default=5.0, gt=0, description="Deadline of routes whose request has none (capped too)."
    )
    deadline_grace_s: float = Field(
        default=2.0,
        gt=0,
        description="Past its deadline, a request's worker process is stopped after this long.",
    )
    session_ttl_s: float = Field(
        default=86_400.0, gt=0, description="A session unused this long is deleted."
    )
    max_sessions: int = Field(
        default=1024, ge=1, description="Sessions of both kinds at once; more get 429."
    )
    ep_window_max_bytes: int = Field(
        default=32 * 2**20,
        ge=2**10,
        description="Largest EP-session window (int32 histograms), in memory and on disk.",
    )
    ep_window_max_batches: int = Field(
        default=1024, ge=4, description="Most batches an EP-session window keeps."
    )
    db_wal_max_bytes: int = Field(
        default=4 * 2**20,
        ge=64 * 2**10,
        description="SQLite write-ahead log: checkpointed into the main file past this size, "
        "and truncated back to it after a checkpoint (so the log stays near it).",
    )
    db_busy_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="A locked database is a 503 after this long."
    )
    read_timeout_s: float = Field(
        default=10.0, gt=0, description="A request's headers and body must arrive within this."
    )
    max_connections: int = Field(
        default=512, ge=8, description="Open connections at once; more get 503 from uvicorn."
    )
    keep_alive_s: float = Field(default=5.0, gt=0, description="Idle keep-alive connection close.")

    ray_address: str | None = Field(
        default=None, description="Ray cluster for sweeps (None: a local Ray instance)."
    )
    sweep_dir: Path = Field(default=Path("sweeps"), description="Where sweep jobs write rows.")
    sweep_workers: int = Field(default=1, ge=1, le=1024, description="CPUs of a local Ray.")
    max_sweep_points: int = Field(default=256, ge=1, description="Points of one HTTP sweep.")
    max_sweep_tokens: int = Field(
        default=20_000, ge=1, description="Prompt + decoded tokens over all points of a sweep."
    )
    max_running_sweeps: int = Field(default=1, ge=1, description="Sweep jobs at once.")

    def warnings(self) -> list[str]:
        """Risks of this configuration, for the start-up log and ``/info``."""
        if self.api_key is None and not is_loopback(self.host):
            return [
                f"bound to {self.host} (not loopback) without an API key: anyone who can reach "
                "the port can use every /v1 route; set MOESCHED_API_KEY"
            ]
        return []

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, key: str | None) -> str | None:
        if key is not None and not key.strip():
            raise ValueError("MOESCHED_API_KEY is set but empty: unset it or give a real key")
        return key


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (tests override the dependency, not the cache)."""
    return Settings()
