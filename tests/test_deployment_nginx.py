"""The deployment of docs/deployment.md, run for real: Debian's nginx (``grpc_pass``,
from docs/examples/nginx-copilotd.conf as it is) in front of two daemons on TCP
with TLS and the token, both on one PostgreSQL database.

* TLS on both hops: the client trusts only the CA that signed nginx's
  certificate; nginx checks the daemons' certificates (``grpc_ssl_verify``)
  and refuses a daemon whose certificate another CA signed.
* The token: a client without it gets UNAUTHENTICATED, with the daemon's
  message, through nginx.
* A client keeps working when the daemon running its turn is SIGKILLed: its
  call is cut (UNAVAILABLE through nginx), it looks its message up through
  the other daemon, which closes the turn as interrupted once the lease
  expires; its next message is answered. A subscriber through nginx sees
  every event, once, in order, across the death of the daemon it followed.
* A send that nginx cannot deliver (502) while the session's stream stays
  live is sent again once it can, and recorded once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import psycopg
import pytest

from copilot_client import (
    CopilotClient,
    CopilotSession,
    DaemonUnavailableError,
    SessionEvent,
    SessionEventType,
    UnauthenticatedError,
)
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd.api.access import UNAUTHENTICATED_MESSAGE
from copilotd.cli.main import STORE_DSN_ENV
from copilotd.sessions.recovery import TAKEN_OVER
from copilotd.store.postgres_schema import SCHEMA
from tests.support.certificates import ThrowawayCA
from tests.support.daemon_process import DaemonProcess
from tests.support.nginx import (
    EXAMPLE_CONFIG,
    BalancerSettings,
    NginxBalancer,
    free_loopback_port,
)
from tests.support.postgres import PostgresCluster
from tests.support.tcp_access import write_token

# Short, so that a takeover comes soon after a kill; renewed every third of it.
LEASE_SECONDS = 1.5
# Each turn streams ~6 deltas 0.4 s apart: long enough to kill its daemon mid-turn.
OFFLINE_DELAY = "0.4"
WAIT = 60.0  # the bound of every wait: a hang fails, it never passes
# The name in the daemons' certificates, which nginx checks (grpc_ssl_name).
DAEMON_TLS_NAME = "copilotd-daemon.internal"


@dataclass
class Deployment:
    """Two daemons on one database behind nginx, and what a client needs to reach them."""

    daemons: list[DaemonProcess]
    balancer: NginxBalancer
    # Signs nginx's certificate: what clients trust.
    public_ca: ThrowawayCA
    # Signs the daemons' certificates: what nginx trusts.
    internal_ca: ThrowawayCA
    token: str
    dsn: str

    def client(self, *, token: str | None = None) -> CopilotClient:
        """A client configured as docs/deployment.md says: nginx's address, the token, the CA."""
        return CopilotClient(
            address=self.balancer.address,
            token=self.token if token is None else token,
            tls_root_cert=self.public_ca.cert,
            timeout=WAIT,
        )

    def running_turn_of(self, session_id: str) -> DaemonProcess:
        """The daemon holding the session's turn lease (its owner is host:data dir)."""
        with psycopg.connect(self.dsn) as connection:
            row = connection.execute(
                f"SELECT owner FROM {SCHEMA}.turn_leases WHERE session_id = %s", (session_id,)
            ).fetchone()
        assert row is not None, f"no daemon holds a lease on {session_id}"
        owner = f"{socket.gethostname()}:{{}}"
        return next(d for d in self.daemons if row[0] == owner.format(d.data_dir))


def daemon_command(port: int, config: Path, token_file: Path, cert: Path, key: Path) -> list[str]:
    return [
        "--config",
        str(config),
        "--offline-delay",
        OFFLINE_DELAY,
        "--listen",
        f"127.0.0.1:{port}",
        "--token-file",
        str(token_file),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    ]


@pytest.fixture
def dsn(postgres_cluster: PostgresCluster, postgres_database: str) -> str:
    return postgres_cluster.dsn(postgres_database)


@pytest.fixture
def deployment(short_tmp: Path, dsn: str) -> Iterator[Deployment]:
    token = secrets.token_urlsafe(32)
    token_file = write_token(short_tmp, token)
    config = short_tmp / "config.toml"
    config.write_text(f"[store]\nlease_seconds = {LEASE_SECONDS}\n")
    os.chmod(config, 0o600)
    # Two CAs, as a deployment may have: the public name clients check, and
    # the internal one between nginx and the daemons.
    public_ca = ThrowawayCA(short_tmp, "public CA")
    internal_ca = ThrowawayCA(short_tmp, "internal CA")
    daemon_tls = internal_ca.issue("daemon", dns_names=[DAEMON_TLS_NAME])
    daemons = []
    for n in range(2):
        # Fixed ports: a daemon started again must be where nginx's upstream says.
        args = daemon_command(
            free_loopback_port(), config, token_file, daemon_tls.cert, daemon_tls.key
        )
        daemons.append(DaemonProcess(short_tmp / f"d{n}", args, extra_env={STORE_DSN_ENV: dsn}))
    balancer = NginxBalancer(
        BalancerSettings(
            daemons=[daemon_address(d) for d in daemons],
            certificate=public_ca.issue(
                "balancer", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
            ),
            daemon_ca=internal_ca.cert,
            daemon_tls_name=DAEMON_TLS_NAME,
        )
    )
    try:
        for daemon in daemons:
            daemon.start()
        balancer.start()
        yield Deployment(daemons, balancer, public_ca, internal_ca, token, dsn)
    finally:
        balancer.remove()
        for daemon in daemons:
            daemon.kill()


