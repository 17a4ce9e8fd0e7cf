"""Deciding one record: payments that cannot be real are refused, never applied."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imbill.domain.balance import AccountState
from imbill.domain.decide import DEFAULT_LIMITS, PAYMENT_REASON_CODES, decide_attempt, decide_payment
from imbill.domain.events import PaymentRejected
from imbill.domain.errors import ConfigError
from imbill.domain.keys import KEY_SEPARATOR, account_key
from imbill.domain.money import BALANCE_LIMIT, PAYMENT_LIMIT
from imbill.producers.config_file import load_config_file
from imbill.domain.config import NAME_LIMIT, Tariff
from imbill.domain.rating import rate_attempt
from imbill.schemas.codec import encode_event
from imbill.settings import load_settings
from tests.builders import ALICE, BOB, ENV, T0, attempt, checklist, payment

NOW = T0 + timedelta(hours=3)
CONFIG = checklist(balance_model="prepaid").state

# (case id, payment, record key, state before, reason code)
REFUSED = [
    ("a negative payment", payment("-100.00"), ALICE, None, "invalid_amount"),
    ("a zero payment", payment("0"), ALICE, None, "invalid_amount"),
    ("not a number", replace(payment("1"), amount=Decimal("NaN")), ALICE, None, "invalid_amount"),
    ("over the single-payment limit", payment(str(PAYMENT_LIMIT + 1)), ALICE, None, "amount_too_large"),
    ("keyed to another account", payment("1.00"), BOB, None, "key_mismatch"),
    ("an unknown account", payment("1.00", account="nobody"), "nobody", None, "unknown_account"),
    ("another currency", payment("1.00", currency="EUR"), ALICE, None, "currency_mismatch"),
    ("past the balance limit", payment(str(PAYMENT_LIMIT)), ALICE,
     AccountState(BALANCE_LIMIT - 1, "USD", False), "balance_limit"),
]


@pytest.mark.parametrize(("paid", "key", "before", "code"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_payment_that_cannot_be_real_is_refused_and_changes_no_balance(paid, key, before, code) -> None:
    decision = decide_payment(before, paid, CONFIG, key=account_key(ENV, key), offset=1, now=NOW)
    [refused] = decision.events
    assert type(refused) is PaymentRejected and refused.reason_code == code and code in PAYMENT_REASON_CODES
    assert decision.state is None or decision.state.balance == (before.balance if before else Decimal("1.00"))


def test_every_payment_reason_code_is_reached() -> None:
    reached_elsewhere = {"malformed_payment", "outside_dedup_window"}  # tests/test_dedup.py
    assert {case[4] for case in REFUSED} | reached_elsewhere == set(PAYMENT_REASON_CODES)


def test_a_real_payment_is_applied() -> None:
    decision = decide_payment(None, payment("5.00"), CONFIG, key=account_key(ENV, ALICE), offset=1, now=NOW)
    assert decision.state.balance == Decimal("6.00")


@given(st.text(max_size=8).filter(lambda s: KEY_SEPARATOR not in s), st.text(max_size=8),
       st.text(max_size=8).filter(lambda s: KEY_SEPARATOR not in s), st.text(max_size=8))
def test_no_two_tenant_accounts_share_a_key(env_a, account_a, env_b, account_b) -> None:
    """Environment names cannot hold the separator (config refuses them): keys are one-to-one."""
    assert (account_key(env_a, account_a) == account_key(env_b, account_b)) == ((env_a, account_a) == (env_b, account_b))


def test_config_refuses_an_environment_name_with_the_key_separator(tmp_path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("environment: hx/u\n")
    with pytest.raises(ConfigError, match=r'x.yaml.*environment.*must not contain "/"'):
        load_config_file(path)


def test_a_hostile_config_record_is_skipped_and_billing_goes_on() -> None:
    """A valid-Avro ServicePolicyDefined with ``msg.billing_unit_size: "sixty"`` (written
    straight onto the topic) gets the checks of ``config apply``: it is skipped with its
    reason, the policy in force stays, and the environment's attempts are still rated."""
    builder = checklist()
    hostile = {"event_id": "evil", "environment": ENV, "occurred_at": T0, "name": "Instant messaging",
               "service_type": "messaging", "description": "", "pattern": "%", "match_priority": 5,
               "attributes": {"msg.billing_unit_size": "sixty"}}
    skipped: list = []
    state = builder.state.applied([("ServicePolicyDefined", hostile)], on_skip=lambda *why: skipped.append(why))
    assert [why[0] for why in skipped] == ["ServicePolicyDefined"] and "billing_unit_size" in str(skipped[0][2])
    assert state.environments[ENV].service_policies == builder.state.environments[ENV].service_policies
    rated = rate_attempt(attempt(body_chars=150), state, rated_at=NOW)
    assert rated.billing_units == 3


