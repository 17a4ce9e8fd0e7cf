"""Valid time and record time of the config: what was in force at T, as known at R.

Every config record has two times:

- **record time**: when it was appended to the config topic, the Kafka timestamp of its
  record (not the ``occurred_at`` of its payload, which is the writer's own claim about
  itself). The topic has one partition and every reader folds it in offset order, so what
  was *known as of R* is the topic's prefix up to the last record recorded at or before R
  (:func:`known_as_of`): the state some reader really had then, never a mix of older and
  newer records.
- **valid time**: when what the record says holds. Rates have one, ``effective_from``: the
  rate of a tariff and rate code in force at T is the one with the latest ``effective_from``
  at or before T (:func:`rates_in_force`, the rule :mod:`.tariff_rates` rates by). The
  other objects have none: what is known of them holds whenever it is asked.

A *correction* is a RateDefined for a tariff, rate code and ``effective_from`` already
known, with another price: the later record replaces the earlier one in the fold, so "as
of now" answers the corrected price and "as of before the correction" the old one
(:func:`correction_of` says what a record corrects). Live rating uses the config folded
up to the moment an attempt is processed (record time = then, valid time = the attempt's
``received_at``); re-rating uses what is known now about the same valid time.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Iterable, Iterator, Mapping, TypeVar

from imbill.domain.config import Rate, ConfigState, EnvironmentConfig, object_key

__all__ = ["known_as_of", "rates_in_force", "in_force_at", "state_in_force_at", "correction_of"]

T = TypeVar("T")


def known_as_of(records: Iterable[tuple[datetime, T]], as_of: datetime | None) -> Iterator[T]:
    """The records of ``(record time, record)`` in topic order that were known ``as_of``: the
    prefix up to the first one recorded after it (all of them when ``as_of`` is None)."""
    for recorded_at, record in records:
        if as_of is not None and recorded_at > as_of:
            return
        yield record


def rates_in_force(rates: Iterable[Rate], at: datetime) -> dict[str, Rate]:
    """Per tariff and rate code, the rate in force at ``at`` (the latest ``effective_from``
    at or before it), keyed as the config keys rates; a code with none yet is left out."""
    latest: dict[tuple[str, str], Rate] = {}
    for rate in rates:
        if rate.effective_from <= at:
            found = latest.get((rate.tariff, rate.rate_code))
            if found is None or found.effective_from < rate.effective_from:
                latest[rate.tariff, rate.rate_code] = rate
    return {object_key(rate)[1]: rate for rate in sorted(latest.values(), key=object_key)}


def in_force_at(env: EnvironmentConfig, at: datetime) -> EnvironmentConfig:
    """The environment as valid at ``at``: one rate per tariff and rate code (the one in
    force then); the objects without a valid time as they are."""
    return dataclasses.replace(env, rates=rates_in_force(env.rates.values(), at), derived_by_name={})


def state_in_force_at(state: ConfigState, at: datetime | None) -> ConfigState:
    """:func:`in_force_at` of every environment of ``state`` (``state`` itself when None)."""
    if at is None:
        return state
    return dataclasses.replace(state, environments={name: in_force_at(env, at)
                                                    for name, env in state.environments.items()})


def correction_of(env: EnvironmentConfig | None, rate: Rate) -> Rate | None:
    """The rate ``rate`` corrects: the one known for its tariff, code and ``effective_from``
    with another price (or mode, or description); None when it is new or the same."""
    known: Mapping[str, Rate] = env.rates if env is not None else {}
    found = known.get(object_key(rate)[1])
    return found if found is not None and found != rate else None
