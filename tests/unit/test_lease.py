"""The per-node lease: one of two operator processes for a node acts, the other waits its turn.

Contenders talk real HTTP through the operator's asyncio client (``kubernetes.aio``) to the in-package API
emulator, which serves from this test's own event loop: were a lease call to block the loop, the emulator
could not answer and the test would hang (pytest-timeout) rather than pass. The test's own writes
(an intruder, a crashed holder's lease) use the blocking client in a thread.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import kubernetes.aio.client
import pytest

from kube_emulator import KubeEmulator
from libvirt_operator.kube.lease import LeaseConfig, NodeLease, format_micro_time, parse_micro_time

pytestmark = pytest.mark.timeout(30)

NODE = "node-a"
NAMESPACE = "default"
LEASE_NAME = f"libvirt-operator-{NODE}"
T = TypeVar("T")


# --- helpers -------------------------------------------------------------------------------------


async def eventually(predicate: Callable[[], T], *, within: float = 10.0, what: str) -> T:
    """Poll until ``predicate`` is truthy; fail naming ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(0.02)


async def finished(task: asyncio.Task[Any], *, within: float = 10.0, what: str) -> None:
    await eventually(task.done, within=within, what=what)
    task.result()  # re-raise what the task raised


class Cluster:
    """The emulator plus an ApiClient per contender (as separate processes would have)."""

    def __init__(self, emulator: KubeEmulator, kubeconfig: Path) -> None:
        self.emulator = emulator
        self.kubeconfig = kubeconfig
        self.clients: list[kubernetes.client.ApiClient] = []
        self.contender_clients: list[kubernetes.aio.client.ApiClient] = []
        self.tasks: list[asyncio.Task[Any]] = []

    def _configuration(self) -> kubernetes.client.Configuration:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        return configuration

    def client(self) -> kubernetes.client.ApiClient:
        """A blocking client for the test's own writes."""
        client = kubernetes.client.ApiClient(self._configuration())
        self.clients.append(client)
        return client

    def contender_client(self) -> kubernetes.aio.client.ApiClient:
        """A contender's own asyncio client and connection pool, as in a separate operator process."""
        loaded = self._configuration()
        configuration = kubernetes.aio.client.Configuration(host=loaded.host, api_key=dict(loaded.api_key or {}))
        configuration.ssl_ca_cert = loaded.ssl_ca_cert
        configuration.cert_file = loaded.cert_file
        configuration.key_file = loaded.key_file
        configuration.verify_ssl = loaded.verify_ssl
        client = kubernetes.aio.client.ApiClient(configuration)
        self.contender_clients.append(client)
        return client

    def contender(self, identity: str, *, duration: float = 1.0, renew_every: float = 0.2,
                  retry_every: float = 0.1) -> NodeLease:
        config = LeaseConfig.for_node(NODE, namespace=NAMESPACE, identity=identity, duration=duration,
                                      renew_every=renew_every, retry_every=retry_every)
        return NodeLease(self.contender_client(), config)

    def start(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        async def run() -> T:
            return await coro
        task = asyncio.create_task(run())
        self.tasks.append(task)
        return task

    def lease(self) -> dict[str, Any]:
        found = self.emulator.get_object("coordination.k8s.io", "v1", "leases", NAMESPACE, LEASE_NAME)
        assert found is not None, f"lease {NAMESPACE}/{LEASE_NAME} does not exist"
        return found

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.lease()["spec"]
        return spec

    def lease_reads(self) -> int:
        return self.emulator.requests[("get", "leases")]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with KubeEmulator() as emulator:
        kubeconfig = tmp_path / "kubeconfig"
        emulator.write_kubeconfig(kubeconfig)
        cluster = Cluster(emulator, kubeconfig)
        try:
            yield cluster
        finally:
            for task in cluster.tasks:
                task.cancel()
            await asyncio.gather(*cluster.tasks, return_exceptions=True)
            for client in cluster.clients:
                client.close()
            for contender_client in cluster.contender_clients:
                await contender_client.close()


def renewed_at(spec: dict[str, Any]) -> datetime.datetime:
    moment = parse_micro_time(spec.get("renewTime"))
    assert moment is not None, f"renewTime missing or unreadable: {spec}"
    return moment


# --- configuration ---------------------------------------------------------------------------------


def test_config_for_a_node_names_the_lease_after_the_node_in_the_pod_namespace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "virt-system")
    first, second = LeaseConfig.for_node("hv-7"), LeaseConfig.for_node("hv-7")

    assert first.name == "libvirt-operator-hv-7"
    assert first.namespace == "virt-system"
    assert first.identity != second.identity  # two processes on one host never share an identity
    assert (first.duration, first.renew_every, first.retry_every) == (15.0, 5.0, 2.0)


