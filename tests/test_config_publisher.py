"""plan_changes: the desired config of a file against the config in force -> the events that
change it, and nothing when nothing changes. No broker: events go through the Avro codec and
the config fold exactly as they would through the topic."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from imbill.domain.errors import ConfigError
from imbill.producers.config_file import DesiredConfig, desired_config
from imbill.presentation import config_rows as describe
from imbill.producers.config_publisher import PLAN_ORDER, plan_changes, tariff_currencies
from imbill.schemas.codec import decode, encode
from imbill.domain.config import ConfigState, EnvironmentConfig, fold

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "instant-messaging.yaml"
NOW = datetime(2026, 2, 1, 12, tzinfo=timezone.utc)
LATER = datetime(2026, 2, 2, 12, tzinfo=timezone.utc)


def example_data() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def desired(data: dict | None = None) -> DesiredConfig:
    return desired_config(example_data() if data is None else data, source="x.yaml")


def through_topic(events: list[tuple[str, dict]], state: list | None = None) -> list[tuple[str, dict]]:
    """Encode and decode every event, as appending and reading the config topic does."""
    return [*(state or []), *(decode(encode(name, record)) for name, record in events)]


def in_force(events: list[tuple[str, dict]], environment: str = "default") -> EnvironmentConfig | None:
    return fold(events).environment(environment)


def applied(data: dict | None = None) -> list[tuple[str, dict]]:
    return through_topic(plan_changes(desired(data), None, now=NOW))


def test_the_first_apply_defines_every_object_references_first() -> None:
    target = desired()
    events = plan_changes(target, None, now=NOW)
    assert len(events) == len(list(target.config.objects()))
    names = [name for name, _ in events]
    order = [kind.event for kind in PLAN_ORDER]
    assert names == sorted(names, key=order.index)
    assert names[:4] == ["ServiceTypesSet", "DialingRulesSet", "SipSettingsSet", "DestinationDefined"]
    assert names[-1] == "AccountDefined"
    assert all(r["environment"] == "default" and r["occurred_at"] == NOW for _, r in events)
    assert len({r["event_id"] for _, r in events}) == len(events)


def test_the_plan_folds_into_the_desired_config() -> None:
    target = desired()
    state = in_force(applied())
    for kind in PLAN_ORDER:
        assert state.collection(kind) == target.config.collection(kind), kind.name


def test_the_same_file_again_plans_nothing() -> None:
    assert plan_changes(desired(), in_force(applied()), now=LATER) == []


def test_a_changed_price_plans_one_rate() -> None:
    data = example_data()
    msgn = next(r for t in data["tariffs"] for r in t["rates"] if r["rate_code"] == "MSGN")
    msgn["unit_price"] = "0.07"
    events = plan_changes(desired(data), in_force(applied()), now=LATER)
    assert [name for name, _ in events] == ["RateDefined"]
    assert str(events[0][1]["unit_price"]) == "0.070000"
    assert (events[0][1]["tariff"], events[0][1]["rate_code"]) == ("On-net messaging", "MSGN")


def test_a_new_rate_from_a_later_date_keeps_the_old_one() -> None:
    data = example_data()
    tariff_b = next(t for t in data["tariffs"] if t["name"] == "On-net messaging")
    tariff_b["rates"] = [{"rate_code": "MSGN", "unit_price": "0.06", "effective_from": "2026-06-01T00:00:00Z"}]
    history = applied()
    events = plan_changes(desired(data), in_force(history), now=LATER)
    assert [(n, r["rate_code"]) for n, r in events] == [("RateDefined", "MSGN")]  # rates are never removed
    rates = in_force(through_topic(events, history)).rates
    assert sorted(str(r.unit_price) for r in rates.values() if r.rate_code == "MSGN") == ["0.050000", "0.060000"]


def test_a_removed_account_plans_its_removal() -> None:
    data = example_data()
    data["customers"][0]["accounts"] = [a for a in data["customers"][0]["accounts"] if a["id"] != "1002"]
    events = plan_changes(desired(data), in_force(applied()), now=LATER)
    assert events == [("ConfigObjectRemoved", {**events[0][1], "kind": "account", "key": "1002"})]
    assert "1002" not in in_force(through_topic(events, applied())).accounts


def test_definitions_come_first_and_removals_in_reverse_order() -> None:
    data = example_data()
    data["vendors"] = [v for v in data["vendors"] if v["name"] != "Off-net carrier"]
    data["tariffs"] = [t for t in data["tariffs"] if t["name"] != "Off-net messaging (vendor)"]
    for account in data["customers"][0]["accounts"]:
        account["product"] = "Messaging 2"
    data["products"].append({**data["products"][0], "name": "Messaging 2"})
    data["products"] = data["products"][1:]
    events = plan_changes(desired(data), in_force(applied()), now=LATER)
    assert [(n, r.get("kind"), r.get("key", r.get("name", r.get("account_id")))) for n, r in events] == [
        ("ProductDefined", None, "Messaging 2"),
        ("AccountDefined", None, "1001"),
        ("AccountDefined", None, "1002"),
        ("ConfigObjectRemoved", "product", "Messaging"),
        ("ConfigObjectRemoved", "vendor_connection", "Off-net carrier/Off-net messaging via SIP"),
        ("ConfigObjectRemoved", "vendor", "Off-net carrier"),
        ("ConfigObjectRemoved", "tariff", "Off-net messaging (vendor)"),
    ]


def test_a_tariff_currency_never_changes() -> None:
    data = example_data()
    next(t for t in data["tariffs"] if t["name"] == "Instant messaging (vendor)")["currency"] = "EUR"
    with pytest.raises(ConfigError) as caught:
        plan_changes(desired(data), in_force(applied()), now=LATER)
    assert str(caught.value) == ('x.yaml: tariff "Instant messaging (vendor)": currency: cannot change from USD '
                                 "to EUR (a tariff's currency is set once)")


def test_a_removed_tariff_keeps_its_currency_in_history() -> None:
    data = example_data()
    data["tariffs"].append({"name": "Spare", "currency": "USD", "applied_to": "vendor"})
    history = applied(data)
    data["tariffs"].pop()
    history = through_topic(plan_changes(desired(data), in_force(history), now=LATER), history)
    assert "Spare" not in in_force(history).tariffs
    data["tariffs"].append({"name": "Spare", "currency": "GBP", "applied_to": "vendor"})
    with pytest.raises(ConfigError, match='tariff "Spare": currency: cannot change from USD to GBP'):
        plan_changes(desired(data), in_force(history), now=LATER,
                     currencies=tariff_currencies(history, "default"))


def test_environments_are_planned_apart() -> None:
    data = example_data()
    history = applied()
    data["environment"] = "other"
    next(t for t in data["tariffs"] if t["name"] == "Instant messaging (vendor)")["currency"] = "EUR"
    events = plan_changes(desired(data), in_force(history, "other"), now=LATER,
                          currencies=tariff_currencies(history, "other"))
    assert len(events) == len(list(desired(data).config.objects()))
    assert {r["environment"] for _, r in events} == {"other"}


def test_event_ids_come_from_the_given_source() -> None:
    counter = itertools.count()
    events = plan_changes(desired(), None, now=NOW, new_event_id=lambda: f"id-{next(counter)}")
    assert [r["event_id"] for _, r in events] == [f"id-{i}" for i in range(len(events))]


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_changes(desired(), None, now=datetime(2026, 1, 1))


def test_describe_prints_every_kind_in_force() -> None:
    state: ConfigState = fold(applied())
    tables = {t.kind: t for t in describe(state)}
    assert list(tables) == [k.name for k in PLAN_ORDER]
    accounts = tables["account"]
    assert accounts.columns[:3] == ("environment", "account_id", "customer")
    row = dict(zip(accounts.columns, accounts.rows[0]))
    assert row == {"environment": "default", "account_id": "1001", "customer": "Example Corp", "product": "Messaging",
                   "service_password": "***", "aliases": "12125550101, alice", "service_policy": "",
                   "balance_model": "prepaid", "opening_balance": "10.00", "credit_limit": "0.00",
                   "product_history": ""}  # USD: 2 minor units
    assert not any("alice-secret" in cell for kind in tables.values() for row in kind.rows for cell in row)
    rate = dict(zip(tables["rate"].columns, tables["rate"].rows[1]))
    assert (rate["rate_code"], rate["unit_price"], rate["effective_from"]) == ("MSGN", "0.05", "2026-01-01T00:00:00+00:00")
    assert dict(zip(tables["product"].columns, tables["product"].rows[0]))["usage_charges"] == (
        "messaging/PortaSIP/On-net messaging")
    assert describe(state, "nowhere") == []
