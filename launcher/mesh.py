"""The whole local mesh, started in order, used identically by `make up` and the e2e tests.

`Mesh(ports, state_dir).start()` checks every port first (one clear line naming the port, its
component and the variable that moves it), then starts, waiting for each to be ready:

    tansu, postgres (+ databases), valkey, topic chatmesh.messages, envoy,
    user_svc, presence_svc, notify_svc, persister x2, chat_svc x2, gateway x2

and finally waits for GET /healthz on the edge to answer 200. It prints one line per component
as it becomes ready. `stop()` stops services first (SIGTERM, up to 10 s, then SIGKILL), then
Envoy, Valkey, PostgreSQL (fast shutdown) and the broker, each as a whole process group.

Every child's process group and argv are recorded in `<state>/launcher.json`: if a launcher is
SIGKILLed, the next `up` (or `clean`) kills what it left behind, and the e2e tests read the file
to prove nothing outlives a stop.

Port plan: defaults are the spec's table; each entry can be moved by an environment variable
(see `PORT_VARIABLES`, or `python -m launcher up --help`); tests use `PortPlan.free()`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from launcher import envoy_config, servers
from launcher.servers import HOST, Child, StartError
from svckit import channels
from svckit.metrics import DEFAULT_PORTS as METRICS_PORTS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = ROOT / ".state"
STATE_FILE = "launcher.json"
PROMETHEUS_FILE = "prometheus.yml"
ALERT_RULES = ROOT / "deploy" / "observability" / "prometheus" / "alerts.yml"
MESSAGES_TOPIC = "chatmesh.messages"
MESSAGES_PARTITIONS = 8
DATABASES = {
    "users": "chatmesh_users",
    "messages": "chatmesh_messages",
    "notify": "chatmesh_notify",
}
SERVICE_STOP_TIMEOUT_S = 10.0


class MeshError(Exception):
    """The mesh could not start; the message says which component and why (one line first)."""


class PortInUseError(MeshError):
    """A port of the plan is taken; the message names it, its component and its variable."""


# --------------------------------------------------------------------------------------------
# Port plan.


@dataclass(frozen=True)
class PortPlan:
    """Every port the local mesh binds on 127.0.0.1. Tuples: one port per instance."""

    edge: int = 8080
    mesh: int = 10000
    envoy_admin: int = 9901
    gateway_http: tuple[int, ...] = (8091, 8092)
    gateway_grpc: tuple[int, ...] = (9191, 9192)
    chat: tuple[int, ...] = (9201, 9202)
    user: int = 9211
    presence: int = 9221
    notify: int = 9231
    persister: tuple[int, ...] = (9241, 9242)
    # Prometheus endpoints, one per service instance (svckit.metrics.DEFAULT_PORTS onwards).
    gateway_metrics: tuple[int, ...] = (METRICS_PORTS["gateway"], METRICS_PORTS["gateway"] + 1)
    chat_metrics: tuple[int, ...] = (METRICS_PORTS["chat_svc"], METRICS_PORTS["chat_svc"] + 1)
    user_metrics: int = METRICS_PORTS["user_svc"]
    presence_metrics: int = METRICS_PORTS["presence_svc"]
    notify_metrics: int = METRICS_PORTS["notify_svc"]
    persister_metrics: tuple[int, ...] = (
        METRICS_PORTS["persister"],
        METRICS_PORTS["persister"] + 1,
    )
    kafka: int = 9092
    postgres: int = 5433
    valkey: int = 6380

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PortPlan:
        """Defaults, each overridden by its variable (PORT_VARIABLES); lists are comma-separated."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            var, _ = PORT_VARIABLES[f.name]
            text = env.get(var)
            if text is None or not text.strip():
                continue
            try:
                parts = tuple(int(p) for p in text.split(",") if p.strip())
                if not parts or any(not 0 < p < 65536 for p in parts):
                    raise ValueError(text)
            except ValueError:
                raise MeshError(f"{var} must be a port number (1-65535), got {text!r}") from None
            if isinstance(f.default, tuple):
                values[f.name] = parts
            elif len(parts) != 1:
                raise MeshError(f"{var} takes one port, got {text!r}")
            else:
                values[f.name] = parts[0]
        plan = cls(**values)  # type: ignore[arg-type]
        if len(plan.gateway_http) != len(plan.gateway_grpc):
            raise MeshError(
                "CHATMESH_GATEWAY_HTTP_PORTS and CHATMESH_GATEWAY_GRPC_PORTS must list as many "
                f"ports each, got {plan.gateway_http} and {plan.gateway_grpc}"
            )
        # One metrics port per instance: unless given, they follow on from the first default.
        for metrics_field, instances_field in _METRICS_OF.items():
            wanted = len(getattr(plan, instances_field))
            given: tuple[int, ...] = getattr(plan, metrics_field)
            if len(given) == wanted:
                continue
            var = PORT_VARIABLES[metrics_field][0]
            if metrics_field in values:
                raise MeshError(
                    f"{var} must list one port per instance ({wanted}), got {text_of(given)}"
                )
            following = tuple(given[0] + i for i in range(wanted))
            plan = dataclasses.replace(plan, **{metrics_field: following})  # type: ignore[arg-type]
        return plan

    @classmethod
    def free(cls, gateways: int = 2, chats: int = 2, persisters: int = 2) -> PortPlan:
        """Ports the kernel reports free now, for tests."""
        counts = {"gateways": gateways, "chats": chats, "persisters": persisters}
        sizes = {
            f.name: counts[_INSTANCES_OF[f.name]] if isinstance(f.default, tuple) else 1
            for f in dataclasses.fields(cls)
        }
        ports = iter(servers.free_ports(sum(sizes.values())))
        values: dict[str, object] = {}
        for name, size in sizes.items():
            taken = tuple(next(ports) for _ in range(size))
            values[name] = taken if name in _INSTANCES_OF else taken[0]
        return cls(**values)  # type: ignore[arg-type]

    def entries(self) -> list[tuple[int, str, str]]:
        """(port, component, variable) for every port of the plan."""
        rows = []
        for f in dataclasses.fields(self):
            var, component = PORT_VARIABLES[f.name]
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                for i, port in enumerate(value, start=1):
                    rows.append((port, component.format(n=i), var))
            else:
                rows.append((value, component, var))
        return rows

    def as_env(self) -> dict[str, str]:
        """The plan as the launcher's own variables (to run `python -m launcher up` on it)."""
        env = {}
        for f in dataclasses.fields(self):
            var, _ = PORT_VARIABLES[f.name]
            value = getattr(self, f.name)
            env[var] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return env

    def check_free(self) -> None:
        """Raise PortInUseError naming the first port that is duplicated or taken."""
        seen: dict[int, str] = {}
        for port, component, var in self.entries():
            if port in seen:
                raise PortInUseError(
                    f"port {port} is planned twice ({seen[port]} and {component}): "
                    f"set {var} to another port"
                )
            seen[port] = component
        for port, component, var in self.entries():
            if not servers.port_is_free(port):
                raise PortInUseError(
                    f"port {port} ({component}) is already in use on {HOST}: "
                    f"stop what holds it or set {var} to another port"
                )