def daemon_address(daemon: DaemonProcess) -> str:
    return daemon.extra_args[daemon.extra_args.index("--listen") + 1]


class Follower:
    """A second client's handle on the session: every persisted event it is handed, in order.

    Persisted events only: they reach subscribers on every daemon always,
    while a turn's deltas cross daemons best-effort.
    """

    def __init__(self) -> None:
        self.persisted: list[SessionEvent] = []
        self.turn_starts: asyncio.Queue[SessionEvent] = asyncio.Queue()
        self.turn_ends: asyncio.Queue[SessionEvent] = asyncio.Queue()

    def __call__(self, event: SessionEvent) -> None:
        if event.ephemeral:
            return
        self.persisted.append(event)
        if event.type is SessionEventType.ASSISTANT_TURN_START:
            self.turn_starts.put_nowait(event)
        if event.type is SessionEventType.ASSISTANT_TURN_END:
            self.turn_ends.put_nowait(event)

    async def turns_started(self, count: int) -> list[SessionEvent]:
        return [await asyncio.wait_for(self.turn_starts.get(), WAIT) for _ in range(count)]

    async def turns_ended(self, count: int) -> list[SessionEvent]:
        return [await asyncio.wait_for(self.turn_ends.get(), WAIT) for _ in range(count)]


async def ask(session: CopilotSession, prompt: str) -> None:
    answer = await session.send_and_wait(prompt, timeout=WAIT)
    assert answer is not None and f'You said: "{prompt}"' in (answer.data.content or "")


async def test_a_client_through_nginx_rides_out_the_death_of_the_daemon_running_its_turn(
    deployment: Deployment,
) -> None:
    async with deployment.client() as sender, deployment.client() as watcher:
        session = await sender.create_session(session_id="through-nginx")
        follower = Follower()
        followed = await watcher.resume_session("through-nginx")
        followed.on(follower)
        await followed.attach()
        await ask(session, "before 0")
        await ask(session, "before 1")
        await follower.turns_started(2)
        await follower.turns_ended(2)

        # The daemon running the next turn dies in the middle of it (the turn
        # lasts ~2.4 s), while the sender's SendMessageAndWait waits on it
        # through nginx.
        doomed = asyncio.create_task(session.send_and_wait("doomed", timeout=WAIT))
        await follower.turns_started(1)
        runner = deployment.running_turn_of(session.session_id)
        survivor = next(d for d in deployment.daemons if d is not runner)
        runner.kill()
        # The call was cut; the client found its message in the log through
        # the other daemon and waited there for the turn's end: interrupted,
        # with no answer.
        assert await doomed is None
        assert "closed turn" in survivor.wait_for_output(TAKEN_OVER)
        await ask(session, "after")

        # The other way round: the dead daemon comes back, the survivor dies.
        # Whichever daemon the watcher's stream went to, it has now lost it.
        runner.start()
        survivor.kill()
        await ask(session, "last")
        ends = await follower.turns_ended(3)

    async with deployment.client() as reader:
        log = await reader.get_messages("through-nginx")
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))  # gap-free
    prompts = [e.data.content for e in log if e.type is SessionEventType.USER_MESSAGE]
    assert prompts == ["before 0", "before 1", "doomed", "after", "last"]  # each once
    turn_ends = [e for e in log if e.type is SessionEventType.ASSISTANT_TURN_END]
    assert [e.data.reason for e in turn_ends] == [
        "completed",
        "completed",
        "interrupted",
        "completed",
        "completed",
    ]
    assert turn_ends[2].data.message == TAKEN_OVER
    # Every turn answers its own message.
    messages = [e for e in log if e.type is SessionEventType.USER_MESSAGE]
    assert [e.data.user_message_id for e in turn_ends] == [m.id for m in messages]
    # The watcher saw every persisted event from its attach on, once, in
    # order, across the death of the daemon it followed.
    assert [e.id for e in ends] == [e.id for e in turn_ends[2:]]
    first = follower.persisted[0].sequence
    assert [e.id for e in follower.persisted] == [e.id for e in log[first - 1 :]]
    assert first <= messages[0].sequence
    # The cuts went through nginx: it saw each daemon go.
    error_log = deployment.balancer.error_log
    for daemon in deployment.daemons:
        assert f'upstream: "grpcs://{daemon_address(daemon)}"' in error_log


