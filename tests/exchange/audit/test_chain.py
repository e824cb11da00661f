from __future__ import annotations

import pytest

from exchange.audit import guard as audit_guard
from exchange.audit.models import AuditEvent
from exchange.audit.services import audit_record, audit_verify

pytestmark = pytest.mark.django_db


def _chain(n: int = 5) -> list[AuditEvent]:
    return [audit_record(actor=None, action="test.event", details={"n": i, "text": "ü"}) for i in range(n)]


def test_an_untouched_chain_is_intact():
    _chain()
    result = audit_verify()
    assert result.intact and result.checked == 5
    assert str(result) == "intact, 5 events"


def test_each_event_links_to_the_one_before():
    events = _chain(3)
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash


def test_an_edited_event_is_found(django_db_blocker):
    events = _chain()
    with audit_guard.suspended():
        AuditEvent.objects.filter(pk=events[2].pk).update(details={"n": 99})
    result = audit_verify()
    assert not result.intact and result.broken_at == events[2].pk


def test_a_deleted_event_is_found():
    events = _chain()
    with audit_guard.suspended():
        AuditEvent.objects.filter(pk=events[2].pk).delete()
    result = audit_verify()
    assert not result.intact and result.broken_at == events[3].pk


def test_the_verifiers_json_reader_answers_as_json_loads():
    import json

    from exchange.audit.services import _json_loader

    for text in ['{"b": [1, 2.5, null], "a": "é"}', ' {"a": 1} ', "[]", "{}", '"x"', "3"]:
        assert _json_loader(text) == json.loads(text)
    for bad in ['{"a": 1}x', "", "{"]:
        with pytest.raises(json.JSONDecodeError):
            _json_loader(bad)
