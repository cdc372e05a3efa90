"""chatmesh's load tool and benchmark.

- `python -m bench URL` / `chatmesh-load URL` (`bench.cli`): open-loop load against any edge that
  speaks PROTOCOL.md, with coordinated-omission-free latency, loss detection and process figures;
- `python -m bench.relay` (`bench.relay`): the bare relay baseline;
- `make bench` (`bench.suite`): chatmesh against the bare relay and the raw broker and PostgreSQL
  figures, measured in the same run; JSON and a plot in `bench/results/`.
"""