# --- the bounds a deployment sets (settings -> wiring -> Limits) ------------------------------

def test_a_configured_lower_payment_maximum_refuses_a_payment_above_it() -> None:
    limits = load_settings({"IMBILL_PAYMENT_MAXIMUM": "100"}).limits
    key = account_key(ENV, ALICE)
    [refused] = decide_payment(None, payment("100.01"), CONFIG, key=key, offset=1, now=NOW, limits=limits).events
    assert (type(refused), refused.reason_code) == (PaymentRejected, "amount_too_large")
    assert "maximum 100" in refused.message
    applied = decide_payment(None, payment("100"), CONFIG, key=key, offset=1, now=NOW, limits=limits)
    assert applied.state.balance == Decimal("101.00")


def test_a_configured_clock_skew_refuses_an_attempt_dated_past_it() -> None:
    limits = load_settings({"IMBILL_ATTEMPT_CLOCK_SKEW": "10"}).limits
    key = account_key(ENV, ALICE)
    early = attempt(received_at=NOW + timedelta(seconds=11))
    [rejected] = decide_attempt(None, early, CONFIG, key=key, offset=1, now=NOW, limits=limits).events
    assert rejected.reason_code == "implausible_attempt"
    within = decide_attempt(None, attempt(received_at=NOW + timedelta(seconds=9)), CONFIG, key=key, offset=1, now=NOW,
                            limits=limits).events
    assert type(within[0]).__name__ == "Charge"
    assert type(decide_attempt(None, early, CONFIG, key=key, offset=1, now=NOW).events[0]).__name__ == "Charge"


@pytest.mark.parametrize(("environ", "flags", "words"), [
    ({"IMBILL_PAYMENT_MAXIMUM": "abc"}, {}, "IMBILL_PAYMENT_MAXIMUM: cannot read 'abc'"),
    ({"IMBILL_PAYMENT_MAXIMUM": "0"}, {}, "payment maximum: must be over 0 and at most 1000000"),
    ({}, {"payment_maximum": Decimal("1000000.01")}, "payment maximum: must be over 0"),
    ({"IMBILL_ATTEMPT_CLOCK_SKEW": "-1"}, {}, "attempt clock skew: must be 0 to 86400 seconds, not -1"),
])
def test_a_setting_out_of_range_is_refused_in_one_line(environ, flags, words) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_settings(environ, **flags).limits


def test_flags_beat_the_environment_which_beats_the_defaults() -> None:
    assert load_settings({}).limits == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.payment_maximum == PAYMENT_LIMIT
    settings = load_settings({"IMBILL_PAYMENT_MAXIMUM": "50"}, payment_maximum=Decimal("70"))
    assert settings.limits.payment_maximum == Decimal("70")
    assert load_settings({"IMBILL_PAYMENT_MAXIMUM": "50"}).as_environment()["IMBILL_PAYMENT_MAXIMUM"] == "50"


def test_an_attempt_longer_than_a_sip_datagram_is_refused_small_and_against_no_account() -> None:
    huge = attempt(to_user="9" * 400_000, to_domain="d" * 400_000, from_user="1" * 100_000)
    [rejected] = decide_attempt(None, huge, CONFIG, key=account_key(ENV, ALICE), offset=1, now=NOW).events
    assert (rejected.reason_code, rejected.account, rejected.environment) == ("implausible_attempt", "", "")
    assert len(encode_event(rejected)) < 5_000  # far below the broker's 1 MiB, whatever came in


def test_config_names_are_bounded_in_a_file_and_at_the_fold(tmp_path) -> None:
    long_name = "T" * (NAME_LIMIT + 1)
    with pytest.raises(ValueError, match="name is 4,097 characters long, over 4,096"):
        checklist().define(Tariff(long_name, "USD"))
    path = tmp_path / "long.yaml"
    path.write_text(f"environment: e\ntariffs: [{{name: {long_name}, currency: USD}}]\n")
    with pytest.raises(ConfigError, match=r'long.yaml: tariff "T{57}\.\.\.": name: is 4,097 characters long, over 4,096'):
        load_config_file(path)


