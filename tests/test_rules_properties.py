"""Invariants of the rule layer over generated configs, attempts and balance histories."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import given
from hypothesis import strategies as st

from imbill.domain.config import Account, Rate, ServicePolicy, Tariff, Vendor, VendorConnection
from imbill.domain.balance import bill, open_account, top_up
from imbill.domain.catalogue import MESSAGING_CATALOGUE
from imbill.domain.money import billing_units, minor_units
from imbill.domain.patterns import like
from imbill.domain.policy import effective_attributes
from imbill.domain.events import BalanceChanged
from imbill.domain.rating import Rated, rate_attempt
from tests import strategies as s
from tests.builders import ALICE, IM_ATTRIBUTES, T0, attempt, checklist, payment

RATED_AT = T0 + timedelta(hours=2)  # the builders' attempts are received at T0 + 1 hour


@given(s.body_chars, s.unit_sizes)
def test_units_cover_the_message(chars: int, size: int | None) -> None:
    units = billing_units(chars, size)
    assert units >= 1
    if size is None:
        assert units == 1
    else:
        assert (units - 1) * size < max(chars, 1) <= units * size


@given(s.body_chars, s.unit_sizes, s.prices, s.currencies)
def test_amount_is_units_times_price_rounded(chars: int, size: int | None, price: Decimal, currency: str) -> None:
    attributes = {**IM_ATTRIBUTES, "msg.billing_unit_size": size} if size else {
        k: v for k, v in IM_ATTRIBUTES.items() if k != "msg.billing_unit_size"}
    config = checklist(currency=currency, msgn_price=s.as_price(price), attributes=attributes)
    rated = rate_attempt(attempt(body_chars=chars), config.state, rated_at=RATED_AT)
    assert isinstance(rated, Rated)
    assert rated.billing_units == billing_units(chars, size)
    quantum = Decimal(1).scaleb(-minor_units(currency))
    assert rated.amount == (rated.billing_units * price).quantize(quantum, rounding=ROUND_HALF_UP)
    assert rated.amount.as_tuple().exponent == -minor_units(currency)
    assert rated.currency == currency


@given(st.lists(s.rate_codes, unique=True, max_size=12), s.numbers, st.booleans(), st.data())
def test_longest_prefix_wins(codes: list[str], number: str, wildcard: bool, data: st.DataObject) -> None:
    if codes and data.draw(st.booleans()):
        number = data.draw(st.sampled_from(codes)) + number  # make a prefix match likely
    attributes = {**IM_ATTRIBUTES, "msg.local_lookup": False, "msg.userpart_e164_translation": False,
                  "msg.external_routing": True}
    config = checklist(attributes=attributes).define(
        *(Rate("B", code, Decimal(len(code)), T0) for code in codes),
        *([Rate("B", "|", Decimal("0.5"), T0)] if wildcard else []),
        Vendor("Carrier"), Tariff("V", "USD", applied_to="vendor"), Rate("V", "|", Decimal("0.01"), T0),
        VendorConnection("Carrier", "out", "V"),
    )
    rated = rate_attempt(attempt(to_user=number), config.state, rated_at=RATED_AT)
    prefixes = [code for code in codes if number.startswith(code)]
    expected = max(prefixes, key=len) if prefixes else ("|" if wildcard else None)
    assert getattr(rated, "rate_code", None) == expected
    if expected is None:
        assert rated.reason_code == "no_rate"


@given(s.dynamic_policies(), s.static_policies(), s.domains)
def test_a_static_policy_always_wins(dynamic: list[ServicePolicy], static: ServicePolicy, domain: str) -> None:
    config = checklist().remove("service_policy", "Instant messaging").define(
        *dynamic, static, Account(ALICE, "Acme", "IM product", service_policy="static"))
    effective = effective_attributes(config.env, account=ALICE, to_domain=domain)
    assert effective.static == "static" == effective.service_policy
    matching = sorted((p for p in [*dynamic, static] if like(p.pattern, domain)),
                      key=lambda p: (-p.match_priority, p.name))
    winner = matching[0] if matching else None
    assert effective.winner == (winner.name if winner else None)
    for key, value in effective.values.items():
        if key in static.attributes:
            assert (value, effective.source[key]) == (static.attributes[key], "static")
        elif winner is not None and key in winner.attributes:
            assert (value, effective.source[key]) == (winner.attributes[key], winner.name)
        else:
            assert (value, effective.source[key]) == (MESSAGING_CATALOGUE[key].default, "default")


@given(s.money, s.balance_operations)
def test_charges_equal_the_drop_in_prepaid_balances(opening: Decimal, operations: list) -> None:
    account = Account(ALICE, "Acme", "IM product", balance_model="prepaid", opening_balance=opening)
    state = open_account(account, "USD")
    base = rate_attempt(attempt(), checklist().state, rated_at=RATED_AT)._replace(balance_model="prepaid")
    charged = paid = deltas = Decimal(0)
    last: tuple = ()
    for index, (kind, amount) in enumerate(operations):
        if kind == "redeliver" and last:
            kind, amount, index = last
        if kind == "top_up":
            state, events = top_up(state, payment(str(amount), payment_id=f"p{index}"), offset=index, occurred_at=T0)
            paid += sum((e.delta for e in events if type(e) is BalanceChanged), Decimal(0))
        elif kind == "charge":
            result = bill(state, base._replace(amount=amount), attempt_id=f"a{index}", offset=index, occurred_at=T0)
            state, events = result.state, result.events
            charged += amount if result.charged else 0
        else:
            continue
        deltas += sum((e.delta for e in events if type(e) is BalanceChanged), Decimal(0))
        last = (kind, amount, index)
        assert state.balance >= 0
    assert state.balance == opening + paid - charged
    assert deltas == state.balance - opening
