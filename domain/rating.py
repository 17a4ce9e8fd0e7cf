"""Rating: a message attempt and the config snapshot in, a rated message or a refusal out.

Every attempt gets exactly one outcome: :class:`Rated` (then billed by :mod:`.balance`) or
:class:`Refused` with a stable reason code of :data:`REASON_CODES` (then a Rejection event).
An attempt whose policy has ``msg.outgoing_aaa`` off is authenticated only, with no
accounting: it is refused ``not_accounted``, so it leaves a Rejection and no charge.

The steps (BRIEF rules 1-7, domain/instant-messaging-setup.txt):

1. the environment has an IM setup (service types) and Messaging is enabled;
2. incoming: the recipient is a local account or alias; the message is free (amount 0,
   billing units still counted, no rate: rate_effective_from is the attempt time), charged
   to the recipient in its customer's currency;
3. outgoing: the sender account, its product (Messaging included, a Messaging usage charge
   whose tariff is the customer tariff), the effective service policy;
4. the destination: the To user part, E.164-translated when ``userpart_e164_translation`` is
   on and the environment has dialing rules (what is not a number stays as it is);
5. on-net (``local_lookup`` on and the destination or the To user part is an account id or
   alias here): SIP only, rate MSGN, vendor cost from the internal vendor's SIP-UA
   connection. Off-net: the longest matching rate code, ``|`` as the last resort, then the
   routing list when ``external_routing`` is on; the first route is used (:mod:`.destination`).

The rate in force at the attempt's received_at applies, however late the attempt is rated
(``rated_at`` does not choose rates; it is the caller's clock, passed in, never read).

What is looked up lives in per-environment indexes built once per config version, with
bounded memos (:mod:`.rating_index`, over :mod:`.tariff_rates` and :mod:`.routing`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from imbill.domain.config import Account, ConfigState
from imbill.domain.destination import Delivery, deliver, named
from imbill.domain.money import ZERO, billing_units, round_amount
from imbill.domain.rating_index import Index, Plan, Policy, Refusal, index_of, product_refusal
from imbill.domain.tariff_rates import ANY_NUMBER, MSGN

__all__ = ["Rated", "Refused", "REASON_CODES", "MSGN", "ANY_NUMBER", "rate_attempt", "charge_record",
           "rejection_record", "account_push_events"]

REASON_CODES: Mapping[str, str] = MappingProxyType({
    "malformed_attempt": "The attempt event cannot be decoded or lacks a field rating needs.",
    "unknown_environment": "The virtual environment has no instant messaging setup (no service types).",
    "service_disabled": "Messaging is not enabled in the environment (BillingEngine ServiceTypes).",
    "unknown_recipient": "An incoming message's recipient is no account or alias of the environment.",
    "unknown_account": "The sender is not an account of the environment.",
    "service_not_in_product": "The account's product does not include the Messaging service.",
    "no_usage_charge": "The product has no Messaging usage charge with a defined tariff.",
    "not_accounted": "The service policy has outgoing_aaa off: authentication only, no accounting.",
    "smpp_on_net": "The transport protocol is SMPP, which delivers off-net messages only.",
    "no_rate": "The customer tariff has no rate in force for the destination.",
    "undeliverable": "An off-net message while the service policy has external_routing off.",
    "no_route": "No vendor connection for Messaging has a rate for the destination.",
    "insufficient_funds": "The prepaid balance, or the postpaid credit limit, cannot cover the charge.",
    "service_suspended": "The account's messaging service is suspended (wallet empty) until a top-up.",
    "currency_mismatch": "The charge is in another currency than the account's balance.",
})


class Rated(NamedTuple):
    """What rating decides for a Charge, and the account facts billing needs."""

    environment: str
    account: str
    customer: str
    direction: str
    on_net: bool
    destination: str
    billing_units: int
    unit_price: Decimal
    amount: Decimal
    currency: str
    tariff: str
    rate_code: str
    rate_effective_from: datetime
    service_policy: str | None
    policies: tuple[str, ...]
    transport_protocol: str
    vendor: str | None
    connection: str | None
    vendor_tariff: str | None
    vendor_cost: Decimal
    vendor_currency: str | None
    balance_model: str
    credit_limit: Decimal
    opening_balance: Decimal
    push_events: bool
    routing: tuple[str, ...] = ()
    """The routing list ("vendor/connection", best first) of an externally routed message."""


class Refused(NamedTuple):
    reason_code: str
    message: str
    account: str


def rate_attempt(attempt: Mapping[str, Any], config: ConfigState, *, rated_at: datetime) -> Rated | Refused:
    """Rate one MessageAttempt record against ``config`` (see the module doc for the steps)."""
    try:
        name, direction, when = attempt["environment"], attempt["direction"], attempt["received_at"]
        sender, to_user, to_domain = attempt["from_user"], attempt["to_user"], attempt["to_domain"]
        chars = attempt["body_chars"]
    except (KeyError, TypeError):
        return Refused("malformed_attempt", "the attempt lacks a field that rating needs", "")
    env = config.environments.get(name)
    index = index_of(env) if env is not None else None
    if index is None or not index.set_up or not index.enabled:
        party = to_user if direction == "incoming" else sender
        if index is None or not index.set_up:
            return Refused("unknown_environment", f"environment {name!r} has no instant messaging setup", party)
        return Refused("service_disabled", f"Messaging is not enabled in environment {name!r}", party)
    if direction == "outgoing":
        return _outgoing(index, sender, to_user, to_domain, chars, when)
    if direction == "incoming":
        return _incoming(index, to_user, to_domain, chars, when)
    return Refused("malformed_attempt", f"direction {direction!r} is neither outgoing nor incoming", sender)


def _outgoing(index: Index, sender: str, to_user: str, to_domain: str, chars: int, when: datetime) -> Rated | Refused:
    account = index.accounts.get(sender)
    if account is None:
        return Refused("unknown_account", f"{sender!r} is not an account of environment {index.name!r}", sender)
    plan = index.plans.get(account.product)
    if plan is None or not plan.messaging or plan.rates is None:
        return _refused(product_refusal(account, plan), account)
    policy = index.policies.get((account.service_policy, to_domain)) or index.policy(account, to_domain)
    if not policy.accounted:
        return Refused("not_accounted", f"{named(policy)} has outgoing_aaa off: the message from {sender!r} "
                       "is authenticated only, not accounted", sender)
    dialed = (index.dialed.get(to_user) or index.dial(to_user))[policy.translate]  # (as dialed, in E.164)
    size = policy.unit_size  # None or >= 1: money.billing_units, inlined on the hot path
    units = 1 if size is None or chars <= size else -(-chars // size)
    delivery = deliver(index, plan, policy, dialed, when, units)
    if type(delivery) is Refusal:
        return _refused(delivery, account)
    return _rated(index, account, plan, policy, units, delivery)


def _refused(refusal: Refusal, account: Account) -> Refused:
    return Refused(refusal.reason_code, refusal.message, account.account_id)


def _rated(index: Index, account: Account, plan: Plan, policy: Policy, units: int, delivery: Delivery) -> Rated:
    on_net, destination, price, route, cost, routing = delivery
    return _new_rated(Rated, (
        index.name, account.account_id, account.customer, "outgoing", on_net, destination, units, price.unit_price,
        price.amount(units), plan.currency, plan.tariff, price.rate_code, price.effective_from,
        policy.service_policy, policy.policies, policy.transport,
        route and route.vendor, route and route.connection, route and route.tariff, cost, route and route.currency,
        account.balance_model, account.credit_limit, account.opening_balance, plan.push_events, routing,
    ))


_new_rated = tuple.__new__  # Rated(...) without the generated __new__'s Python frame: the hot path


def _incoming(index: Index, to_user: str, to_domain: str, chars: int, when: datetime) -> Rated | Refused:
    account = index.recipient(to_user)
    if account is None:
        return Refused("unknown_recipient", f"{to_user!r} is not an account or alias of environment "
                       f"{index.name!r}", to_user)
    policy = index.policy(account, to_domain)
    customer = index.env.customers.get(account.customer)
    currency = customer.currency if customer is not None else ""
    plan = index.plans.get(account.product)
    return _new_rated(Rated, (
        index.name, account.account_id, account.customer, "incoming", False, to_user,
        billing_units(chars, policy.unit_size), ZERO, round_amount(ZERO, currency), currency, "", "",
        when, policy.service_policy, policy.policies, policy.transport, None, None, None, ZERO, None,
        account.balance_model, account.credit_limit, account.opening_balance, bool(plan and plan.push_events), (),
    ))


def account_push_events(config: ConfigState, environment: str, account: str) -> bool:
    """Whether the account's product policy sets audiocodes.cmms.push_events (for top-ups)."""
    env = config.environments.get(environment)
    found = env.accounts.get(account) if env is not None else None
    plan = index_of(env).plans.get(found.product) if found is not None else None
    return bool(plan and plan.push_events)


