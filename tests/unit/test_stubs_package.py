"""The generated stubs build as their own installable package, chatmesh-stubs, with type stubs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stubs_wheel_holds_every_service_with_type_stubs(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT / "stubs"),
        ],
        check=True,
        timeout=120,
    )
    wheels = list(tmp_path.glob("chatmesh_stubs-*.whl"))
    assert len(wheels) == 1
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for svc in ("chat", "presence", "user", "notify", "gateway"):
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert f"chatmesh/{svc}/v1/{svc}{suffix}" in names
    assert "chatmesh/message/v1/message_pb2.pyi" in names
    assert "chatmesh/py.typed" in names


def test_generated_code_matches_the_contracts() -> None:
    from chatmesh.user.v1 import user_pb2

    service = user_pb2.DESCRIPTOR.services_by_name["UserService"]
    assert service.full_name == "chatmesh.user.v1.UserService"
    assert {m.name for m in service.methods} >= {"CreateUser", "CreateSession", "RevokeSession"}