def test_config_without_pod_namespace_uses_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert LeaseConfig.for_node("hv-7").namespace == "default"


def test_config_refuses_a_renewal_period_that_outlasts_the_lease() -> None:
    with pytest.raises(ValueError, match="renew_every"):
        LeaseConfig(name="n", namespace="default", identity="me", duration=2.0, renew_every=2.0)


def test_micro_time_round_trips_in_the_kubernetes_format() -> None:
    moment = datetime.datetime(2026, 11, 23, 20, 0, 0, 123456, tzinfo=datetime.UTC)
    assert format_micro_time(moment) == "2026-11-23T20:00:00.123456Z"
    assert parse_micro_time("2026-11-23T20:00:00.123456Z") == moment
    assert parse_micro_time("2026-11-23T20:00:00.123456789Z") == moment  # nanoseconds are cut
    assert parse_micro_time("2026-11-23T20:00:00Z") == moment.replace(microsecond=0)
    assert parse_micro_time("yesterday") is None
    assert parse_micro_time(None) is None


# --- contention --------------------------------------------------------------------------------------


async def test_one_contender_gets_the_lease_and_the_other_waits(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="libvirt_operator.kube.lease")
    # A lease far longer than the test: the waiter may not take it over by expiry either.
    alpha = cluster.contender("alpha", duration=30.0, renew_every=0.2)
    beta = cluster.contender("beta", duration=30.0, renew_every=0.2)
    tasks = {"alpha": cluster.start(alpha.acquire()), "beta": cluster.start(beta.acquire())}

    await eventually(lambda: any(t.done() for t in tasks.values()), what="either contender to acquire")
    winner_name = next(name for name, t in tasks.items() if t.done())
    winner, loser = (alpha, beta) if winner_name == "alpha" else (beta, alpha)
    tasks[winner_name].result()
    cluster.start(winner.hold(on_lost=lambda: None))

    # The waiter keeps reading the lease, sees the winner in it, and stays out.
    reads = cluster.lease_reads()
    await eventually(lambda: cluster.lease_reads() >= reads + 6, what="the waiter to retry several times")
    loser_task = tasks["beta" if winner_name == "alpha" else "alpha"]
    assert not loser_task.done()
    assert (winner.acquired, loser.acquired) == (True, False)
    assert loser.holder == winner.config.identity
    spec = cluster.spec()
    assert spec["holderIdentity"] == winner.config.identity
    assert spec["leaseDurationSeconds"] == 30
    assert spec["leaseTransitions"] == 0
    waiting = [r.getMessage() for r in caplog.records if "waiting for lease" in r.getMessage()]
    assert waiting == [f"waiting for lease {NAMESPACE}/{LEASE_NAME} held by {winner.config.identity}"]


async def test_release_hands_the_lease_to_the_waiter_before_it_would_expire(cluster: Cluster) -> None:
    # A 30 s lease: the successor can only get it within the deadline because it was released.
    alpha = cluster.contender("alpha", duration=30.0, renew_every=10.0)
    beta = cluster.contender("beta", duration=30.0, renew_every=10.0)
    await alpha.acquire()
    hold = cluster.start(alpha.hold(on_lost=lambda: pytest.fail("alpha lost a lease it released itself")))
    waiting = cluster.start(beta.acquire())
    await eventually(lambda: beta.holder == "alpha", what="beta to see alpha holding the lease")

    hold.cancel()
    await alpha.release()

    await finished(waiting, within=10.0, what="beta to take over the released lease")
    assert (alpha.acquired, beta.acquired) == (False, True)
    spec = cluster.spec()
    assert spec["holderIdentity"] == "beta"
    assert spec["leaseDurationSeconds"] == 30
    assert spec["leaseTransitions"] == 1
    assert beta.transitions == 1


async def test_release_leaves_a_lease_that_is_no_longer_ours_alone(cluster: Cluster) -> None:
    alpha, beta = cluster.contender("alpha"), cluster.contender("beta")
    await alpha.acquire()
    await eventually(lambda: _expired(cluster.spec()), what="alpha's unrenewed lease to expire")
    await beta.acquire()

    await alpha.release()

    assert cluster.spec()["holderIdentity"] == "beta"


