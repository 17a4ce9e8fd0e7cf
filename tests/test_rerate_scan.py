"""How a re-rating run scans the outcome topics and finds its applied corrections without
decoding every record: the same outcomes and the same ids as decoding them all."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from imbill.domain.config import Rate
from imbill.domain.events import Charge
from imbill.domain.rerate import rerate
from imbill.rerating import _applied, _of_wanted
from imbill.schemas.codec import encode, encode_event
from tests.builders import T0, attempt, checklist
from tests.samples import SAMPLES
from tests.test_rerate import live_outcome

NOW = T0 + timedelta(days=30)


def _charge_and_correction():
    sent = attempt()
    old = live_outcome(checklist(msgn_price="0.05"), sent)
    corrected = checklist(msgn_price="0.05").define(Rate("B", "MSGN", Decimal("0.04"), T0), at=NOW)
    return sent, old, rerate(sent, old, corrected.state, run_id="rr-scan", rated_at=NOW).new


def test_only_outcomes_of_wanted_attempts_are_decoded() -> None:
    sent, old, new = _charge_and_correction()
    assert type(old) is Charge
    assert _of_wanted({sent.attempt_id}, encode_event(old)) and _of_wanted({sent.attempt_id}, encode_event(new))
    assert not _of_wanted({"another"}, encode_event(old))
    rejection = encode("Rejection", SAMPLES["Rejection"])
    assert _of_wanted({SAMPLES["Rejection"]["attempt_id"]}, rejection) and not _of_wanted({"another"}, rejection)
    assert not _of_wanted({sent.attempt_id}, encode_event(sent))  # an attempt is no outcome
    assert not _of_wanted({sent.attempt_id}, b"\x00" * 40)  # no event at all: left out, as decoding it would


def test_a_record_whose_ids_cannot_be_read_is_decoded_to_be_left_out() -> None:
    _, old, _ = _charge_and_correction()
    assert _of_wanted({"anything"}, encode_event(old)[:11] + b"\xff")


def test_an_applied_correction_is_found_by_its_id_only_in_a_whole_charge() -> None:
    _, old, new = _charge_and_correction()
    data = encode_event(new)
    records = [(0, 0, None, encode_event(old)), (0, 1, None, data[:-3]), (0, 2, None, None),
               (1, 0, None, encode("Rejection", SAMPLES["Rejection"]))]
    assert _applied(records, {new.charge_id}) == set()  # a truncated copy is no applied correction
    assert _applied([*records, (1, 1, None, data)], {new.charge_id, "chg-other#2"}) == {new.charge_id}
    assert _applied([(1, 1, None, data)], {"chg-other#2"}) == set()
