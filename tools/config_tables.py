"""Print the README's configuration tables from the code that reads the settings.

`make config-docs` runs this; tests/unit/test_readme.py checks the README lists every setting.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.mesh import PORT_VARIABLES, PortPlan  # noqa: E402
from svckit.config import ServiceConfig, describe  # noqa: E402

SERVICE_CONFIGS = {
    "gateway": "gateway.config:GatewayConfig",
    "user_svc": "user_svc.config:UserConfig",
    "presence_svc": "presence_svc.__main__:PresenceConfig",
    "chat_svc": "chat_svc.__main__:ChatConfig",
    "notify_svc": "notify_svc.__main__:NotifyConfig",
    "persister": "persister.__main__:PersisterConfig",
}


def service_rows() -> list[tuple[str, str, str, str]]:
    shared = {row[0] for row in describe(ServiceConfig)}
    rows = []
    for service, spec in SERVICE_CONFIGS.items():
        module, name = spec.split(":")
        cls = getattr(importlib.import_module(module), name)
        for var, default, doc in describe(cls):
            if var not in shared:
                rows.append((var, service, default, doc))
    return rows


def port_rows() -> list[tuple[str, str, str]]:
    plan = PortPlan()
    rows = []
    for field_name, (var, component) in PORT_VARIABLES.items():
        value = getattr(plan, field_name)
        default = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        rows.append((var, default, component.replace("-{n}", "-N")))
    return rows


def main() -> None:
    print("| variable | default | meaning |\n|---|---|---|")
    for var, default, doc in describe(ServiceConfig):
        print(f"| `{var}` | `{default}` | {doc} |")
    print("\n| variable | service | default | meaning |\n|---|---|---|---|")
    for var, service, default, doc in service_rows():
        print(f"| `{var}` | {service} | `{default}` | {doc} |")
    print("\n| variable | default | component |\n|---|---|---|")
    for var, default, component in port_rows():
        print(f"| `{var}` | `{default}` | {component} |")


if __name__ == "__main__":
    main()