async def test_holder_renews_and_a_holder_that_stops_renewing_is_taken_over_after_expiry(cluster: Cluster) -> None:
    alpha, beta = cluster.contender("alpha"), cluster.contender("beta")
    await alpha.acquire()
    acquired_at = renewed_at(cluster.spec())
    hold = cluster.start(alpha.hold(on_lost=lambda: pytest.fail("alpha lost its lease while renewing")))
    waiting = cluster.start(beta.acquire())

    # Renewals keep the lease alive for well past one lease duration; beta keeps waiting.
    await eventually(lambda: renewed_at(cluster.spec()) - acquired_at > datetime.timedelta(seconds=2),
                     what="alpha's renewTime to advance past two lease durations")
    assert not waiting.done()
    assert cluster.spec()["holderIdentity"] == "alpha"

    hold.cancel()  # alpha hangs or dies: no renewal, no release
    await asyncio.gather(hold, return_exceptions=True)
    last_renewal = renewed_at(cluster.spec())

    await finished(waiting, within=10.0, what="beta to take over the expired lease")
    spec = cluster.spec()
    assert spec["holderIdentity"] == "beta"
    assert spec["leaseTransitions"] == 1
    taken_at = parse_micro_time(spec["acquireTime"])
    assert taken_at is not None
    assert taken_at > last_renewal + datetime.timedelta(seconds=1), "taken over before the lease expired"


async def test_a_crashed_holders_expired_lease_is_taken_over_at_once(cluster: Cluster) -> None:
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": NAMESPACE},
            "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 15, "leaseTransitions": 4,
                     "acquireTime": format_micro_time(long_ago), "renewTime": format_micro_time(long_ago)}}
    api = kubernetes.client.CoordinationV1Api(cluster.client())
    await asyncio.to_thread(api.create_namespaced_lease, NAMESPACE, body)
    alpha = cluster.contender("alpha", duration=30.0, renew_every=10.0)

    await finished(cluster.start(alpha.acquire()), within=10.0, what="alpha to take over ghost's lease")

    spec = cluster.spec()
    assert spec["holderIdentity"] == "alpha"
    assert spec["leaseTransitions"] == 5
    assert alpha.transitions == 5


# --- losing the lease ----------------------------------------------------------------------------------


async def test_holder_that_finds_another_identity_in_the_lease_calls_on_lost_once(cluster: Cluster) -> None:
    alpha = cluster.contender("alpha")
    await alpha.acquire()
    lost: list[str] = []
    hold = cluster.start(alpha.hold(on_lost=lambda: lost.append("lost")))

    # Someone else writes itself into the lease (a contender with a skewed view, an admin).
    api = kubernetes.client.CoordinationV1Api(cluster.client())
    lease = await asyncio.to_thread(api.read_namespaced_lease, LEASE_NAME, NAMESPACE)
    lease.spec.holder_identity = "intruder"
    await asyncio.to_thread(api.replace_namespaced_lease, LEASE_NAME, NAMESPACE, lease)

    await finished(hold, what="alpha's hold to notice the intruder and return")
    assert lost == ["lost"]
    assert alpha.acquired is False
    assert alpha.holder == "intruder"
    assert cluster.spec()["holderIdentity"] == "intruder"  # a lost holder does not write back


async def test_holder_that_cannot_renew_before_expiry_calls_on_lost(cluster: Cluster) -> None:
    alpha = cluster.contender("alpha")
    await alpha.acquire()
    lost: list[str] = []
    hold = cluster.start(alpha.hold(on_lost=lambda: lost.append("lost")))
    first = renewed_at(cluster.spec())
    await eventually(lambda: renewed_at(cluster.spec()) > first, what="a first renewal")

    cluster.emulator.inject_fault(status=500, resource="leases", count=10_000)  # the API server fails

    await finished(hold, what="alpha's hold to give up once the lease would have expired")
    assert lost == ["lost"]
    assert alpha.acquired is False


def _expired(spec: dict[str, Any]) -> bool:
    renewed = renewed_at(spec)
    return renewed + datetime.timedelta(seconds=spec["leaseDurationSeconds"]) < datetime.datetime.now(datetime.UTC)


async def test_cancelling_hold_stops_it_even_when_the_cancel_lands_as_a_renewal_completes(
        cluster: Cluster) -> None:
    # The operator cancels hold() before release() at shutdown; a renewal that completes in the same
    # loop turn as the cancel must not swallow it (asyncio.wait_for on Python 3.11 does).
    alpha = cluster.contender("alpha", duration=30.0, renew_every=0.05)
    await alpha.acquire()
    renewals: list[float] = []
    hold: asyncio.Task[None] | None = None

    async def renewal_racing_the_cancel(_remaining: float) -> bool:
        renewals.append(asyncio.get_running_loop().time())
        assert hold is not None
        hold.cancel()  # lands while this renewal completes successfully
        return True
    alpha._try_renew = renewal_racing_the_cancel  # type: ignore[method-assign]
    # Started through the fixture, so that teardown still cancels it should the cancel here be swallowed.
    hold = cluster.start(alpha.hold(on_lost=lambda: pytest.fail("hold() reported a lease it still held as lost")))
    await eventually(hold.done, within=5.0, what="hold() to stop after its cancel")
    assert hold.cancelled()
    assert len(renewals) == 1