class Signal(logging.Handler):
    """Sets ``event`` when the client logs a line containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_a_send_refused_while_the_stream_stays_live_is_sent_again(
    deployment: Deployment,
) -> None:
    # Through a balancer a send and the session's event stream are calls of
    # their own, which may reach different daemons, or one of them none. Here
    # nginx sends SendMessage to a port nothing serves (502, UNAVAILABLE)
    # while the stream stays live on a daemon; then it is healed.
    settings = deployment.balancer.settings
    nowhere = f"127.0.0.1:{free_loopback_port()}"

    def sends_nowhere(text: str) -> str:
        route = (
            "        location = /copilot.v1.CopilotService/SendMessage {\n"
            f"            grpc_pass grpc://{nowhere};\n"
            "        }\n\n"
            "        location / {"
        )
        return text.replace("        location / {", route, 1)

    balancer = NginxBalancer(replace(settings, edit=sends_nowhere)).start()
    refused = Signal("daemon unavailable sending")
    logger = logging.getLogger("copilot_client")
    logger.addHandler(refused)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        async with CopilotClient(
            address=balancer.address,
            token=deployment.token,
            tls_root_cert=deployment.public_ca.cert,
            timeout=WAIT,
        ) as client:
            session = await client.create_session(session_id="sent-again")
            seen: list[SessionEvent] = []
            session.on(seen.append)  # with a handler, send_and_wait sends with SendMessage
            await session.attach()
            answer = asyncio.create_task(session.send_and_wait("hello", timeout=WAIT))
            await asyncio.wait_for(refused.event.wait(), WAIT)
            balancer.reload(settings)  # the old workers keep the live stream
            result = await answer
            assert result is not None and 'You said: "hello"' in (result.data.content or "")
            log = await client.get_messages("sent-again")
        assert "connect() failed" in balancer.error_log
    finally:
        logger.removeHandler(refused)
        logger.setLevel(level)
        balancer.remove()
    assert [e.data.content for e in log if e.type is SessionEventType.USER_MESSAGE] == ["hello"]


async def test_the_token_is_required_through_nginx(deployment: Deployment) -> None:
    for token in ("", "wrong-" + deployment.token):
        with pytest.raises(UnauthenticatedError) as caught:
            async with deployment.client(token=token) as client:  # its start pings
                await client.list_sessions()
        # The daemon's own words reach the client through nginx.
        assert caught.value.status is grpc.StatusCode.UNAUTHENTICATED
        assert str(caught.value) == UNAUTHENTICATED_MESSAGE
    # A stream too: refused, not left open.
    credentials = grpc.ssl_channel_credentials(deployment.public_ca.cert.read_bytes())
    async with grpc.aio.secure_channel(deployment.balancer.address, credentials) as channel:
        stream = copilot_pb2_grpc.CopilotServiceStub(channel).StreamEvents(
            pb.StreamEventsRequest(session_id="s"), timeout=WAIT
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream.read()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    refusals = "".join(line for d in deployment.daemons for line in d.output)
    assert "refused a TCP call" in refusals and deployment.token not in refusals
    async with deployment.client() as client:
        assert await client.list_sessions() == []  # and with it, calls go through


async def unreachable(
    address: str, deployment: Deployment, trusted: ThrowawayCA
) -> DaemonUnavailableError:
    """How a client that trusts ``trusted`` fails to reach a daemon through ``address``."""
    with pytest.raises(DaemonUnavailableError) as caught:
        async with CopilotClient(
            address=address, token=deployment.token, tls_root_cert=trusted.cert, timeout=WAIT
        ) as client:  # its start pings
            await client.ping()
    return caught.value


async def test_tls_on_both_hops(deployment: Deployment, short_tmp: Path) -> None:
    # Client to nginx: a client that trusts another CA, or speaks plain text, gets nowhere.
    doubting = await unreachable(deployment.balancer.address, deployment, deployment.internal_ca)
    assert "CERTIFICATE_VERIFY_FAILED" in str(doubting)
    async with grpc.aio.insecure_channel(deployment.balancer.address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await copilot_pb2_grpc.CopilotServiceStub(plain).Ping(pb.PingRequest(), timeout=WAIT)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # nginx to the daemons: it checks their certificates (grpc_ssl_verify),
    # against its CA and for its name; either wrong, no call reaches them.
    impostors = ThrowawayCA(short_tmp, "impostor CA")
    settings = deployment.balancer.settings
    for wrong, complaint in (
        (replace(settings, daemon_ca=impostors.cert), "upstream SSL certificate verify error"),
        (
            replace(settings, daemon_tls_name="someone-else.internal"),
            'upstream SSL certificate does not match "someone-else.internal"',
        ),
    ):
        balancer = NginxBalancer(wrong).start()
        try:
            failure = await unreachable(balancer.address, deployment, deployment.public_ca)
            assert "status: 502" in str(failure)  # nginx's Bad Gateway
            assert complaint in balancer.error_log
        finally:
            balancer.remove()
    async with deployment.client() as client:  # the deployment's own nginx trusts them
        assert await client.ping()


def test_the_deployment_guide_shows_the_tested_configuration() -> None:
    guide = (EXAMPLE_CONFIG.parents[1] / "deployment.md").read_text()
    assert f"```nginx\n{EXAMPLE_CONFIG.read_text()}```" in guide
