"""An account's product in valid time: ``Account.product_history``, ``product_at``, rating by the
product in force when the attempt was received, the references of the history, its Avro record,
its config file form, and ``config apply`` of a file that says nothing of it. No broker."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import yaml

from imbill.domain.config import (KIND_BY_NAME, ORIGIN, Account, Product, ProductChange, Rate, Tariff, UsageCharge,
                                  from_record, to_record, with_product_from)
from imbill.domain.errors import ConfigError, ConfigRefused
from imbill.domain.rating import Rated, Refusal, rate_attempt
from imbill.domain.rerate import rerate
from imbill.producers.config_file import ConfigFileError, desired_config, product_change_of
from imbill.producers.config_publisher import history_notes, plan_changes
from imbill.schemas.codec import decode, encode
from imbill.domain.config import fold
from tests.builders import ALICE, ENV, T0, attempt, checklist
from tests.test_config_publisher import EXAMPLE, NOW, through_topic
from tests.test_rerate import live_outcome

CHANGE = T0 + timedelta(hours=2)
"""ALICE moves to "IM Gold" (tariff G, MSGN at 0.08) at this instant; attempts are at T0+1h by default."""
BEFORE, AFTER = attempt(), attempt(attempt_id="att-2", received_at=CHANGE + timedelta(hours=1))


def gold(config, *, price: str = "0.08", services: tuple[str, ...] = ("voice", "messaging")):
    """``config`` with the customer tariff G and the product "IM Gold" that charges messaging by it."""
    return config.define(Tariff("G", "USD", applied_to="customer"), Rate("G", "MSGN", Decimal(price), T0),
                         Product("IM Gold", services, (UsageCharge("messaging", "PortaSIP", "G"),)))


def alice(config) -> Account:
    return config.env.accounts[ALICE]


def moved_to_gold(config=None):
    """The checklist with "IM Gold", and ALICE on it from CHANGE on."""
    config = gold(config or checklist(msgn_price="0.05"))
    return config.define(with_product_from(alice(config), "IM Gold", CHANGE), at=CHANGE + timedelta(days=1))


# --- the history --------------------------------------------------------------------------

def test_an_account_without_history_has_its_product_at_every_instant() -> None:
    account = Account("1001", "Acme", "Basic")
    assert account.product_at(ORIGIN) == account.product_at(T0) == "Basic"


def test_product_at_is_the_latest_change_at_or_before_the_instant() -> None:
    account = with_product_from(Account("1001", "Acme", "Basic"), "Gold", CHANGE)
    assert account.product == "Gold"
    assert account.product_history == (ProductChange(ORIGIN, "Basic"), ProductChange(CHANGE, "Gold"))
    assert account.product_at(CHANGE - timedelta(milliseconds=1)) == "Basic"
    assert account.product_at(CHANGE) == account.product_at(CHANGE + timedelta(days=9)) == "Gold"
    assert account.product_at(ORIGIN - timedelta(days=1)) == "Basic"  # before the earliest: the earliest's


def test_a_change_at_a_known_instant_replaces_it_and_a_change_to_the_product_in_force_is_none() -> None:
    account = with_product_from(Account("1001", "Acme", "Basic"), "Gold", CHANGE)
    corrected = with_product_from(account, "Silver", CHANGE)
    assert corrected.product_history == (ProductChange(ORIGIN, "Basic"), ProductChange(CHANGE, "Silver"))
    earlier = with_product_from(account, "Silver", T0)
    assert [c.product for c in earlier.product_history] == ["Basic", "Silver", "Gold"]
    assert with_product_from(account, "Basic", CHANGE).product_history == ()  # Basic all along again
    assert with_product_from(Account("1001", "Acme", "Basic"), "Basic", T0) == Account("1001", "Acme", "Basic")


@pytest.mark.parametrize(("history", "words"), [
    ((ProductChange(CHANGE, "Basic"), ProductChange(T0, "Gold")), "in order of effective_from"),
    ((ProductChange(T0, "Basic"), ProductChange(T0, "Gold")), "each instant once"),
    ((ProductChange(T0, "Gold"),), "the latest change is to 'Gold', but the account's product is 'Basic'"),
])
def test_an_invalid_history_is_refused_by_every_reader(history, words) -> None:
    record = to_record(Account("1001", "Acme", "Basic", product_history=history))
    with pytest.raises(ValueError, match=words):
        from_record(KIND_BY_NAME["account"], record)


def test_the_history_goes_through_the_avro_record_unchanged() -> None:
    account = with_product_from(Account("1001", "Acme", "Basic", opening_balance=Decimal("1.000000")), "Gold", CHANGE)
    name, record = decode(encode("AccountDefined", {"event_id": "e1", "environment": ENV, "occurred_at": T0,
                                                    **to_record(account)}))
    assert record["product_history"] == [{"effective_from": ORIGIN, "product": "Basic"},
                                         {"effective_from": CHANGE, "product": "Gold"}]
    assert from_record(KIND_BY_NAME[name.removesuffix("Defined").lower()], record) == account


# --- rating -------------------------------------------------------------------------------

def rated(config, sent) -> Rated | Refusal:
    return rate_attempt(sent, config.state, rated_at=sent.received_at)


def test_an_attempt_is_rated_with_the_product_in_force_when_it_was_received() -> None:
    config = moved_to_gold()
    before, after = rated(config, BEFORE), rated(config, AFTER)
    assert (before.tariff, before.unit_price) == ("B", Decimal("0.05"))
    assert (after.tariff, after.unit_price) == ("G", Decimal("0.08"))


def test_the_refusals_of_a_product_are_those_of_the_product_in_force_then() -> None:
    config = gold(checklist(), services=("voice",))  # "IM Gold" without Messaging
    config.define(with_product_from(alice(config), "IM Gold", CHANGE), at=CHANGE)
    assert type(rated(config, BEFORE)) is Rated
    refused = rated(config, AFTER)
    assert refused.reason_code == "service_not_in_product" and "'IM Gold'" in refused.message


def test_re_rating_corrects_past_attempts_to_the_product_said_after_the_fact() -> None:
    config = gold(checklist(msgn_price="0.05"))
    old = live_outcome(config, AFTER)
    assert old.amount == Decimal("0.05")
    config.define(with_product_from(alice(config), "IM Gold", T0), at=CHANGE + timedelta(days=30))
    change = rerate(AFTER, old, config.state, run_id="rr-products", rated_at=CHANGE + timedelta(days=30))
    assert (change.new.tariff, change.new.amount, change.new.difference) == ("G", Decimal("0.08"), Decimal("0.03"))


# --- references ---------------------------------------------------------------------------

def test_a_history_naming_an_unknown_product_is_a_broken_reference() -> None:
    config = checklist()
    account = Account(ALICE, "Acme", "IM product", product_history=(ProductChange(ORIGIN, "Nope"),
                                                                    ProductChange(T0, "IM product")))
    with pytest.raises(ConfigRefused) as refused:
        config.define(account)
    assert refused.value.reason_code == "broken_reference" and 'product_history: unknown product "Nope"' in str(
        refused.value)


def test_a_product_an_account_had_cannot_be_removed() -> None:
    config = gold(checklist())
    config.define(with_product_from(alice(config), "IM Gold", CHANGE), at=CHANGE)
    config.define(with_product_from(alice(config), "IM product", CHANGE + timedelta(hours=1)), at=CHANGE)
    assert alice(config).product == "IM product"  # no account has "IM Gold" now, but ALICE had it
    with pytest.raises(ConfigRefused) as refused:
        config.remove("product", "IM Gold")
    assert refused.value.reason_code == "still_referenced" and f"account '{ALICE}'" in str(refused.value)


# --- the config file ----------------------------------------------------------------------

def example_with_gold() -> dict:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["products"].append({**copy.deepcopy(data["products"][0]), "name": "Gold"})
    return data


def first_account(data: dict) -> dict:
    return data["customers"][0]["accounts"][0]


def test_a_file_lists_the_history_in_any_order() -> None:
    data = example_with_gold()
    first_account(data).update(product="Gold", product_history=[
        {"product": "Gold", "effective_from": "2026-11-01T00:00:00Z"},
        {"product": "Messaging", "effective_from": "1970-01-01"}])
    account = desired_config(data, source="x.yaml").config.accounts["1001"]
    assert account.product_history == (ProductChange(ORIGIN, "Messaging"),
                                       ProductChange(datetime(2026, 11, 1, tzinfo=timezone.utc), "Gold"))


@pytest.mark.parametrize(("history", "words"), [
    ([{"product": "Gold", "effective_from": "2026-11-01"}], 'product_history: the latest change is to "Gold", '
                                                           'not to the account\'s product "Messaging"'),
    ([{"product": "Silver", "effective_from": "2026-11-01"}, {"product": "Messaging", "effective_from": "2026-12-01"}],
     'product_history: unknown product "Silver"'),
    ([{"product": "Gold", "effective_from": "2026-11-01"}, {"product": "Messaging", "effective_from": "2026-11-01"}],
     "product_history: 2026-11-01T00:00:00+00:00 is listed twice"),
    ([{"product": "Messaging", "effective_from": "soon"}], "product_history: item 1: effective_from: must be a time"),
])
def test_a_file_with_an_invalid_history_is_refused(history, words) -> None:
    data = example_with_gold()
    first_account(data)["product_history"] = history
    with pytest.raises(ConfigFileError, match="x.yaml") as refused:
        desired_config(data, source="x.yaml")
    assert words in str(refused.value)


def in_force_after(*plans) -> dict:
    events: list = []
    for plan in plans:
        events = through_topic(plan, events)
    return fold(events).environment("default")


def test_a_file_that_says_nothing_of_the_history_keeps_it() -> None:
    data = example_with_gold()
    current = in_force_after(plan_changes(desired_config(data, source="x.yaml"), None, now=NOW))
    moved = with_product_from(current.accounts["1001"], "Gold", NOW)
    current = in_force_after(*[plan_changes(desired_config(data, source="x.yaml"), None, now=NOW)],
                             [("AccountDefined", {"event_id": "moved", "environment": "default",
                                                  "occurred_at": NOW, **to_record(moved)})])
    first_account(data)["product"] = "Gold"  # the file updated, its history not listed
    stated = desired_config(data, source="x.yaml")
    assert plan_changes(stated, current, now=NOW) == []  # nothing appended: the history stays
    first_account(data)["aliases"] = ["alice"]
    changed = plan_changes(desired_config(data, source="x.yaml"), current, now=NOW)
    [(name, record)] = changed
    assert record["product_history"] == to_record(moved)["product_history"]
    assert history_notes(desired_config(data, source="x.yaml"), changed) == {
        "account:1001": "product_history kept: the file lists none"}


def test_a_file_that_changes_the_product_without_its_history_is_refused() -> None:
    data = example_with_gold()
    current = in_force_after(plan_changes(desired_config(data, source="x.yaml"), None, now=NOW))
    moved = with_product_from(current.accounts["1001"], "Gold", NOW)
    current = in_force_after(plan_changes(desired_config(data, source="x.yaml"), None, now=NOW),
                             [("AccountDefined", {"event_id": "moved", "environment": "default",
                                                  "occurred_at": NOW, **to_record(moved)})])
    with pytest.raises(ConfigError, match='account "1001": product: changes from "Gold" to "Messaging" but the '
                                          "account has a product history"):
        plan_changes(desired_config(data, source="x.yaml"), current, now=NOW)  # the file of before the move
    first_account(data)["product_history"] = []  # a file may say: no history (the product all along)
    [(name, record)] = plan_changes(desired_config(data, source="x.yaml"), current, now=NOW)
    assert (record["product"], record["product_history"]) == ("Messaging", [])


def test_an_operator_s_change_is_checked_like_a_file_s() -> None:
    assert product_change_of("Gold", "2026-11-01T00:00:00Z") == ProductChange(
        datetime(2026, 11, 1, tzinfo=timezone.utc), "Gold")
    with pytest.raises(ConfigError, match="account product: effective_from: must be a time"):
        product_change_of("Gold", "yesterday")
