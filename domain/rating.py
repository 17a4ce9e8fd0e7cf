"""Rating: a message attempt and the config snapshot in, a rated message or a refusal out.

Every attempt gets exactly one outcome: :class:`Rated` (then billed by :mod:`.balance`) or
:class:`~.refusal.Refusal` with a stable reason code of :data:`REASON_CODES` (then a Rejection
event).
An attempt whose policy has ``msg.outgoing_aaa`` off is authenticated only, with no
accounting: it is refused ``not_accounted``, so it leaves a Rejection and no charge.

The steps (BRIEF rules 1-7, domain/instant-messaging-setup.txt):

1. the environment has an IM setup (service types) and Messaging is enabled;
2. incoming: the recipient is a local account or alias; the message is free (amount 0,
   billing units still counted, no rate: rate_effective_from is the attempt time), charged
   to the recipient in its customer's currency;
3. outgoing: the sender account, its product in force at the attempt's received_at
   (``Account.product_at``: Messaging included, a Messaging usage charge whose tariff is the
   customer tariff), the effective service policy;
4. the destination: the To user part, E.164-translated when ``userpart_e164_translation`` is
   on and the environment has dialing rules (what is not a number stays as it is);
5. on-net (``local_lookup`` on and the destination or the To user part is an account id or
   alias here): SIP only, rate MSGN, vendor cost from the internal vendor's SIP-UA
   connection. Off-net: the longest matching rate code, ``|`` as the last resort, then the
   routing list when ``external_routing`` is on; the first route is used (:mod:`.destination`).

The rate (and the account's product) in force at the attempt's received_at applies, however
late the attempt is rated (``rated_at`` does not choose rates; it is the caller's clock, passed in, never read).

What is looked up lives in per-environment indexes built once per config version, with
bounded memos (:mod:`.rating_index`, over :mod:`.tariff_rates` and :mod:`.routing`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from typing import NamedTuple

from imbill.domain.config import Account, ConfigState
from imbill.domain.destination import Delivery, named, price_and_route
from imbill.domain.events import Charge, MessageAttempt, Rejection, charge_id_of, correction_id_of, rejection_id_of
from imbill.domain.money import ZERO, billing_units, round_amount
from imbill.domain.rating_index import Index, Plan, Policy, index_of, product_refusal
from imbill.domain.refusal import REASON_CODES, Refusal
from imbill.domain.tariff_rates import ANY_NUMBER, MSGN

MAX_BODY_CHARS = 100_000
"""The longest message body rated (Unicode code points): a SIP datagram holds at most 65,535
bytes, and a body past this is a bug or an attack, not a message (implausible_attempt)."""
MAX_BODY_BYTES = 4 * MAX_BODY_CHARS
"""The most bytes those characters take in UTF-8."""
MAX_TEXT_CHARS = 65_535 + 1_024
"""The most characters an attempt's text fields hold together: what one SIP datagram
(65,535 bytes) carries, plus the edge's own fields (ids, address). More is implausible, and
kept out of the events the processor writes (which must stay far below the broker's 1 MiB)."""
CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future of the rating clock an attempt may be dated (clocks differ): the
default of the setting ``IMBILL_ATTEMPT_CLOCK_SKEW`` (passed in as ``clock_skew``)."""

__all__ = ["MAX_BODY_CHARS", "MAX_BODY_BYTES", "MAX_TEXT_CHARS", "CLOCK_SKEW", "text_chars", "Rated", "Refusal", "REASON_CODES", "MSGN", "ANY_NUMBER", "rate_attempt", "charge_of", "rejection_of",
           "account_push_events"]


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
    node: str | None = None
    """The node of the usage charge whose tariff rated the message."""
    destination_description: str | None = None
    cli_translated: str | None = None
    """The sender (CLI) as translated by the policy's userpart_e164_translation."""


def rate_attempt(attempt: MessageAttempt, config: ConfigState, *, rated_at: datetime,
                 clock_skew: timedelta = CLOCK_SKEW) -> Rated | Refusal:
    """Rate one attempt against the config snapshot ``config`` (see the module doc for the
    steps); the environment's rating index is derived from the snapshot and kept with it."""
    name, direction, chars = attempt.environment, attempt.direction, attempt.body_chars
    if not (0 <= chars <= MAX_BODY_CHARS and 0 <= attempt.body_bytes <= MAX_BODY_BYTES
            and attempt.received_at <= rated_at + clock_skew) or (
            attempt.delivery is not None or attempt.delivery_code is not None) and _implausible_delivery(
            attempt.delivery, attempt.delivery_code):  # _implausible's tests, inlined: every attempt passes here
        return Refusal("implausible_attempt", _implausible(attempt, rated_at, clock_skew),
                       attempt.to_user if direction == "incoming" else attempt.from_user)
    env = config.environments.get(name)
    index = (env.derived_by_name.get("rating") or index_of(env)) if env is not None else None
    if index is None or not index.set_up or not index.enabled:
        party = attempt.to_user if direction == "incoming" else attempt.from_user
        if index is None or not index.set_up:
            return Refusal("unknown_environment", f"environment {name!r} has no instant messaging setup", party)
        return Refusal("service_disabled", f"Messaging is not enabled in environment {name!r}", party)
    if direction == "outgoing":
        return _outgoing(index, attempt.from_user, attempt.to_user, attempt.to_domain, chars, attempt.received_at)
    if direction == "incoming":
        return _incoming(index, attempt.to_user, attempt.to_domain, chars, attempt.received_at, attempt.from_user)
    return Refusal("malformed_attempt", f"direction {direction!r} is neither outgoing nor incoming", attempt.from_user)


def _implausible(attempt: MessageAttempt, rated_at: datetime, clock_skew: timedelta) -> str:
    """Why an attempt cannot be real ("" when it can): its body's length is out of range, or
    it is dated after the moment it is rated (beyond :data:`CLOCK_SKEW`). Texts longer
    together than a SIP datagram (:func:`text_chars`) are refused before rating, by
    ``decide.decide_attempt``, which records them against no account."""
    if not 0 <= attempt.body_chars <= MAX_BODY_CHARS or not 0 <= attempt.body_bytes <= MAX_BODY_BYTES:
        return (f"a body of {attempt.body_chars} characters ({attempt.body_bytes} bytes) is out of range "
                f"(0 to {MAX_BODY_CHARS:,} characters)")
    if attempt.received_at > rated_at + clock_skew:
        return f"the attempt is dated {attempt.received_at.isoformat()}, after it was rated ({rated_at.isoformat()})"
    if attempt.delivery is not None or attempt.delivery_code is not None:
        return _implausible_delivery(attempt.delivery, attempt.delivery_code)
    return ""


DELIVERIES = ("delivered", "failed")
"""What the SIP edge says of a message it delivered itself (None: it did not)."""


def _implausible_delivery(delivery: str | None, code: int | None) -> str:
    """Why a delivery outcome cannot be the edge's ("" when it can): a delivered message has a
    2xx, a failed one a final status of 300 to 699."""
    if delivery not in DELIVERIES or type(code) is not int:
        return f"delivery {str(delivery)[:40]!r} with SIP code {code!r} is no outcome of the SIP edge"
    if (delivery == "delivered") != (200 <= code < 300) or not 200 <= code < 700:
        return f"delivery {delivery!r} with SIP code {code} is no outcome of the SIP edge"
    return ""


def text_chars(attempt: MessageAttempt) -> int:
    """The characters of an attempt's text fields together (see MAX_TEXT_CHARS)."""
    return sum(map(len, filter(None, _TEXTS(attempt))))  # None (no user agent) counts 0


_TEXTS = attrgetter("attempt_id", "environment", "direction", "call_id", "from_user", "from_domain", "to_user",
                    "to_domain", "request_uri", "user_agent", "content_type", "source_ip", "transport", "edge_id",
                    "delivery")
"""An attempt's text fields, one C call (this check runs for every attempt rated)."""


def _outgoing(index: Index, sender: str, to_user: str, to_domain: str, chars: int,
              when: datetime) -> Rated | Refusal:
    account = index.accounts.get(sender)
    if account is None:
        return Refusal("unknown_account", f"{sender!r} is not an account of environment {index.name!r}", sender)
    # the product in force when the attempt was received (an account without history: the one)
    product = account.product_at(when) if account.product_history else account.product
    plan = index.plans.get(product)
    if plan is None or not plan.messaging or plan.rates is None:
        return product_refusal(account, plan, product).against(account.account_id)
    policy = index.policies.get((account.service_policy, to_domain)) or index.policy(account, to_domain)
    if not policy.outgoing_aaa:
        return Refusal("not_accounted", f"{named(policy)} has outgoing_aaa off: the message from {sender!r} "
                       "is authenticated only, not accounted", sender)
    dialed = (index.dialed.get(to_user) or index.dial(to_user))[policy.userpart_e164_translation]
    size = policy.billing_unit_size  # None or >= 1: money.billing_units, inlined on the hot path
    units = 1 if size is None or chars <= size else -(-chars // size)
    delivery = price_and_route(index, plan, policy, dialed, when, units)
    if type(delivery) is Refusal:
        return delivery.against(account.account_id)
    # the sender's CLI as the policy translates it (Index.cli, its memo read inline: every message)
    cli = (index.clis.get(sender) or index.cli(sender)) if policy.userpart_e164_translation else sender
    return _rated(index, account, plan, policy, units, delivery, cli)


def _rated(index: Index, account: Account, plan: Plan, policy: Policy, units: int, delivery: Delivery,
           cli_translated: str) -> Rated:
    on_net, destination, price, route, cost, routing = delivery
    return _new_rated(Rated, (  # Rated's fields in order, as its constructor would place them by name
        index.name, account.account_id, account.customer, "outgoing",  # environment, account, customer, direction
        on_net, destination, units,  # on_net, destination, billing_units
        price.unit_price, price.amount(units), plan.currency, plan.tariff,  # unit_price, amount, currency, tariff
        price.rate_code, price.effective_from,  # rate_code, rate_effective_from
        policy.service_policy, policy.policies, policy.transport_protocol,  # ... transport_protocol
        route and route.vendor, route and route.connection, route and route.tariff,  # vendor, connection, vendor_tariff
        cost, route and route.currency,  # vendor_cost, vendor_currency
        account.balance_model, account.credit_limit, account.opening_balance,  # balance_model ... opening_balance
        plan.push_events, routing,  # push_events, routing
        plan.node, index.descriptions.get(price.rate_code), cli_translated,  # node, destination_description, ...
    ))


_new_rated = tuple.__new__
"""``Rated(...)`` without its generated ``__new__`` (29 arguments by name): ~2 us less per
rated attempt, a sixth of rating's time (README, "Benchmarks"). tests/test_rules_rating.py
reads every field by name, so a field out of place fails there."""


def _incoming(index: Index, to_user: str, to_domain: str, chars: int, when: datetime,
              from_user: str) -> Rated | Refusal:
    account = index.recipient(to_user)
    if account is None:
        return Refusal("unknown_recipient", f"{to_user!r} is not an account or alias of environment "
                       f"{index.name!r}", to_user)
    policy = index.policy(account, to_domain)
    customer = index.env.customers.get(account.customer)
    currency = customer.currency if customer is not None else ""
    plan = index.plans.get(account.product_at(when))
    return Rated(
        environment=index.name, account=account.account_id, customer=account.customer, direction="incoming",
        on_net=False, destination=to_user, billing_units=billing_units(chars, policy.billing_unit_size),
        unit_price=ZERO, amount=round_amount(ZERO, currency), currency=currency, tariff="", rate_code="",
        rate_effective_from=when, service_policy=policy.service_policy, policies=policy.policies,
        transport_protocol=policy.transport_protocol, vendor=None, connection=None, vendor_tariff=None,
        vendor_cost=ZERO, vendor_currency=None, balance_model=account.balance_model,
        credit_limit=account.credit_limit, opening_balance=account.opening_balance,
        push_events=bool(plan and plan.push_events), node=plan.node if plan is not None else None,
        cli_translated=index.cli(from_user) if policy.userpart_e164_translation else from_user)


def account_push_events(config: ConfigState, environment: str, account: str) -> bool:
    """Whether the account's product policy sets audiocodes.cmms.push_events (for top-ups)."""
    env = config.environments.get(environment)
    found = env.accounts.get(account) if env is not None else None
    plan = index_of(env).plans.get(found.product) if found is not None else None
    return bool(plan and plan.push_events)


def charge_of(attempt: MessageAttempt, rated: Rated, rated_at: datetime, *, revision: int = 1,
              corrects: str | None = None, difference: Decimal | None = None, rerate_run: str | None = None) -> Charge:
    """The Charge of a rated attempt: a first charge (kind "charge", revision 1), or with
    ``revision`` 2 or more the correction of outcome ``corrects`` (:mod:`.rerate`)."""
    first = revision == 1
    return Charge(
        charge_id=charge_id_of(attempt.attempt_id) if first else correction_id_of(attempt.attempt_id, revision),
        attempt_id=attempt.attempt_id, kind="charge" if first else "correction", corrects=corrects,
        environment=rated.environment, account=rated.account, customer=rated.customer, direction=rated.direction,
        attempted_at=attempt.received_at, rated_at=rated_at, from_user=attempt.from_user,
        to_user=attempt.to_user, to_domain=attempt.to_domain, destination=rated.destination,
        on_net=rated.on_net, body_chars=attempt.body_chars, billing_units=rated.billing_units,
        unit_price=rated.unit_price, amount=rated.amount, currency=rated.currency, tariff=rated.tariff,
        rate_code=rated.rate_code, rate_effective_from=rated.rate_effective_from,
        service_policy=rated.service_policy, policies=tuple(rated.policies),
        transport_protocol=rated.transport_protocol, vendor=rated.vendor, connection=rated.connection,
        vendor_tariff=rated.vendor_tariff, vendor_cost=rated.vendor_cost, vendor_currency=rated.vendor_currency,
        revision=revision, service="messaging", node=rated.node, cli_translated=rated.cli_translated,
        destination_description=rated.destination_description, user_agent=attempt.user_agent,
        difference=difference, rerate_run=rerate_run, delivery=attempt.delivery, delivery_code=attempt.delivery_code)


def rejection_of(attempt: MessageAttempt, refusal: Refusal, rejected_at: datetime) -> Rejection:
    """The Rejection of a refused attempt (also for billing's refusals)."""
    return Rejection(
        rejection_id=rejection_id_of(attempt.attempt_id), attempt_id=attempt.attempt_id,
        environment=attempt.environment, account=refusal.account, attempted_at=attempt.received_at,
        rejected_at=rejected_at, reason_code=refusal.reason_code, message=refusal.message,
        to_user=attempt.to_user, to_domain=attempt.to_domain)
