"""The alert hub: persistence across restarts, acknowledgements, live subscribers, listing."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from medserve.streaming.alerts import AlertHub, AlertNotFound
from medserve.streaming.messages import Alert
from medserve.values.errors import InvalidInput


def make_alert(number: int, sequence_id: int | str = "bed-1", risk: str = "high") -> Alert:
    return Alert(
        id=f"alert-{number}",
        sequence_id=sequence_id,
        kind="raised",
        risk=risk,
        summary=f"NEWS2 {number}",
        sample_timestamp=1000.0 + number,
        created_at=2000.0 + number,
        observation={"resourceType": "Observation", "valueInteger": number},
    )


# --- persistence -------------------------------------------------------------------------------


def test_alerts_and_acknowledgements_survive_a_restart(tmp_path: Path) -> None:
    journal = tmp_path / "alerts" / "alerts.jsonl"
    hub = AlertHub(journal)
    hub.publish(make_alert(1))
    hub.publish(make_alert(2, sequence_id=7))
    hub.acknowledge("alert-1", "nurse-a", now=3000.0)
    hub.close()

    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert lines[-1] == {"ack": "alert-1", "by": "nurse-a", "at": 3000.0}

    reopened = AlertHub(journal)
    kept = reopened.list()
    assert [a.id for a in kept] == ["alert-2", "alert-1"]
    assert kept[1].acknowledged_by == "nurse-a" and kept[1].acknowledged_at == 3000.0
    assert kept[0].acknowledged_at is None and kept[0].sequence_id == 7
    assert kept[0].to_json() == make_alert(2, sequence_id=7).to_json()
    # acknowledging after the restart is persisted too, and a repeat keeps the first
    reopened.acknowledge("alert-2", "nurse-b", now=4000.0)
    reopened.close()
    third = AlertHub(journal)
    assert third.get("alert-2").acknowledged_by == "nurse-b"
    assert third.acknowledge("alert-2", "nurse-c", now=5000.0).acknowledged_at == 4000.0
    third.close()


def test_a_torn_last_line_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    journal = tmp_path / "alerts.jsonl"
    hub = AlertHub(journal)
    hub.publish(make_alert(1))
    hub.close()
    with journal.open("a") as out:
        out.write('{"id": "alert-2", "sequ')  # a crash mid-write
    reopened = AlertHub(journal)
    assert [a.id for a in reopened.list()] == ["alert-1"]
    reopened.close()


def test_only_the_newest_are_kept_and_a_long_journal_is_compacted(tmp_path: Path) -> None:
    journal = tmp_path / "alerts.jsonl"
    hub = AlertHub(journal, max_kept=3)
    for number in range(10):
        hub.publish(make_alert(number))
    assert [a.id for a in hub.list()] == ["alert-9", "alert-8", "alert-7"]
    with pytest.raises(AlertNotFound):
        hub.acknowledge("alert-0", "nurse-a", now=1.0)
    hub.close()
    reopened = AlertHub(journal, max_kept=3)
    assert [a.id for a in reopened.list()] == ["alert-9", "alert-8", "alert-7"]
    assert len(journal.read_text().splitlines()) == 3
    reopened.close()


def test_acknowledging_an_unknown_alert_or_without_a_name_is_refused() -> None:
    hub = AlertHub()
    hub.publish(make_alert(1))
    with pytest.raises(AlertNotFound, match="nope"):
        hub.acknowledge("nope", "nurse-a", now=1.0)
    with pytest.raises(InvalidInput):
        hub.acknowledge("alert-1", "", now=1.0)


# --- listing -----------------------------------------------------------------------------------


def test_list_filters_newest_first() -> None:
    hub = AlertHub()
    hub.publish(make_alert(1, sequence_id="bed-1"))
    hub.publish(make_alert(2, sequence_id=7))
    hub.publish(make_alert(3, sequence_id="bed-1"))
    hub.publish(make_alert(4, sequence_id="bed-1"))
    hub.acknowledge("alert-3", "nurse-a", now=1.0)

    assert [a.id for a in hub.list()] == ["alert-4", "alert-3", "alert-2", "alert-1"]
    assert [a.id for a in hub.list(sequence_id="bed-1")] == ["alert-4", "alert-3", "alert-1"]
    assert [a.id for a in hub.list(sequence_id="7")] == ["alert-2"]  # matched by text
    assert [a.id for a in hub.list(sequence_id=7)] == ["alert-2"]
    assert [a.id for a in hub.list(unacknowledged_only=True)] == ["alert-4", "alert-2", "alert-1"]
    assert [a.id for a in hub.list(sequence_id="bed-1", unacknowledged_only=True, limit=1)] == ["alert-4"]
    assert hub.list(limit=0) == []
    with pytest.raises(InvalidInput):
        hub.list(limit=-1)


def test_republishing_an_id_replaces_it_and_makes_it_newest() -> None:
    hub = AlertHub()
    hub.publish(make_alert(1))
    hub.publish(make_alert(2))
    escalated = make_alert(1, risk="medium")
    hub.publish(escalated)
    assert [a.id for a in hub.list()] == ["alert-1", "alert-2"]
    assert hub.get("alert-1").risk == "medium"


# --- subscribers -------------------------------------------------------------------------------


async def test_subscribers_receive_published_and_acknowledged_alerts() -> None:
    hub = AlertHub()
    first, second = hub.subscribe(), hub.subscribe()
    assert hub.subscriber_count == 2
    hub.publish(make_alert(1))
    hub.acknowledge("alert-1", "nurse-a", now=5.0)
    for subscription in (first, second):
        published = await asyncio.wait_for(anext(subscription), 1)
        assert published.id == "alert-1"
        updated = await asyncio.wait_for(anext(subscription), 1)
        assert updated.acknowledged_by == "nurse-a"
    await first.aclose()
    assert hub.subscriber_count == 1
    hub.close()  # ends the remaining feed
    assert [a async for a in second] == []
    assert hub.subscriber_count == 0


async def test_a_slow_subscriber_loses_its_oldest_and_never_blocks_publishers() -> None:
    hub = AlertHub(subscriber_queue=4)
    slow = hub.subscribe()
    for number in range(10):
        hub.publish(make_alert(number))  # returns at once although nobody reads
    assert slow.dropped == 6 and hub.dropped == 6
    received = [(await anext(slow)).id for _ in range(4)]
    assert received == ["alert-6", "alert-7", "alert-8", "alert-9"]
    await slow.aclose()


async def test_publishing_from_another_thread_reaches_the_subscriber() -> None:
    hub = AlertHub()
    subscription = hub.subscribe()
    worker = threading.Thread(target=hub.publish, args=(make_alert(1),))
    worker.start()
    worker.join()
    assert (await asyncio.wait_for(anext(subscription), 1)).id == "alert-1"
    await subscription.aclose()