def text_of(ports: tuple[int, ...]) -> str:
    return ",".join(map(str, ports))


# List fields -> which instance count sizes them (PortPlan.free).
_INSTANCES_OF = {
    "gateway_http": "gateways",
    "gateway_grpc": "gateways",
    "gateway_metrics": "gateways",
    "chat": "chats",
    "chat_metrics": "chats",
    "persister": "persisters",
    "persister_metrics": "persisters",
}
# Metrics list fields -> the ports field with one entry per instance.
_METRICS_OF = {
    "gateway_metrics": "gateway_http",
    "chat_metrics": "chat",
    "persister_metrics": "persister",
}

# field -> (variable, component); `{n}` is the instance number for lists.
PORT_VARIABLES: dict[str, tuple[str, str]] = {
    "edge": ("CHATMESH_EDGE_PORT", "envoy edge listener"),
    "mesh": ("CHATMESH_MESH_PORT", "envoy mesh listener"),
    "envoy_admin": ("CHATMESH_ENVOY_ADMIN_PORT", "envoy admin"),
    "gateway_http": ("CHATMESH_GATEWAY_HTTP_PORTS", "gateway-{n} HTTP"),
    "gateway_grpc": ("CHATMESH_GATEWAY_GRPC_PORTS", "gateway-{n} gRPC"),
    "chat": ("CHATMESH_CHAT_PORTS", "chat_svc-{n} gRPC"),
    "user": ("CHATMESH_USER_PORT", "user_svc gRPC"),
    "presence": ("CHATMESH_PRESENCE_PORT", "presence_svc gRPC"),
    "notify": ("CHATMESH_NOTIFY_PORT", "notify_svc gRPC"),
    "persister": ("CHATMESH_PERSISTER_PORTS", "persister-{n} gRPC"),
    "gateway_metrics": ("CHATMESH_GATEWAY_METRICS_PORTS", "gateway-{n} metrics"),
    "chat_metrics": ("CHATMESH_CHAT_METRICS_PORTS", "chat_svc-{n} metrics"),
    "user_metrics": ("CHATMESH_USER_METRICS_PORT", "user_svc metrics"),
    "presence_metrics": ("CHATMESH_PRESENCE_METRICS_PORT", "presence_svc metrics"),
    "notify_metrics": ("CHATMESH_NOTIFY_METRICS_PORT", "notify_svc metrics"),
    "persister_metrics": ("CHATMESH_PERSISTER_METRICS_PORTS", "persister-{n} metrics"),
    "kafka": ("CHATMESH_KAFKA_PORT", "tansu (Kafka) broker"),
    "postgres": ("CHATMESH_POSTGRES_PORT", "postgresql"),
    "valkey": ("CHATMESH_VALKEY_PORT", "valkey (Redis)"),
}


