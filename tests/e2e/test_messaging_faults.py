"""No loss, no second copy, order kept, whatever fails while messages are in flight (PROTOCOL.md
guarantees 2, 3 and 4): client reconnects, a gateway instance killed or drained, a chat_svc
instance killed, the persisters killed; each restarted while the sender keeps sending.

The clients behave as PROTOCOL.md tells them: a device whose socket closes reconnects (to its
gateway or the other one) with `?resume=<last cursor>`; the sender resends whatever got no
`message_ack` with the same `client_msg_id`. At the end every device syncs from its last cursor,
and then:

- every acknowledged message reached every device of its recipient and the sender's other
  device, once after dropping duplicate msg_ids;
- one `client_msg_id`, one msg_id: the one its `message_ack` named, on every device;
- on every connection, after dropping msg_ids the device already had, each conversation comes
  in increasing msg_id order.

Waits are conditions with deadlines: a number of acks, a reconnect, an instance's readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from client import Clients, ConnectionClosed, Device, Sender

from launcher.mesh import Mesh
from svckit.testing import eventually

pytestmark = pytest.mark.e2e

WARMUP_ACKS = 30  # acks before the fault: messages are flowing
AFTER_ACKS = 30  # acks after each step of the fault
RECIPIENTS = 6  # conversations; ring hashing spreads them over both chat_svc instances
BURST = 40  # sends right before a crash, so that some are in flight when it hits


@pytest.fixture
async def chat(mesh: Mesh) -> AsyncIterator[Clients]:
    async with Clients(mesh.edge_url, mesh.ports.gateway_http) as clients:
        yield clients


@dataclass
class Scenario:
    chat: Clients
    mesh: Mesh
    sender: Sender
    sending_device: Device
    watchers: dict[str, tuple[Device, str | None]]  # name -> (device, recipient or None: all)
    in_flight_at_faults: list[int] = field(default_factory=list)

    @property
    def devices(self) -> list[Device]:
        return [self.sending_device] + [d for d, _ in self.watchers.values()]

    def on_gateway(self, index: int) -> list[Device]:
        """Devices whose current socket is pinned to gateway `index`."""
        base = self.chat.gw(index)
        return [d for d in self.devices if d.connections and d.conn.base == base]

    async def more_acks(self, count: int = AFTER_ACKS, within: float = 45.0) -> None:
        await self.sender.acks_at_least(len(self.sender.acked) + count, within=within)

    async def more_sends(self, count: int, within: float = 30.0) -> None:
        """Until the sender has sent `count` more new messages (acknowledged or not)."""
        target = len(self.sender.sent) + count

        async def sent_enough() -> bool:
            return len(self.sender.sent) >= target

        await eventually(sent_enough, timeout_s=within, what=f"{count} more sends")

    @staticmethod
    def sockets_so_far(devices: list[Device]) -> dict[int, int]:
        return {id(d): len(d.connections) for d in devices}

    async def reconnected(
        self, devices: list[Device], before: dict[int, int], within: float = 30.0
    ) -> None:
        """Each of `devices` has a newer socket than at `before` (`sockets_so_far`), and it
        finished resuming."""

        async def one(device: Device) -> None:
            while True:
                conn = await device.connected(within=within)
                if len(device.connections) > before[id(device)] and not conn.closed.is_set():
                    with contextlib.suppress(ConnectionClosed):
                        await conn.resumed(within=within)
                        return
                await asyncio.sleep(0.02)  # poll the device's state under the deadline

        await asyncio.wait_for(asyncio.gather(*(one(d) for d in devices)), within)

    async def mesh_call(self, method: Callable[[str], object], name: str) -> None:
        await asyncio.to_thread(method, name)

    async def crash(self, method: Callable[[str], object], *names: str) -> None:
        """A burst of sends, then `method` (kill or stop) on `names` at once: in flight."""
        await self.sender.burst(BURST)
        await asyncio.gather(*(self.mesh_call(method, name) for name in names))
        self.in_flight_at_faults.append(len(self.sender.pending))


async def start(chat: Clients, mesh: Mesh) -> Scenario:
    """A sender (a1 on gateway-1, its other device a2 on gateway-2) and RECIPIENTS recipients,
    the first with two devices (one per gateway), the others on alternating gateways."""
    a1, a2 = await chat.user(2)
    recipients = [await chat.user(2 if n == 0 else 1) for n in range(RECIPIENTS)]
    sender = Sender([r[0].user_id for r in recipients], prefix="f")
    g0, g1 = chat.gw(0), chat.gw(1)
    sending = chat.device(
        a1, [g0, g1, chat.edge], "a1", on_frame=sender.on_frame, on_connect=sender.on_connect
    )
    watchers: dict[str, tuple[Device, str | None]] = {
        "a2": (chat.device(a2, [g1, g0, chat.edge], "a2"), None)
    }
    for n, sessions in enumerate(recipients):
        for k, session in enumerate(sessions):
            own = (n + k) % 2
            bases = [chat.gw(own), chat.gw(1 - own), chat.edge]
            name = f"r{n}{'ab'[k]}"
            watchers[name] = (chat.device(session, bases, name), session.user_id)
    await asyncio.gather(sending.start(), *(d.start() for d, _ in watchers.values()))
    return Scenario(chat, mesh, sender, sending, watchers)


async def run(chat: Clients, mesh: Mesh, fault: Callable[[Scenario], Awaitable[None]]) -> Scenario:
    """Send continuously, apply `fault` once messages flow, keep sending, then check."""
    scenario = await start(chat, mesh)
    stop = asyncio.Event()
    sending = asyncio.ensure_future(scenario.sender.run(scenario.sending_device, stop))
    try:
        await scenario.sender.acks_at_least(WARMUP_ACKS)
        await fault(scenario)
        await scenario.more_acks()
        stop.set()
        await sending
        await scenario.sender.drain()
    finally:
        stop.set()
        if not sending.done():
            sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
    await check(scenario)
    return scenario


async def check(scenario: Scenario) -> None:
    sender = scenario.sender
    assert not sender.ack_mismatches, sender.ack_mismatches  # one client_msg_id, one msg_id
    assert not sender.bad_input, sender.bad_input[:5]
    acked = {cmid: ack["msg_id"] for cmid, ack in sender.acked.items()}
    assert len(set(acked.values())) == len(acked), "two client_msg_ids got the same msg_id"
    cmid_of = {msg_id: cmid for cmid, msg_id in acked.items()}
    a_user = scenario.sending_device.session.user_id

    missing: dict[str, list[str]] = {}
    for name, (device, recipient) in scenario.watchers.items():
        wanted = [
            msg_id
            for cmid, msg_id in acked.items()
            if recipient is None or sender.sent[cmid][0] == recipient
        ]
        still = await device.sync_until(wanted, name)
        if still:
            missing[name] = still
    summary = stats(scenario)
    assert not missing, f"acknowledged messages never delivered: {missing}\n{summary}"

    problems: list[str] = []
    for name, (device, _) in scenario.watchers.items():
        ids_by_cmid: dict[str, set[str]] = defaultdict(set)
        for msg_id, frame in device.seen.items():
            if frame["from"] != a_user:
                continue
            ids_by_cmid[frame["client_msg_id"]].add(msg_id)
            cmid = cmid_of.get(msg_id)
            if cmid is None:
                problems.append(f"{name}: {msg_id} ({frame['client_msg_id']}) was never acked")
                continue
            to, content = sender.sent[cmid]
            if (frame["client_msg_id"], frame["to"], frame["content"]) != (cmid, to, content):
                problems.append(f"{name}: {msg_id} is {frame}, sent as {cmid} {to} {content}")
        for cmid, ids in ids_by_cmid.items():
            if len(ids) > 1:
                problems.append(f"{name}: {cmid} arrived as {len(ids)} messages {sorted(ids)}")
        problems.extend(f"{name}: {v}" for v in device.order_violations())
    assert not problems, "\n".join(problems[:30]) + f"\n{summary}"
    print(summary)


def stats(scenario: Scenario) -> str:
    sender = scenario.sender
    reconnects = {d.name: len(d.connections) - 1 for d in scenario.devices if d.connections}
    codes = {d.name: d.close_codes for d in scenario.devices if d.close_codes}
    errors = sorted({str(e.get("code")) for e in sender.errors})
    return (
        f"sent {len(sender.sent)}, acked {len(sender.acked)}, resent {sender.resends} "
        f"({sender.timeout_resends} after no answer), error codes {errors}, "
        f"unacked right after each fault {scenario.in_flight_at_faults}, "
        f"reconnects {reconnects}, close codes {codes}"
    )


# --- client-side reconnects -----------------------------------------------------------------------


async def test_no_loss_across_client_reconnects(chat: Clients, mesh: Mesh) -> None:
    """Devices drop their sockets and resume from their last cursor, three times, while the
    sender keeps sending (and drops its own socket too, resending what had no ack)."""

    async def fault(s: Scenario) -> None:
        for _ in range(3):
            devices = s.devices
            before = s.sockets_so_far(devices)
            await s.sender.burst(BURST)
            await asyncio.gather(*(d.drop() for d in devices))
            s.in_flight_at_faults.append(len(s.sender.pending))
            await s.reconnected(devices, before)
            await s.more_acks(10)

    scenario = await run(chat, mesh, fault)
    assert all(len(d.connections) >= 4 for d in scenario.devices)


# --- gateway --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_no_loss_across_a_gateway_restart(chat: Clients, mesh: Mesh, how: str) -> None:
    """gateway-1 is killed (SIGKILL) or drained (SIGTERM: its sockets close with 1001) with
    messages in flight; its clients reconnect to gateway-2 and resume; it comes back."""

    async def fault(s: Scenario) -> None:
        on_first = s.on_gateway(0)
        assert s.sending_device in on_first and len(on_first) >= 4
        before = s.sockets_so_far(on_first)
        method = mesh.kill_instance if how == "kill" else mesh.stop_instance
        await s.crash(method, "gateway-1")
        await s.reconnected(on_first, before)
        assert not s.on_gateway(0)
        await s.more_acks()
        await s.mesh_call(mesh.restart_instance, "gateway-1")
        if how == "stop":
            for device in on_first:
                assert device.close_codes[0] == 1001, (device.name, device.close_codes)

    await run(chat, mesh, fault)


# --- chat_svc -------------------------------------------------------------------------------------


async def test_no_loss_across_a_chat_svc_restart(chat: Clients, mesh: Mesh) -> None:
    """chat_svc-1 is killed with messages in flight (the sender retries what got an error or
    nothing), keeps sending while it is down, and after it is back."""

    async def fault(s: Scenario) -> None:
        await s.crash(mesh.kill_instance, "chat_svc-1")
        await s.more_acks()
        await s.mesh_call(mesh.restart_instance, "chat_svc-1")
        await s.more_acks()
        await s.crash(mesh.kill_instance, "chat_svc-2")
        await s.more_acks()
        await s.mesh_call(mesh.restart_instance, "chat_svc-2")

    await run(chat, mesh, fault)


# --- persister ------------------------------------------------------------------------------------


async def test_no_loss_across_a_persister_restart(chat: Clients, mesh: Mesh) -> None:
    """persister-1 is killed with messages in flight and restarted; then both persisters are
    down at once (acks may pause, no acknowledged message may be lost) and come back."""

    async def fault(s: Scenario) -> None:
        await s.crash(mesh.kill_instance, "persister-1")
        await s.more_acks()
        await s.mesh_call(mesh.restart_instance, "persister-1")
        await s.more_acks()
        await s.crash(mesh.kill_instance, "persister-1", "persister-2")
        await s.more_sends(20)
        await asyncio.gather(
            s.mesh_call(mesh.restart_instance, "persister-1"),
            s.mesh_call(mesh.restart_instance, "persister-2"),
        )

    await run(chat, mesh, fault)
