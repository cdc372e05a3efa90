"""Configuration from environment variables, read once into frozen dataclasses.

Each service declares a frozen dataclass whose fields carry their variable name, default and
documentation in `field(metadata=...)` via `setting(...)`. `load(Cls)` reads the environment once
and fails at start-up naming the variable that is wrong. Secrets may come from a file: for any
variable NAME, NAME_FILE pointing at a file is read instead.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration variable is missing or malformed; the message names it."""


def setting(env: str, default: Any, doc: str) -> Any:
    """Declare a dataclass field read from the environment variable `env`."""
    return dataclasses.field(default=default, metadata={"env": env, "doc": doc})


def _raw(env: str, environ: Mapping[str, str]) -> str | None:
    file_var = f"{env}_FILE"
    if file_var in environ:
        try:
            return Path(environ[file_var]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{file_var}: cannot read {environ[file_var]!r}: {exc}") from exc
    return environ.get(env)


def _convert(env: str, kind: Any, text: str) -> Any:
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind == tuple[str, ...]:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError:
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{env} must be a {name}, got {text!r}") from None


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build `cls` from the environment; raise ConfigError naming the first bad variable."""
    env_map = os.environ if environ is None else environ
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        env = f.metadata.get("env")
        if env is None:
            continue
        text = _raw(env, env_map)
        if text is not None:
            values[f.name] = _convert(env, hints[f.name], text)
    return cls(**values)


def describe(cls: type[Any]) -> list[tuple[str, str, str]]:
    """(variable, default, doc) for every setting of `cls`, for the README and --help."""
    rows = []
    for f in dataclasses.fields(cls):
        if "env" in f.metadata:
            default = f.default if f.default is not dataclasses.MISSING else ""
            if isinstance(default, tuple):
                default = ",".join(default)
            rows.append((f.metadata["env"], str(default), f.metadata["doc"]))
    return rows


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """Settings every gRPC service process shares."""

    grpc_host: str = setting("CHATMESH_GRPC_HOST", "127.0.0.1", "address the gRPC server binds")
    grpc_port: int = setting(
        "CHATMESH_GRPC_PORT", 0, "port the gRPC server binds (0: service default)"
    )
    mesh_addr: str = setting(
        "CHATMESH_MESH_ADDR",
        "127.0.0.1:10000",
        "Envoy's mesh listener, for every outbound gRPC call",
    )
    rpc_timeout_s: float = setting("CHATMESH_RPC_TIMEOUT_S", 5.0, "deadline of outbound calls")
    grace_s: float = setting(
        "CHATMESH_GRACE_S", 8.0, "on SIGTERM, how long in-flight calls may finish (under 10 s)"
    )
    log_level: str = setting("CHATMESH_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    instance_id: str = setting("CHATMESH_INSTANCE_ID", "", "this process's name (default host-pid)")
    metrics_host: str = setting(
        "CHATMESH_METRICS_HOST", "127.0.0.1", "address the Prometheus /metrics endpoint binds"
    )
    metrics_port: int = setting(
        "CHATMESH_METRICS_PORT",
        0,
        "port of the Prometheus /metrics endpoint (0: the service's default, in the port table)",
    )

    def bind_port(self, default: int) -> int:
        return self.grpc_port or default

    def instance(self) -> str:
        return self.instance_id or default_instance_id()


# Settings more than one service reads, declared once.
def redis_url_setting() -> Any:
    return setting("CHATMESH_REDIS_URL", "redis://127.0.0.1:6380/0", "Redis-protocol server")


def kafka_bootstrap_setting() -> Any:
    return setting("CHATMESH_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers")