# --------------------------------------------------------------------------------------------
# Instances.


def grpc_serving(port: int, timeout_s: float = 1.0) -> bool:
    """grpc.health.v1 Check (overall service "") answers SERVING, directly on the port."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(f"{HOST}:{port}")
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
        )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


@dataclass
class Instance:
    """One process of the mesh: a server (postgres...) or a service instance (gateway-1...)."""

    name: str
    kind: str  # "server" or "service"
    address: str  # what to print: host:port (several for envoy and gateways)
    ports: tuple[int, ...]
    child: Child
    ready: Callable[[], bool]
    after_start: Callable[[], None] | None = None
    package: str | None = None  # the Python package of a service
    env: Mapping[str, str] = field(default_factory=dict)  # a service's CHATMESH_* settings
    envoy_endpoints: tuple[tuple[str, int], ...] = ()  # (Envoy cluster, port) it serves in
    metrics_url: str | None = None  # its Prometheus endpoint (Envoy: admin /stats/prometheus)

    @property
    def pid(self) -> int | None:
        return self.child.pid

    @property
    def log_path(self) -> Path:
        return self.child.log_path

    def alive(self) -> bool:
        return self.child.alive()


@dataclass(frozen=True)
class ServiceSpec:
    package: str
    name: str
    grpc_port: int
    env: Mapping[str, str]
    metrics_port: int
    http_port: int | None = None
    cluster: str | None = None  # the Envoy cluster routing to it (gateways: by HTTP port)


class Mesh:
    """Start, inspect, stop, kill and restart the local mesh.

    Attributes once started: `ports` (PortPlan), `state_dir`, `instances` (name -> Instance, in
    start order), `edge_url`, `mesh_addr`, `admin_url`, `kafka_bootstrap`, `redis_url`,
    `dsn(key)` with key in DATABASES ("users", "messages", "notify").
    """

    def __init__(
        self,
        ports: PortPlan,
        state_dir: Path = DEFAULT_STATE_DIR,
        *,
        fsync: bool = True,
        out: Callable[[str], None] | None = None,
        ready_timeout_s: float = 60.0,
        service_env: Mapping[str, str] | None = None,
        commands: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """`fsync=False` in tests. `service_env` is added to every service's environment.

        `commands` overrides a service's argv by package name (default `python -m <package>`).
        """
        self.ports = ports
        self.state_dir = state_dir.resolve()
        self._state_lock = threading.Lock()  # see _write_state
        self.log_dir = self.state_dir / "logs"
        self.fsync = fsync
        self.out = out if out is not None else (lambda line: print(line, flush=True))
        self.ready_timeout_s = ready_timeout_s
        self.service_env = dict(service_env or {})
        self.commands = dict(commands or {})
        self.instances: dict[str, Instance] = {}
        self.postgres: servers.Postgres | None = None
        self._abort = threading.Event()
        self._started = False

    # ---- addresses

    @property
    def edge_url(self) -> str:
        return f"http://{HOST}:{self.ports.edge}"

    @property
    def mesh_addr(self) -> str:
        return f"{HOST}:{self.ports.mesh}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.ports.envoy_admin}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.ports.kafka}"

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.ports.valkey}/0"

    def dsn(self, key: str) -> str:
        """DSN of one service database: key "users", "messages" or "notify"."""
        return f"postgresql://{servers.PG_SUPERUSER}@{HOST}:{self.ports.postgres}/{DATABASES[key]}"

    def _log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    # ---- start

    def request_stop(self) -> None:
        """Abandon a start in progress (safe from a signal handler or another thread)."""
        self._abort.set()

    def _aborted(self) -> bool:
        return self._abort.is_set()

    def start(self) -> Mesh:
        """Start everything in order and wait until the edge's /healthz is 200.

        On any failure everything started so far is stopped and MeshError says what failed.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._reap_previous_launcher()
        self.ports.check_free()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._write_state()
        try:
            tracing = self.tracing()
        except ValueError as exc:
            raise MeshError(str(exc)) from None
        self._write_prometheus_config()
        try:
            self._start_servers(tracing)
            self._start_services(self._service_specs())
            self._wait_envoy_healthy(list(self.instances.values()))
            self._wait_edge()
        except BaseException as exc:
            self.stop()
            if isinstance(exc, StartError):
                raise MeshError(str(exc)) from None
            raise
        self._started = True
        return self

    def tracing(self) -> envoy_config.Tracing | None:
        """Envoy's tracing, from the OTEL_* variables the services get; None when off."""
        return envoy_config.Tracing.from_env({**os.environ, **self.service_env})

    def scrape_targets(self) -> dict[str, list[str]]:
        """Prometheus job -> host:port of each endpoint (Envoy's on its admin listener)."""
        p = self.ports
        jobs = {
            "gateway": p.gateway_metrics,
            "chat_svc": p.chat_metrics,
            "user_svc": (p.user_metrics,),
            "presence_svc": (p.presence_metrics,),
            "notify_svc": (p.notify_metrics,),
            "persister": p.persister_metrics,
            "envoy": (p.envoy_admin,),
        }
        return {job: [f"{HOST}:{port}" for port in ports] for job, ports in jobs.items()}

    def _write_prometheus_config(self) -> Path:
        """A Prometheus configuration scraping every endpoint of this mesh, with the alert rules
        (`prometheus --config.file=<state>/prometheus.yml`)."""
        jobs = []
        for job, targets in self.scrape_targets().items():
            entry: dict[str, object] = {"job_name": job, "static_configs": [{"targets": targets}]}
            if job == "envoy":
                entry["metrics_path"] = "/stats/prometheus"
            jobs.append(entry)
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": [str(ALERT_RULES)],
            "scrape_configs": jobs,
        }
        path = self.state_dir / PROMETHEUS_FILE
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        return path

    def _start_servers(self, tracing: envoy_config.Tracing | None = None) -> None:
        p = self.ports
        abort = self._aborted
        tansu = servers.start_tansu(p.kafka, self._log("tansu"), abort=abort)
        self._add(
            Instance(
                name="tansu",
                kind="server",
                address=self.kafka_bootstrap,
                ports=(p.kafka,),
                child=tansu,
                ready=lambda: servers.tcp_accepts(p.kafka),
                after_start=self._create_topics,
            )
        )
        self._create_topics()

        pg = servers.start_postgres(
            p.postgres, self.state_dir, self._log("postgres"), fsync=self.fsync, abort=abort
        )
        self.postgres = pg
        self._add(
            Instance(
                name="postgres",
                kind="server",
                address=f"{HOST}:{p.postgres}",
                ports=(p.postgres,),
                child=pg.child,
                ready=pg.ready,
                after_start=self._create_databases,
            )
        )
        self._create_databases()

        valkey = servers.start_valkey(
            p.valkey, self.state_dir / "valkey", self._log("valkey"), abort=abort
        )
        self._add(
            Instance(
                name="valkey",
                kind="server",
                address=f"{HOST}:{p.valkey}",
                ports=(p.valkey,),
                child=valkey,
                ready=lambda: servers.valkey_ready(p.valkey),
            )
        )

        config = servers.write_envoy_config(
            envoy_config.render(self.topology()), self.state_dir / "envoy" / "envoy.json"
        )
        if tracing is not None:
            self.out(
                f"{'tracing':<14} OTLP {tracing.protocol} to {tracing.host}:{tracing.port} "
                "(services and Envoy)"
            )
        envoy = servers.start_envoy(config, p.envoy_admin, self._log("envoy"), abort=abort)
        self._add(
            Instance(
                name="envoy",
                kind="server",
                address=f"edge {self.edge_url} mesh {self.mesh_addr} admin {self.admin_url}",
                ports=(p.edge, p.mesh, p.envoy_admin),
                child=envoy,
                ready=lambda: servers.envoy_ready(p.envoy_admin),
                metrics_url=f"{self.admin_url}/stats/prometheus",
            )
        )

    def _create_topics(self) -> None:
        servers.create_topics(self.kafka_bootstrap, {MESSAGES_TOPIC: MESSAGES_PARTITIONS})

    def _create_databases(self) -> None:
        assert self.postgres is not None
        for db in DATABASES.values():
            self.postgres.create_database(db)

    def topology(self) -> envoy_config.Topology:
        p = self.ports
        return envoy_config.Topology(
            edge_port=p.edge,
            mesh_port=p.mesh,
            admin_port=p.envoy_admin,
            gateway_http_ports=p.gateway_http,
            grpc_ports={
                channels.USER: (p.user,),
                channels.CHAT: p.chat,
                channels.PRESENCE: (p.presence,),
                channels.NOTIFY: (p.notify,),
                channels.PERSISTER: p.persister,
            },
            access_log_path=str(self._log("envoy-access")),
            tracing=self.tracing(),
        )

    def _service_specs(self) -> list[ServiceSpec]:
        p = self.ports
        kafka = {"CHATMESH_KAFKA_BOOTSTRAP": self.kafka_bootstrap}
        redis = {"CHATMESH_REDIS_URL": self.redis_url}
        specs = [
            ServiceSpec(
                "user_svc",
                "user_svc",
                p.user,
                {"CHATMESH_USER_DB_DSN": self.dsn("users")},
                p.user_metrics,
                cluster=channels.USER,
            ),
            ServiceSpec(
                "presence_svc",
                "presence_svc",
                p.presence,
                redis,
                p.presence_metrics,
                cluster=channels.PRESENCE,
            ),
            ServiceSpec(
                "notify_svc",
                "notify_svc",
                p.notify,
                {"CHATMESH_NOTIFY_DB_DSN": self.dsn("notify")},
                p.notify_metrics,
                cluster=channels.NOTIFY,
            ),
        ]
        persisters = zip(p.persister, p.persister_metrics, strict=True)
        for i, (port, metrics) in enumerate(persisters, start=1):
            specs.append(
                ServiceSpec(
                    "persister",
                    f"persister-{i}",
                    port,
                    {**kafka, "CHATMESH_MESSAGE_DB_DSN": self.dsn("messages")},
                    metrics,
                    cluster=channels.PERSISTER,
                )
            )
        for i, (port, metrics) in enumerate(zip(p.chat, p.chat_metrics, strict=True), start=1):
            specs.append(
                ServiceSpec(
                    "chat_svc",
                    f"chat_svc-{i}",
                    port,
                    # The local broker needs one record per batch for exact log-end offsets (and
                    # exact consumer lag).
                    {**kafka, **redis, "CHATMESH_KAFKA_BATCH_MAX": "1"},
                    metrics,
                    cluster=channels.CHAT,
                )
            )
        gateways = zip(p.gateway_http, p.gateway_grpc, p.gateway_metrics, strict=True)
        for i, (http, grpc_port, metrics) in enumerate(gateways, 1):
            specs.append(
                ServiceSpec(
                    "gateway",
                    f"gateway-{i}",
                    grpc_port,
                    {
                        "CHATMESH_HTTP_HOST": HOST,
                        "CHATMESH_HTTP_PORT": str(http),
                        "CHATMESH_ADVERTISE_ADDR": f"{HOST}:{grpc_port}",
                    },
                    metrics,
                    http_port=http,
                    cluster=envoy_config.GATEWAY_HTTP_CLUSTER,
                )
            )
        return specs

    def _service_instance(self, spec: ServiceSpec) -> Instance:
        env = {
            "CHATMESH_GRPC_HOST": HOST,
            "CHATMESH_GRPC_PORT": str(spec.grpc_port),
            "CHATMESH_MESH_ADDR": self.mesh_addr,
            "CHATMESH_INSTANCE_ID": spec.name,
            "CHATMESH_METRICS_HOST": HOST,
            "CHATMESH_METRICS_PORT": str(spec.metrics_port),
            # One service name per package in traces, whatever the developer's environment says.
            "OTEL_SERVICE_NAME": spec.package,
            **spec.env,
        }
        argv = self.commands.get(spec.package, [sys.executable, "-m", spec.package])
        run_dir = self.state_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        child = Child(
            name=spec.name,
            argv=list(argv),
            log_path=self._log(spec.name),
            # Inherit the developer's environment (CHATMESH_LOG_LEVEL...), then ours on top.
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.service_env, **env},
            # Not the repository: `python -m` puts the working folder first on sys.path.
            cwd=run_dir,
            stop_timeout_s=SERVICE_STOP_TIMEOUT_S,
        )
        if spec.http_port is not None:
            http, grpc_port = spec.http_port, spec.grpc_port

            def ready() -> bool:
                livez = servers.http_status(f"http://{HOST}:{http}/livez")
                return livez == 200 and servers.tcp_accepts(grpc_port)

            address = f"http {HOST}:{http} grpc {HOST}:{grpc_port}"
            ports: tuple[int, ...] = (http, grpc_port, spec.metrics_port)
            routed_port = http
        else:
            port = spec.grpc_port

            def ready() -> bool:
                return grpc_serving(port)

            address = f"{HOST}:{port}"
            ports = (port, spec.metrics_port)
            routed_port = port
        endpoints = ((spec.cluster, routed_port),) if spec.cluster is not None else ()
        return Instance(
            name=spec.name,
            kind="service",
            address=address,
            ports=ports,
            child=child,
            ready=ready,
            package=spec.package,
            env=env,
            envoy_endpoints=endpoints,
            metrics_url=f"http://{HOST}:{spec.metrics_port}/metrics",
        )

    def _start_services(self, specs: Sequence[ServiceSpec]) -> None:
        """Start every service at once (they import in parallel), then wait for each."""
        pending = []
        for spec in specs:
            inst = self._service_instance(spec)
            inst.child.start()
            self._add(inst, announce=False)
            pending.append(inst)
        deadline = time.monotonic() + self.ready_timeout_s
        while pending:
            if self._aborted():
                raise servers.Interrupted("stop requested while services were starting")
            for inst in list(pending):
                if not inst.alive():
                    raise StartError(inst.child.describe_failure())
                if inst.ready():
                    self._announce(inst)
                    pending.remove(inst)
            if pending and time.monotonic() > deadline:
                names = ", ".join(i.name for i in pending)
                first = pending[0]
                raise StartError(
                    f"not ready after {self.ready_timeout_s:.0f} s: {names}\n"
                    f"{first.child.describe_failure()}"
                )
            if pending:
                time.sleep(0.1)

    def _wait_envoy_healthy(self, instances: Sequence[Instance], timeout_s: float = 30.0) -> None:
        """Wait until Envoy's own health checks pass for every endpoint of `instances`.

        A service answering its health check is not enough: Envoy routes to it only once its
        active check passed (every second), so a test that kills the *other* instance right
        after a restart would otherwise find no healthy upstream.
        """
        wanted = [(i, ep) for i in instances for ep in i.envoy_endpoints]
        if not wanted:
            return

        def healthy() -> bool:
            health = servers.envoy_host_health(self.ports.envoy_admin)
            return all(health.get(ep) == "healthy" for _, ep in wanted)

        envoy = self.instances.get("envoy")
        servers.wait_until(
            healthy,
            envoy.child if envoy is not None else None,
            "envoy health checks of " + ", ".join(sorted({i.name for i, _ in wanted})),
            timeout_s,
            interval_s=0.1,
            abort=self._aborted,
        )

    def _wait_edge(self) -> None:
        url = f"{self.edge_url}/healthz"
        servers.wait_until(
            lambda: servers.http_status(url) == 200,
            None,
            f"GET {url} == 200",
            self.ready_timeout_s,
            interval_s=0.1,
            abort=self._aborted,
        )
        self.out(
            f"{'prometheus':<14} scrape config {self.state_dir / PROMETHEUS_FILE} "
            "(every metrics endpoint above, with the alert rules)"
        )
        self.out(f"{'edge':<14} {self.edge_url}  GET /healthz 200: the mesh is ready")

    def _add(self, inst: Instance, announce: bool = True) -> None:
        self.instances[inst.name] = inst
        self._write_state()
        if announce:
            self._announce(inst)

    def _announce(self, inst: Instance) -> None:
        metrics = f"  metrics {inst.metrics_url}" if inst.metrics_url else ""
        self.out(f"{inst.name:<14} {inst.address:<28} log {inst.log_path}{metrics}")

    # ---- state file and leftovers

    def _state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def _write_state(self) -> None:
        # Instances may be restarted from several threads at once (tests do): one writer at a
        # time, each reading the instances under the lock, so the last write is the newest.
        with self._state_lock:
            record = {
                "launcher_pid": os.getpid(),
                "launcher_start_ticks": servers.start_ticks(os.getpid()),
                "ports": dataclasses.asdict(self.ports),
                "processes": {
                    name: {
                        "pid": inst.pid,
                        "start_ticks": servers.start_ticks(inst.pid),
                        "argv": list(inst.child.argv),
                        "ports": list(inst.ports),
                    }
                    for name, inst in self.instances.items()
                    if inst.pid is not None and inst.alive()
                },
            }
            tmp = self._state_path().with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            tmp.replace(self._state_path())

    def _reap_previous_launcher(self) -> None:
        """Refuse to share a state folder with a live launcher; kill a dead one's leftovers."""
        other = live_launcher(self.state_dir)
        if other is not None:
            raise MeshError(
                f"another launcher (pid {other}) is using {self.state_dir}: stop it first, "
                "or use another state folder"
            )
        kill_leftovers(self.state_dir)

    # ---- stop, kill, restart

    def instance(self, name: str) -> Instance:
        """An instance by name (`gateway-1`), or by package if it has one instance (`user_svc`)."""
        if name in self.instances:
            return self.instances[name]
        matches = [i for i in self.instances.values() if i.package == name]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(self.instances)
        raise KeyError(f"no single instance named {name!r}; known: {known}")

    def stop_instance(self, name: str, timeout_s: float | None = None) -> None:
        """Graceful: SIGTERM, wait (10 s for services), then SIGKILL."""
        self.instance(name).child.stop(timeout_s)

    def kill_instance(self, name: str) -> None:
        """Crash: SIGKILL its process group now."""
        self.instance(name).child.kill()

    def restart_instance(self, name: str, timeout_s: float | None = None) -> Instance:
        """Start a stopped or killed instance again on the same ports; wait until it is ready."""
        inst = self.instance(name)
        if inst.alive():
            inst.child.stop()
        inst.child.start()
        self._write_state()
        servers.wait_until(
            inst.ready,
            inst.child,
            inst.name,
            self.ready_timeout_s if timeout_s is None else timeout_s,
            interval_s=0.1,
        )
        if inst.after_start is not None:
            inst.after_start()
        self._wait_envoy_healthy([inst])
        return inst

    def restart_dead(self) -> list[str]:
        """Restart every instance that died (tests heal the shared mesh after killing one)."""
        names = [i.name for i in self.dead_instances()]
        for name in names:
            self.restart_instance(name)
        return names

    def dead_instances(self) -> list[Instance]:
        """Instances that were started and are no longer running."""
        return [i for i in self.instances.values() if i.child.popen is not None and not i.alive()]

    def pids(self) -> dict[str, int]:
        """name -> pid (= process group id) of every instance started so far."""
        return {n: i.pid for n, i in self.instances.items() if i.pid is not None}

    def stop(self) -> None:
        """Stop everything: services at once (SIGTERM, 10 s, SIGKILL), then servers in reverse."""
        services = [i for i in self.instances.values() if i.kind == "service"]
        for inst in services:
            if inst.alive():
                inst.child._signal_group(inst.child.stop_signal)
        deadline = time.monotonic() + SERVICE_STOP_TIMEOUT_S
        for inst in services:
            inst.child.stop(max(0.0, deadline - time.monotonic()))
        for name in ("envoy", "valkey", "postgres", "tansu"):
            if name in self.instances:
                self.instances[name].child.stop()
        self._started = False

    def clean(self) -> None:
        """Remove what the mesh created outside its state folder (PostgreSQL under /tmp)."""
        servers.remove_external_paths(self.state_dir)

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def read_state(state_dir: Path) -> dict[str, object] | None:
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def recorded_processes(state_dir: Path) -> dict[int, int]:
    """pgid -> start ticks of every child the last launcher on this state folder recorded."""
    record = read_state(state_dir) or {}
    processes = record.get("processes")
    result: dict[int, int] = {}
    if isinstance(processes, dict):
        for info in processes.values():
            if not isinstance(info, dict):
                continue
            pid, started = info.get("pid"), info.get("start_ticks")
            if isinstance(pid, int) and isinstance(started, int):
                result[pid] = started
    return result


def live_launcher(state_dir: Path) -> int | None:
    """The pid of another launcher still running on this state folder, if any."""
    record = read_state(state_dir) or {}
    pid, started = record.get("launcher_pid"), record.get("launcher_start_ticks")
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    if started is not None and servers.start_ticks(pid) == started:
        return pid
    return None


def kill_leftovers(state_dir: Path) -> list[int]:
    """SIGKILL the recorded children of a launcher that did not stop them (SIGKILLed)."""
    recorded = recorded_processes(state_dir)
    killed = servers.kill_recorded_groups(recorded)
    deadline = time.monotonic() + 5
    while killed and time.monotonic() < deadline:
        if all(servers.start_ticks(pid) != recorded[pid] for pid in killed):
            break
        time.sleep(0.05)
    return killed


__all__ = [
    "DATABASES",
    "DEFAULT_STATE_DIR",
    "PORT_VARIABLES",
    "Instance",
    "Mesh",
    "MeshError",
    "PortInUseError",
    "PortPlan",
    "kill_leftovers",
    "live_launcher",
    "read_state",
    "recorded_processes",
]
