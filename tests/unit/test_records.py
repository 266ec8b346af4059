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
