"""Per-VM records: which libvirt events count as caused by the operator's own actions, and which watch
events the record store already holds."""

from __future__ import annotations

import pytest

from libvirt_operator.pipeline import records
from libvirt_operator.pipeline.records import EXPECT_WINDOW, RecordStore, VMRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(records.time, "monotonic", fake)
    return fake


def record() -> VMRecord:
    return VMRecord(key=("default", "vm"), body={"metadata": {"uid": "u"}})


def test_an_event_of_a_slow_action_is_its_own_when_the_window_is_renewed_as_the_action_returns(
        clock: Clock) -> None:
    rec = record()
    rec.expect("Started")  # before the call
    clock.now += EXPECT_WINDOW + 20  # a start that took longer than the window on a busy host
    rec.expect("Started")  # the call returned
    received = clock.now + 0.5
    clock.now += 60  # absorbed much later: the queue was long
    assert rec.is_expected("Started", received)


def test_an_event_arriving_after_the_window_is_not_the_operators_and_each_expectation_matches_once(
        clock: Clock) -> None:
    rec = record()
    rec.expect("Stopped", "Shutdown")
    assert not rec.is_expected("Stopped", clock.now + EXPECT_WINDOW + 1)
    assert rec.is_expected("Shutdown", clock.now + 1)
    assert not rec.is_expected("Shutdown", clock.now + 2)  # a second shutdown is somebody else's
    assert not rec.is_expected("Started", clock.now)


def _vm(version: str, phase: str = "Running") -> dict[str, object]:
    return {"metadata": {"namespace": "default", "name": "vm", "uid": "u", "resourceVersion": version},
            "status": {"phase": phase}}


def test_a_record_holds_the_version_its_own_write_returned_and_nothing_else() -> None:
    store = RecordStore()
    assert store.get(("default", "vm")) is None  # unknown VM: news
    record = store.upsert(_vm("7"))  # what our status patch returned
    assert record.holds(_vm("7"))  # its watch echo: nothing new
    assert not record.holds(_vm("8", "Paused"))  # anybody's later change: news
    store.upsert(_vm("6", "Stopped"))  # a stale event does not replace the newer body
    assert record.body["status"] == {"phase": "Running"}


def test_a_watch_event_older_than_the_version_a_record_left_at_is_outdated_a_newer_one_or_a_new_object_is_not(
        ) -> None:
    store = RecordStore()
    store.upsert(_vm("9"))  # the hand-over's answer: the VM is another node's now
    store.remove(("default", "vm"))
    assert store.outdated(_vm("8"))  # the watch's late MODIFIED of the status write before the hand-over
    assert store.outdated(_vm("9"))
    assert not store.outdated(_vm("10"))  # moved back: news
    newcomer = _vm("3")
    newcomer["metadata"]["uid"] = "another"  # type: ignore[index]
    assert not store.outdated(newcomer)  # deleted and created again under the same name
    store.forget(("default", "vm"))  # the watch's DELETED: nothing older follows on that stream
    assert not store.outdated(_vm("8"))


def test_tombstones_are_bounded_oldest_first() -> None:
    store = RecordStore()
    for i in range(records.MAX_TOMBSTONES + 1):
        body = {"metadata": {"namespace": "default", "name": f"vm-{i}", "uid": f"u{i}", "resourceVersion": "5"}}
        store.upsert(body)
        store.remove(("default", f"vm-{i}"))
    first = {"metadata": {"namespace": "default", "name": "vm-0", "uid": "u0", "resourceVersion": "4"}}
    last = {"metadata": {"namespace": "default", "name": f"vm-{records.MAX_TOMBSTONES}",
                         "uid": f"u{records.MAX_TOMBSTONES}", "resourceVersion": "4"}}
    assert not store.outdated(first) and store.outdated(last)
