"""The one launcher of the local mesh: `python -m launcher up` (what `make up` runs) and the tests.

- `servers`: start and stop the real servers (Tansu, PostgreSQL, Valkey, Envoy) as child processes.
- `envoy_config`: render Envoy's bootstrap from the port plan.
- `mesh`: the `Mesh` class that starts everything in order, used alike by `make up` and by the
  end-to-end tests, so the tests exercise exactly what a developer runs.
"""
