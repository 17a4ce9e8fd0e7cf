"""References at the fold: a config record that would leave a dangling reference, or remove an
object still referred to, is refused (ConfigRefused with its reason code) and changes nothing,
whoever wrote it; ``config apply`` folds its plan with the same rule before appending."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from imbill.domain.config import (KIND_BY_CLASS, Account, Product, Rate, UsageCharge, VendorConnection, refusal_of,
                                  to_record)
from imbill.domain.errors import ConfigError, ConfigRefused
from imbill.domain.refusal import CONFIG_REASON_CODES
from imbill.producers.config_file import DesiredConfig
from imbill.producers.config_publisher import plan_changes
from tests.builders import ALICE, POLICY, T0, checklist

NOW = datetime(2026, 2, 1, tzinfo=timezone.utc)

DEFINED = [  # (what, object, reason, words in the message)
    ("an account of an unknown product", Account("9001", "Acme", "Gold"), "broken_reference", 'unknown product "Gold"'),
    ("an account of an unknown customer", Account("9001", "Nobody", "IM product"), "broken_reference",
     'unknown customer "Nobody"'),
    ("an account with an unknown static policy", Account("9001", "Acme", "IM product", service_policy="Gone"),
     "broken_reference", 'unknown service policy "Gone"'),
    ("a rate of an unknown tariff", Rate("Z", "44", Decimal("0.1"), T0), "broken_reference", 'unknown tariff "Z"'),
    ("a rate code that is no destination", Rate("B", "MSGX", Decimal("0.1"), T0), "broken_reference",
     'unknown destination "MSGX"'),
    ("a usage charge with a vendor tariff", Product("P2", ("messaging",), (UsageCharge("messaging", "PortaSIP", "A"),)),
     "broken_reference", '"A" is a vendor tariff; a usage charge needs a customer tariff'),
    ("a connection of an unknown vendor", VendorConnection("Nobody", "c", "A"), "broken_reference",
     'unknown vendor "Nobody"'),
    ("a connection with a customer tariff", VendorConnection("Internal vendor", "c", "B"), "broken_reference",
     '"B" is a customer tariff; a connection needs a vendor tariff'),
]


@pytest.mark.parametrize("what, obj, reason, words", DEFINED, ids=[case[0] for case in DEFINED])
def test_a_definition_with_a_broken_reference_is_refused(what, obj, reason, words) -> None:
    builder = checklist()
    with pytest.raises(ConfigRefused) as refused:
        builder.define(obj)
    assert refusal_of(refused.value)[0] == reason and reason in CONFIG_REASON_CODES
    assert words in str(refused.value)
    skipped: list = []
    name = KIND_BY_CLASS[type(obj)].event
    record = {"event_id": "x", "environment": builder.environment, "occurred_at": T0, **to_record(obj)}
    after = builder.state.applied([(name, record)], on_skip=lambda *args: skipped.append(args))
    assert after.environments == builder.state.environments and len(skipped) == 1


REMOVED = [
    ("a product an account is on", "product", "IM product", "account '441632960001'"),
    ("a customer with accounts", "customer", "Acme", "account "),
    ("a tariff a usage charge uses", "tariff", "B", "product 'IM product'"),
    ("a tariff a connection uses", "tariff", "A", "vendor_connection "),
    ("a vendor with a connection", "vendor", "Internal vendor", "vendor_connection "),
]


@pytest.mark.parametrize("what, kind, key, users", REMOVED, ids=[case[0] for case in REMOVED])
def test_removing_an_object_still_referred_to_is_refused(what, kind, key, users) -> None:
    with pytest.raises(ConfigRefused) as refused:
        checklist().remove(kind, key)
    assert refused.value.reason_code == "still_referenced" and users in str(refused.value)


def test_a_policy_still_used_by_an_account_cannot_be_removed_but_can_once_unused() -> None:
    builder = checklist().define(Account(ALICE, "Acme", "IM product", service_policy=POLICY))
    with pytest.raises(ConfigRefused, match="still refer"):
        builder.remove("service_policy", POLICY)
    builder.define(Account(ALICE, "Acme", "IM product")).remove("service_policy", POLICY)
    assert POLICY not in builder.env.service_policies


def test_rates_are_history_and_never_block_a_removal() -> None:
    builder = checklist().define(Product("IM product", ("voice", "messaging"), ()))
    builder.remove("tariff", "B")  # its MSGN rate stays, as config apply leaves it
    assert "B" not in builder.env.tariffs and any(r.tariff == "B" for r in builder.env.rates.values())


def test_config_apply_refuses_a_plan_the_fold_would_refuse_with_the_same_reason() -> None:
    """The file's own checks normally catch this first; the plan is folded with the readers'
    rule anyway, so config apply can never publish a record every reader would skip."""
    current = checklist().env
    dangling = dataclasses.replace(current, accounts={**current.accounts, "9001": Account("9001", "Acme", "Gold")})
    with pytest.raises(ConfigError, match=r'account:9001: account \'9001\': product: unknown product "Gold".*'
                                          r"\(broken_reference\)"):
        plan_changes(DesiredConfig("x.yaml", current.name, dangling), current, now=NOW)


AMOUNTS = [  # what config apply refuses in a file, the fold refuses on the topic
    ("a unit price over the limit", Rate("B", "44", Decimal("1000000.01"), T0), "unit_price is over the limit"),
    ("a negative unit price", Rate("B", "44", Decimal("-0.05"), T0), "unit_price must not be negative"),
    ("an opening balance over the limit", Account("9001", "Acme", "IM product", opening_balance=Decimal("1e10")),
     "opening_balance is over the limit"),
    ("a negative credit limit", Account("9001", "Acme", "IM product", credit_limit=Decimal("-5")),
     "credit_limit must not be negative"),
]


@pytest.mark.parametrize("what, obj, words", AMOUNTS, ids=[case[0] for case in AMOUNTS])
def test_an_amount_out_of_its_bounds_is_refused_at_the_fold(what, obj, words) -> None:
    with pytest.raises(ValueError, match=words) as refused:
        checklist().define(obj)
    assert refusal_of(refused.value)[0] == "invalid_config_object"
