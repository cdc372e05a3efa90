"""The real mesh for end-to-end tests, started by the same `Mesh` class as `make up`.

`mesh` (session-scoped) is a started `launcher.mesh.Mesh` on free ports with a temporary state
folder and PostgreSQL fsync off. What tests use:

- `mesh.edge_url` (http://127.0.0.1:PORT), `mesh.mesh_addr` (Envoy's gRPC mesh listener),
  `mesh.admin_url`, `mesh.kafka_bootstrap`, `mesh.redis_url`,
  `mesh.dsn("users" | "messages" | "notify")`;
- `mesh.ports` (a PortPlan: `.edge`, `.gateway_http`, `.chat`, ...);
- `mesh.instances`: name -> Instance (`name`, `kind`, `address`, `ports`, `pid`, `log_path`,
  `alive()`, `package`, `env`, `metrics_url`) for tansu, postgres, valkey, envoy, user_svc,
  presence_svc, notify_svc, persister-1, persister-2, chat_svc-1, chat_svc-2, gateway-1,
  gateway-2 (`metrics_url`: each service's Prometheus endpoint, Envoy's admin
  `/stats/prometheus`; `svckit.testing.scrape` reads one);
- `mesh.stop_instance(name)` (SIGTERM, up to 10 s), `mesh.kill_instance(name)` (SIGKILL),
  `mesh.restart_instance(name)` (same ports, waits until ready). `name` may be a package name
  when it has a single instance (`"user_svc"`).

Any test that uses `mesh` and leaves an instance dead gets it restarted afterwards, so one test's
crash experiment does not leak into the next. These methods block: from an async test call them
through `asyncio.to_thread`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from launcher.mesh import Mesh, PortPlan


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    state = tmp_path_factory.mktemp("mesh")
    running = Mesh(PortPlan.free(), state, fsync=False, ready_timeout_s=90.0)
    running.start()
    try:
        yield running
    finally:
        running.stop()
        running.clean()


@pytest.fixture(autouse=True)
def _heal_mesh(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used `mesh`, restart whatever it left stopped or killed."""
    yield
    if "mesh" in request.fixturenames:
        running: Mesh = request.getfixturevalue("mesh")
        running.restart_dead()
