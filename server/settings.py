"""Server settings: one typed object built from ``PACS_MASK_*`` environment variables.

The object is built once by the entry point and passed into :func:`server.app.create_app`; nothing
reads the environment at import time. A bad value stops start-up with one line naming the variable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

APP_NAME = "pacs-mask-upload"
ENV_PREFIX = "PACS_MASK_"


class SettingsError(Exception):
    """A setting has a value the server cannot run with. The message names the variable."""


def default_data_dir() -> Path:
    """The platform's per-user data dir for this application."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


class Settings(BaseSettings):
    """Everything the server can be told. See the README's table for each variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    storage: Literal["local", "s3"] = "local"
    s3_bucket: str = "pacs-masks"
    s3_endpoint_url: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_region: str | None = None
    url_ttl_seconds: int = Field(default=900, ge=1, le=604800)
    max_slice_bytes: int = Field(default=64 * 1024 * 1024, ge=1, le=5 * 1024**3)
    public_url: str | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    signing_key: str | None = Field(default=None, repr=False)
    stale_pending_hours: float = Field(default=24.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_refresh_seconds: float = Field(default=60.0, gt=0)
    # The PACS (DICOMweb) the server reads series headers from; see server/pacs.py. Secrets never logged.
    dicomweb_url: str | None = None
    dicomweb_user: str | None = None
    dicomweb_password: str | None = Field(default=None, repr=False)
    dicomweb_token: str | None = Field(default=None, repr=False)
    dicomweb_verify: str = "true"
    """``true`` (default: check TLS certificates), ``false``, or the path of a CA bundle."""
    dicomweb_timeout: float = Field(default=30.0, gt=0, le=600)
    #: DICOM SEG to the PACS (server/services/seg_send.py): send a group's SEG when a reviewer approves it,
    #: and whether groups not (yet) approved may be sent at all.
    send_approved_seg: bool = False
    send_unreviewed: bool = False
    #: How long a valid API token is remembered without asking the database (0: never); a revoked
    #: token may pass on another worker process for this long (server/security.py).
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=300)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("public_url", "s3_endpoint_url", "dicomweb_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @field_validator("dicomweb_verify")
    @classmethod
    def _verify_flag_or_path(cls, value: str) -> str:
        flag = value.strip().lower()
        if flag in ("", "1", "true", "yes", "on"):
            return "true"
        if flag in ("0", "false", "no", "off"):
            return "false"
        if not Path(value).is_file():
            raise ValueError("must be true, false or the path of an existing CA bundle file")
        return value

    @property
    def dicomweb_tls_verify(self) -> bool | str:
        """What ``requests`` takes as ``verify``: True, False, or the CA bundle path."""
        return {"true": True, "false": False}.get(self.dicomweb_verify, self.dicomweb_verify)

    @model_validator(mode="after")
    def _check_signing_key(self) -> Settings:
        if self.signing_key is not None and len(self.signing_key) < 32:
            raise ValueError("PACS_MASK_SIGNING_KEY must be at least 32 characters")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: the configured one, or a SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'pacs-masks.sqlite3'}"

    @property
    def storage_root(self) -> Path:
        """Where the local backend keeps objects."""
        return self.data_dir / "objects"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Build settings from the environment (and explicit overrides), or raise SettingsError."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
            raise SettingsError(f"{name}: {first['msg']}") from None


def settings_or_exit() -> Settings:
    """The settings from the environment; a bad one is printed and ends the command with exit code 2."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"pacs-mask-server: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