@pytest.mark.parametrize(("paid", "code"), [
    (replace(payment("1.00"), account="1" * 900_000), "malformed_payment"),
    (replace(payment("1.00"), reference="r" * 900_000), "malformed_payment"),
    (payment("1e30"), "invalid_amount"),
    (payment("-1e30"), "invalid_amount"),
])
def test_a_payment_too_large_to_repeat_is_refused_small_and_against_no_account(paid, code) -> None:
    [refused] = decide_payment(None, paid, CONFIG, key=account_key(ENV, ALICE), offset=1, now=NOW).events
    assert (refused.reason_code, refused.account, refused.amount) == (code, "", Decimal(0))
    assert len(encode_event(refused)) < 5_000


# --- the edge's delivery outcome ----------------------------------------------------------------------

@pytest.mark.parametrize(("delivery", "code"), [("failed", 480), ("failed", 408), ("failed", 486)])
def test_an_undelivered_message_is_refused_undelivered_with_its_sip_code(delivery, code) -> None:
    decision = decide_attempt(None, attempt(delivery=delivery, delivery_code=code), CONFIG,
                              key=account_key(ENV, ALICE), offset=1, now=NOW)
    [refused] = decision.events
    assert (type(refused).__name__, refused.reason_code, refused.account) == ("Rejection", "undelivered", ALICE)
    assert f"SIP {code}" in refused.message and decision.state is None  # no balance moved


def test_an_undelivered_message_is_charged_when_the_setting_says_so() -> None:
    limits = replace(DEFAULT_LIMITS, charge_undelivered=True)
    events = decide_attempt(None, attempt(delivery="failed", delivery_code=408), CONFIG,
                            key=account_key(ENV, ALICE), offset=1, now=NOW, limits=limits).events
    charge = events[0]
    assert (type(charge).__name__, charge.delivery, charge.delivery_code) == ("Charge", "failed", 408)


@pytest.mark.parametrize(("delivery", "code"), [("delivered", 200), ("delivered", 202), (None, None)])
def test_a_delivered_or_undelivered_by_the_edge_message_is_charged_with_its_outcome(delivery, code) -> None:
    [charge, *_] = decide_attempt(None, attempt(delivery=delivery, delivery_code=code), CONFIG,
                                  key=account_key(ENV, ALICE), offset=1, now=NOW).events
    assert (type(charge).__name__, charge.delivery, charge.delivery_code) == ("Charge", delivery, code)
    assert charge.amount > 0


def test_an_unknown_sender_is_refused_for_that_before_its_delivery() -> None:
    [refused] = decide_attempt(None, attempt(from_user="mallory", delivery="failed", delivery_code=480), CONFIG,
                               key=account_key(ENV, "mallory"), offset=1, now=NOW).events
    assert refused.reason_code == "unknown_account"


def test_the_charge_undelivered_setting_is_read_once(monkeypatch) -> None:
    assert load_settings({}).limits.charge_undelivered is False
    assert load_settings({"IMBILL_CHARGE_UNDELIVERED": "yes"}).limits.charge_undelivered is True
    with pytest.raises(ConfigError, match="IMBILL_CHARGE_UNDELIVERED"):
        load_settings({"IMBILL_CHARGE_UNDELIVERED": "perhaps"})


@pytest.mark.parametrize(("delivery", "code"), [("delivered", 480), ("failed", 200), ("lost", 480), ("failed", None),
                                                (None, 200), ("failed", 99), ("failed", 700)])
def test_a_delivery_outcome_the_edge_cannot_have_given_is_implausible(delivery, code) -> None:
    [refused] = decide_attempt(None, attempt(delivery=delivery, delivery_code=code), CONFIG,
                               key=account_key(ENV, ALICE), offset=1, now=NOW).events
    assert refused.reason_code == "implausible_attempt" and "no outcome of the SIP edge" in refused.message


def test_a_huge_delivery_text_is_refused_before_rating() -> None:
    [refused] = decide_attempt(None, attempt(delivery="x" * 70_000, delivery_code=200), CONFIG,
                               key=account_key(ENV, ALICE), offset=1, now=NOW).events
    assert refused.reason_code == "implausible_attempt" and refused.account == ""
