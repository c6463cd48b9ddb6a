"""Server settings, from the environment (prefix MOESCHED_), served by a cached getter."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the server reads from its environment; defaults work out of the box."""

    model_config = SettingsConfigDict(env_prefix="MOESCHED_", frozen=True)

    host: str = Field(default="127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port.")
    db_path: Path = Field(default=Path("moesched.db"), description="SQLite database for sessions.")
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
    max_deadline_s: float = Field(default=30.0, gt=0, description="Cap on any solve's deadline.")
    solver_workers: int = Field(default=2, ge=1, le=64, description="CP-SAT search workers.")
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (tests override the dependency, not the cache)."""
    return Settings()