def charge_record(attempt: Mapping[str, Any], rated: Rated, rated_at: datetime) -> dict[str, Any]:
    """The Charge event of a rated attempt (a first charge: kind "charge", corrects None)."""
    return {
        "charge_id": "chg-" + attempt["attempt_id"], "attempt_id": attempt["attempt_id"], "kind": "charge",
        "corrects": None, "environment": rated.environment, "account": rated.account,
        "customer": rated.customer, "direction": rated.direction, "attempted_at": attempt["received_at"],
        "rated_at": rated_at, "from_user": attempt["from_user"], "to_user": attempt["to_user"],
        "to_domain": attempt["to_domain"], "destination": rated.destination, "on_net": rated.on_net,
        "body_chars": attempt["body_chars"], "billing_units": rated.billing_units,
        "unit_price": rated.unit_price, "amount": rated.amount, "currency": rated.currency,
        "tariff": rated.tariff, "rate_code": rated.rate_code, "rate_effective_from": rated.rate_effective_from,
        "service_policy": rated.service_policy, "policies": list(rated.policies),
        "transport_protocol": rated.transport_protocol, "vendor": rated.vendor, "connection": rated.connection,
        "vendor_tariff": rated.vendor_tariff, "vendor_cost": rated.vendor_cost,
        "vendor_currency": rated.vendor_currency,
    }


def rejection_record(attempt: Mapping[str, Any], refused: Refused, rejected_at: datetime) -> dict[str, Any]:
    """The Rejection event of a refused attempt (also for billing's refusals).

    Only attempt_id is required, so a malformed attempt can be rejected too: a missing
    received_at is the rejection time, missing strings are empty.
    """
    return {
        "rejection_id": "rej-" + attempt["attempt_id"], "attempt_id": attempt["attempt_id"],
        "environment": attempt.get("environment") or "", "account": refused.account,
        "attempted_at": attempt.get("received_at") or rejected_at, "rejected_at": rejected_at,
        "reason_code": refused.reason_code, "message": refused.message,
        "to_user": attempt.get("to_user") or "", "to_domain": attempt.get("to_domain") or "",
    }
