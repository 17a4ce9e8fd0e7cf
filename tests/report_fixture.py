"""A projection database full of billed traffic, made the way production makes it.

:func:`project_traffic` applies :data:`CONFIG` (three customers in USD and EUR, an internal
vendor and two carriers, one prepaid account that runs dry), decides a day of generated
attempts with the processor's own rules (``decide_attempt``), passes every event through
its Avro contract and writes it with the projector's own row writers (``insert_rows``,
``fold_config_objects``). The report's tests and the README's screenshot use it.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from imbill.bus import Envelope
from imbill.domain.config import ConfigState
from imbill.domain.decide import decide_attempt
from imbill.domain.events import Charge, Rejection
from imbill.domain.keys import account_key
from imbill.producers.attempt import synthetic_attempt
from imbill.producers.config_file import parse_config
from imbill.producers.config_publisher import plan_changes
from imbill.projections.models import connect, migrate
from imbill.projections.projector import CONFIG_MAPPERS, XDR_MAPPERS, fold_config_objects, insert_rows
from imbill.schemas.codec import decode, encode, encode_event, event_of

__all__ = ["ENVIRONMENT", "START", "HOURS", "CONFIG", "CUSTOMER_OF", "project_traffic"]

ENVIRONMENT = "demo"
START = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
HOURS = 10
CONFIG = """
environment: demo
billing_engine: {service_types: {messaging: true}}
dialing_rules: {country_code: "1", international_prefix: "011", national_prefix: "1", area_code: "212",
                min_length: 11, max_length: 15}
destinations: [{prefix: MSGN, format: custom, description: On-net messages}]
service_policies:
  - name: Instant messaging
    service_type: messaging
    recipient_domain_pattern: "%"
    match_priority: 5
    attributes: {msg: {transport_protocol: SIP, outgoing_aaa: yes, local_lookup: yes,
                       userpart_e164_translation: yes, billing_unit_size: 60, external_routing: yes}}
tariffs:
  - {name: Internal (vendor), currency: USD, service: messaging, applied_to: vendor, routing: false,
     rates: [{rate_code: "|", unit_price: "0"}]}
  - {name: Carrier US (vendor), currency: USD, service: messaging, applied_to: vendor, routing: false,
     rates: [{rate_code: "1", unit_price: "0.01"}, {rate_code: "44", unit_price: "0.03"},
             {rate_code: "33", unit_price: "0.035"}]}
  - {name: Carrier EU (vendor), currency: EUR, service: messaging, applied_to: vendor, routing: false,
     rates: [{rate_code: "44", unit_price: "0.025"}, {rate_code: "33", unit_price: "0.02"}]}
  - {name: Retail USD, currency: USD, service: messaging, applied_to: customer,
     rates: [{rate_code: MSGN, unit_price: "0.05"}, {rate_code: "1", unit_price: "0.10"},
             {rate_code: "44", unit_price: "0.12"}, {rate_code: "33", unit_price: "0.11"}]}
  - {name: Retail EUR, currency: EUR, service: messaging, applied_to: customer,
     rates: [{rate_code: MSGN, unit_price: "0.04"}, {rate_code: "44", unit_price: "0.09"},
             {rate_code: "33", unit_price: "0.07"}]}
vendors:
  - name: Internal vendor
    internal: true
    connections: [{description: Internal messaging via SIP, service_type: messaging, type: SIP/SIMPLE,
                   tariff: Internal (vendor), internal: true, use_for: SIP-UA}]
  - name: Carrier US
    connections: [{description: US carrier via SIP, service_type: messaging, type: SIP/SIMPLE,
                   tariff: Carrier US (vendor), routing_preference: 2}]
  - name: Carrier EU
    connections: [{description: EU carrier via SIP, service_type: messaging, type: SIP/SIMPLE,
                   tariff: Carrier EU (vendor), routing_preference: 1}]
products:
  - {name: Messaging USD, services: [messaging], usage_charges: [{service: messaging, node: PortaSIP, tariff: Retail USD}]}
  - {name: Messaging EUR, services: [messaging], usage_charges: [{service: messaging, node: PortaSIP, tariff: Retail EUR}]}
