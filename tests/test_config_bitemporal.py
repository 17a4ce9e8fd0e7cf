"""Valid time and record time of the config, without a broker: the fold as of a record time,
the rates in force at a valid time, corrections and retroactive rates, how rating and
``imbill config show`` / ``imbill rate set`` use them."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from click.testing import CliRunner
from hypothesis import given, strategies as st
from rich.console import Console

from imbill.cli import cli
from imbill.domain.bitemporal import correction_of, in_force_at, known_as_of, rates_in_force, state_in_force_at
from imbill.domain.config import ConfigState, Rate, fold, to_record
from imbill.domain.errors import ConfigError
from imbill.domain.rating import rate_attempt
from imbill.presentation import config_history_listing, config_tables, listing_table
from imbill.producers.config_file import rate_of
from imbill.producers.config_publisher import HistoryEntry, notes_of
from imbill.domain.tariff_rates import TariffRates
from tests.builders import ENV, T0, attempt, checklist

R0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
"""When the checklist was recorded (record time); T0 (2024) is when its rates are valid from."""
SECOND = timedelta(seconds=1)


def recorded(events, at: datetime) -> list[tuple[datetime, tuple[str, dict]]]:
    return [(at, event) for event in events]


def rate_event(rate: Rate, event_id: str) -> tuple[str, dict]:
    return "RateDefined", {"event_id": event_id, "environment": ENV, "occurred_at": R0, **to_record(rate)}


def history() -> list[tuple[datetime, tuple[str, dict]]]:
    """The checklist recorded at R0 (MSGN of tariff B at 0.05 from T0); at R0 + 1 h a correction
    (0.04 from T0); at R0 + 2 h a rate recorded after it took effect (0.07 from T0 + 10 days)."""
    return [*recorded(checklist().events, R0),
            (R0 + timedelta(hours=1), rate_event(Rate("B", "MSGN", Decimal("0.04"), T0), "fix")),
            (R0 + timedelta(hours=2), rate_event(Rate("B", "MSGN", Decimal("0.07"), T0 + timedelta(days=10)), "late"))]


def known(as_of: datetime | None) -> ConfigState:
    return fold(known_as_of(history(), as_of))


def msgn_price(state: ConfigState, at: datetime) -> Decimal:
    found, = [r for r in in_force_at(state.environments[ENV], at).rates.values() if r.rate_code == "MSGN"]
    return found.unit_price


@pytest.mark.parametrize(("valid", "as_of", "price"), [
    (T0 + timedelta(days=1), R0, "0.05"),                                   # as the live processor knew it
    (T0 + timedelta(days=1), R0 + timedelta(hours=1) - SECOND, "0.05"),     # just before the correction
    (T0 + timedelta(days=1), R0 + timedelta(hours=1), "0.04"),              # the correction, at its record time
    (T0 + timedelta(days=1), None, "0.04"),                                 # as known now
    (T0 + timedelta(days=20), R0 + timedelta(hours=1), "0.04"),             # the later rate not known yet
    (T0 + timedelta(days=20), None, "0.07"),                                # known now: in force from day 10
    (T0 + timedelta(days=10) - timedelta(milliseconds=1), None, "0.04"),    # the instant before it starts
    (T0 + timedelta(days=10), None, "0.07"),                                # effective_from itself is in force
])
def test_what_was_valid_at_a_time_as_known_at_another(valid, as_of, price) -> None:
    assert msgn_price(known(as_of), valid) == Decimal(price)


def test_nothing_is_known_before_the_first_record() -> None:
    assert known(R0 - SECOND).environments == {}


def test_a_correction_replaces_the_rate_of_its_key_and_keeps_one_rate_per_key() -> None:
    before, now = known(R0).environments[ENV], known(None).environments[ENV]
    key = "B|MSGN|" + T0.isoformat()
    assert before.rates[key].unit_price == Decimal("0.05") and now.rates[key].unit_price == Decimal("0.04")
    assert sorted(now.rates) == sorted([*before.rates, "B|MSGN|" + (T0 + timedelta(days=10)).isoformat()])


def test_as_of_is_a_prefix_of_the_topic_whatever_the_later_timestamps() -> None:
    """A record stamped earlier than one before it (another writer's clock) is not known before
    the record ahead of it: every as-of state is one a reader of the topic really had."""
    hour = timedelta(hours=1)
    records = [(R0, "a"), (R0 + 2 * hour, "b"), (R0 + hour, "c"), (R0 + 3 * hour, "d")]
    assert list(known_as_of(records, R0 + hour)) == ["a"]
    assert list(known_as_of(records, R0 + 2 * hour)) == ["a", "b", "c"]
    assert list(known_as_of(records, None)) == ["a", "b", "c", "d"]


def test_rates_in_force_keep_the_latest_start_per_tariff_and_code_and_leave_out_codes_not_started() -> None:
    rates = [Rate("B", "MSGN", Decimal("0.05"), T0), Rate("B", "MSGN", Decimal("0.07"), T0 + timedelta(days=10)),
             Rate("B", "44", Decimal("0.12"), T0 + timedelta(days=30)), Rate("A", "MSGN", Decimal("0.01"), T0)]
    found = rates_in_force(rates, T0 + timedelta(days=20))
    assert found == {"A|MSGN|" + T0.isoformat(): rates[3], "B|MSGN|" + (T0 + timedelta(days=10)).isoformat(): rates[1]}
    assert rates_in_force(rates, T0 - SECOND) == {}


@given(st.dictionaries(st.tuples(st.sampled_from(["MSGN", "|", "44", "4"]), st.integers(0, 30)),
                       st.decimals(0, 1, places=6), min_size=1, max_size=12),
       st.integers(-1, 32))
def test_the_rates_shown_in_force_at_a_time_are_those_rating_chooses_then(prices, day) -> None:
    rates = [Rate("B", code, price, T0 + timedelta(days=start)) for (code, start), price in prices.items()]
    when = T0 + timedelta(days=day, hours=12)
    shown = {rate.rate_code: rate for rate in rates_in_force(rates, when).values()}
    index = TariffRates(rates, Decimal("0.01"))
    histories = {**index.prefixes, "|": index.any, "MSGN": index.msgn}
    chosen = {code: price.rate for code, history in histories.items()
              if history is not None and (price := history.at(when)) is not None}
    assert shown == chosen


def test_objects_without_a_valid_time_are_shown_at_any_time() -> None:
    env = known(None).environments[ENV]
    then = in_force_at(env, T0 - timedelta(days=365))
    assert then.rates == {} and then.accounts == env.accounts and then.tariffs == env.tariffs
    assert state_in_force_at(known(None), None) == known(None)


@pytest.mark.parametrize(("as_of", "received_at", "price"), [
    (R0, T0 + timedelta(days=20), "0.05"),          # live: what was known when it was processed
    (None, T0 + timedelta(days=20), "0.07"),        # re-rating: what is known now of day 20
    (None, T0 + timedelta(days=1), "0.04"),         # re-rating: the corrected price of day 1
])
def test_rating_uses_the_rate_in_force_at_the_attempt_in_the_state_it_is_given(as_of, received_at, price) -> None:
    rated = rate_attempt(attempt(received_at=received_at, body_chars=10), known(as_of),
                         rated_at=datetime(2026, 12, 4, tzinfo=timezone.utc))
    assert (rated.unit_price, rated.amount) == (Decimal(price), Decimal(price))


def test_a_correction_is_a_known_key_with_another_value() -> None:
    env = known(R0).environments[ENV]
    old = env.rates["B|MSGN|" + T0.isoformat()]
    assert correction_of(env, Rate("B", "MSGN", Decimal("0.04"), T0)) == old
    assert correction_of(env, old) is None
    assert correction_of(env, Rate("B", "MSGN", Decimal("0.04"), T0 + SECOND)) is None
    assert correction_of(None, old) is None


def test_a_first_config_has_no_corrections_and_no_retroactive_rates() -> None:
    events = [event for _, event in history()]
    assert notes_of(None, events, R0 + timedelta(days=1)) == {}


def test_apply_says_which_rates_correct_the_past_and_which_are_retroactive() -> None:
    """Retroactive: a rate of a tariff already known, in force from before it is recorded."""
    env = known(R0).environments[ENV]
    now = R0 + timedelta(hours=1)
    events = [rate_event(Rate("B", "MSGN", Decimal("0.04"), T0), "1"),
              rate_event(Rate("B", "MSGN", Decimal("0.07"), T0 + timedelta(days=10)), "2"),
              rate_event(Rate("B", "MSGN", Decimal("0.09"), now + timedelta(days=1)), "3"),
              ("TariffDefined", {"event_id": "4", "environment": ENV, "occurred_at": now, "name": "C",
                                 "currency": "USD", "service": "messaging", "applied_to": "customer",
                                 "routing": False, "managed_by": "administrator", "description": ""}),
              rate_event(Rate("C", "MSGN", Decimal("0.09"), T0), "5"),    # a tariff new in the plan
              rate_event(Rate("A", "|", Decimal(0), T0, description="free"), "6")]
    notes = notes_of(env, events, now)
    assert notes == {
        "rate:B|MSGN|" + T0.isoformat(): "correction: unit_price was 0.05 for what was recorded before",
        "rate:B|MSGN|" + (T0 + timedelta(days=10)).isoformat(): "retroactive: in force from before it was recorded",
        "rate:A|||" + T0.isoformat(): "correction: description was '' for what was recorded before"}


@pytest.mark.parametrize(("tariff", "price", "when", "words"), [
    ("B", "-0.01", "2026-01-01", "unit_price: must not be negative"),
    ("B", "ten", "2026-01-01", "unit_price: must be an amount such as \"0.05\", got 'ten'"),
    ("B", "0.0000001", "2026-01-01", "unit_price: has more than 6 decimals"),
    ("B", "1000001", "2026-01-01", "unit_price: is over the limit 1,000,000"),
    ("B", "NaN", "2026-01-01", "unit_price: must be a finite amount"),
    ("B", "0.04", "noon", "effective_from: must be a time such as 2026-01-01T00:00:00Z, got 'noon'"),
    ("B", "0.04", "2026-01-01T00:00:00.0001Z", "effective_from: must be whole milliseconds"),
    ("", "0.04", "2026-01-01", "tariff: must not be empty"),
    ("B", "-1", "noon", "unit_price: must not be negative, got -1; effective_from: must be a time"),
])
def test_a_rate_given_alone_is_checked_as_a_file_rate_is(tariff, price, when, words) -> None:
    with pytest.raises(ConfigError) as raised:
        rate_of(tariff, "MSGN", price, when, source="rate set")
    assert str(raised.value).startswith("rate set: ") and words in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_rate_given_alone_is_utc_unless_zoned_and_a_money_decimal() -> None:
    rate = rate_of("B", "44", "0.04", "2026-11-01T01:00:00+01:00")
    assert rate == Rate("B", "44", Decimal("0.040000"), datetime(2026, 11, 1, tzinfo=timezone.utc))
    assert rate_of("B", "44", "0.04", "2026-11-01").effective_from == datetime(2026, 11, 1, tzinfo=timezone.utc)


NO_BROKER = "127.0.0.1:1"


@pytest.mark.parametrize(("args", "words"), [
    (["rate", "set", "--tariff", "B", "--code", "MSGN", "--price", "-1", "--effective-from", "2026-11-01"],
     "rate set: unit_price: must not be negative, got -1"),
    (["rate", "set", "--tariff", "B", "--code", "MSGN", "--price", "0.04", "--effective-from", "tomorrow"],
     "rate set: effective_from: must be a time such as 2026-01-01T00:00:00Z, got 'tomorrow'"),
    (["rate", "set", "--tariff", "B", "--code", "MSGN", "--price", "lots", "--effective-from", "2026-11-01"],
     "rate set: unit_price: must be an amount"),
    (["rate", "set", "--tariff", "B", "--code", "MSGN", "--effective-from", "2026-11-01"],
     "Missing option '--price'"),
    (["config", "show", "--as-of", "noon"], "'noon' is not a time"),
    (["rate", "set", "--tariff", "B", "--code", "MSGN", "--price", "0.04", "--effective-from", "2026-11-01"],
     f"no Kafka broker answers at {NO_BROKER}"),
    (["config", "show", "--at", "2026-11-01", "--as-of", "2026-12-01"], f"no Kafka broker answers at {NO_BROKER}"),
])
def test_bad_input_to_rate_set_and_config_show_is_one_line(args, words) -> None:
    result = CliRunner().invoke(cli, args, env={"IMBILL_BOOTSTRAP_SERVERS": NO_BROKER, "COLUMNS": "80"},
                                catch_exceptions=False)
    assert result.exit_code == 2 and "Traceback" not in result.output
    line, = result.output.strip().splitlines()
    assert line.startswith("error: ") and words in line, line


def test_the_rate_table_fits_80_columns_and_cuts_no_word() -> None:
    state = state_in_force_at(known(None), T0 + timedelta(days=20))
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    for table in config_tables(state, ENV, T0 + timedelta(days=20), R0 + timedelta(hours=2)):
        console.print(table)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    words = " ".join(text.split())
    rates = words[words.index("rate (acme at 2024-01-21 00:00:00 as of 2026-12-01 11:00:00 UTC)"):]
    rates = rates[:rates.index("service_policy")]
    assert "B │ MSGN │ 0.07 │ 2024-01-11 00:00:00" in rates and "0.04" not in rates


def test_config_history_shows_the_record_time_and_the_publisher_time_in_exports() -> None:
    entries = [HistoryEntry(0, R0, R0 - SECOND, "RateDefined", ENV, "rate:B|MSGN|2024")]
    table = config_history_listing(entries, ENV, occurred=False)
    assert table.columns == ("offset", "recorded_at", "event", "object")
    export = config_history_listing(entries, ENV)
    assert export.columns == ("offset", "recorded_at", "occurred_at", "event", "object")
    assert listing_table(table).columns[1].header == "recorded_at"