customers:
  - name: Example Corp
    currency: USD
    accounts:
      - {id: "1001", product: Messaging USD, balance_model: postpaid, credit_limit: "500.00"}
      - {id: "1002", product: Messaging USD, balance_model: postpaid, credit_limit: "500.00"}
  - name: Globex
    currency: USD
    accounts:
      - {id: "2001", product: Messaging USD, balance_model: prepaid, opening_balance: "1.50"}
      - {id: "2002", product: Messaging USD, balance_model: prepaid, opening_balance: "0.00"}
  - name: Euro Telecom
    currency: EUR
    accounts:
      - {id: "3001", product: Messaging EUR, balance_model: postpaid, credit_limit: "500.00"}
      - {id: "3002", product: Messaging EUR, balance_model: postpaid, credit_limit: "500.00"}
"""

SENDERS = ("1001", "1001", "1002", "2001", "2002", "3001", "3001", "3002", "9999")
"""Who sends (9999 is no account: unknown_account; 2002 has nothing to spend, so no xDR)."""
CUSTOMER_OF = {"1001": "Example Corp", "1002": "Example Corp", "2001": "Globex", "2002": "Globex",
               "3001": "Euro Telecom", "3002": "Euro Telecom"}
"""The accounts of :data:`CONFIG`'s customers."""
DESTINATIONS = ("1002", "1001", "3001", "3002", "12125550199", "13105550123", "011442079460000",
                "011442079460001", "01133142500000", "01133612345678")
"""On-net accounts, North America (no EUR rate: no_rate for Euro Telecom), UK and France."""


def _envelope(topic: str, offset: int, key: str, data: bytes) -> Envelope:
    """What a projector makes of the record ``data`` read at ``topic``[0]@``offset``."""
    name, record = decode(data)
    return Envelope(topic, 0, offset, 0, key.encode(), name, record, None, event_of(name, record))


def _config_envelopes(config: str, at: datetime) -> tuple[ConfigState, list[Envelope]]:
    events = plan_changes(parse_config(config, "report fixture"), None, now=at)
    state = ConfigState()
    for name, record in events:
        state = state.apply(name, record)
    return state, [_envelope("imbill.config", i, ENVIRONMENT, encode(name, record))
                   for i, (name, record) in enumerate(events)]


def _attempts(count: int, seed: int) -> Iterable[Any]:
    rng = random.Random(seed)
    for i in range(count):
        at = START + timedelta(seconds=rng.uniform(0, HOURS * 3600) * rng.uniform(0.3, 1.0))
        yield synthetic_attempt(ENVIRONMENT, rng.choice(SENDERS), rng.choice(DESTINATIONS),
                                body_chars=rng.randint(1, 200), call_id=f"report-{seed}-{i}@imbill",
                                received_at=at)


def _decided(state: ConfigState, count: int, seed: int) -> list[Envelope]:
    """Every attempt decided by the processor's rules, in time order; charges and rejections."""
    balances: dict[bytes, Any] = {}
    envelopes: list[Envelope] = []
    for offset, attempt in enumerate(sorted(_attempts(count, seed), key=lambda a: a.received_at)):
        key = account_key(ENVIRONMENT, attempt.from_user)
        decision = decide_attempt(balances.get(key), attempt, state, key=key, offset=offset,
                                  now=attempt.received_at + timedelta(milliseconds=5))
        balances[key] = decision.state
        for event in decision.events:
            if isinstance(event, (Charge, Rejection)):
                topic = "imbill.charges" if isinstance(event, Charge) else "imbill.rejections"
                envelopes.append(_envelope(topic, len(envelopes), key.decode(), encode_event(event)))
    return envelopes


def project_traffic(database_url: str, *, count: int = 600, seed: int = 11) -> list[Envelope]:
    """Migrate ``database_url``, project the config and ``count`` decided attempts into it;
    returns the charge and rejection envelopes written (for the tests' own sums)."""
    migrate(database_url)
    state, config = _config_envelopes(CONFIG, START - timedelta(days=1))
    outcomes = _decided(state, count, seed)
    engine = connect(database_url)
    try:
        with engine.begin() as conn:
            insert_rows(conn, config, CONFIG_MAPPERS)
            fold_config_objects(conn, config)
            insert_rows(conn, outcomes, XDR_MAPPERS)
    finally:
        engine.dispose()
    return outcomes
