"""Corrections of the past on the real local broker: ``imbill rate set`` and ``config apply``
append them, ``imbill config show --at T --as-of R`` answers both times, and the live
processor rates new attempts by the config in force (corrections included) while what it
charged before stays as it was charged."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from imbill.cli import cli
from imbill.domain.config import Rate
from imbill.producers.config_publisher import config_history, set_rate
from imbill.schemas.topics import Topics
from tests.builders import ALICE, ENV, T0, checklist
from tests.test_processor import Worker, message, publish, publish_config, records_of, wait_for

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "instant-messaging.yaml"
ON_NET = "On-net messaging"
JANUARY = "2026-01-01T00:00:00+00:00"


def invoke(topics: Topics, bootstrap: str, *args: str):
    return CliRunner().invoke(cli, list(args), env={"IMBILL_BOOTSTRAP_SERVERS": bootstrap, "NO_COLOR": "1",
                                                    "IMBILL_TOPIC_PREFIX": topics.prefix, "COLUMNS": "80"},
                              catch_exceptions=False)


def shown_rates(topics: Topics, bootstrap: str, *args: str) -> dict[str, dict[str, str]]:
    """``config show ... --format csv``: rate key -> field -> value."""
    result = invoke(topics, bootstrap, "config", "show", *args, "--format", "csv")
    assert result.exit_code == 0, result.output
    rates: list[dict[str, str]] = []
    for row in csv.DictReader(io.StringIO(result.output)):
        if row["kind"] == "rate":
            if row["field"] == "tariff":  # the first field of each rate
                rates.append({})
            rates[-1][row["field"]] = row["value"]
    return {f"{r['tariff']}|{r['rate_code']}|{r['effective_from']}": r for r in rates}


def msgn(rates: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    return sorted((r["effective_from"], r["unit_price"]) for r in rates.values()
                  if r["tariff"] == ON_NET and r["rate_code"] == "MSGN")


def test_rate_set_corrects_the_past_and_config_show_answers_both_times(bootstrap: str, topics: Topics) -> None:
    assert invoke(topics, bootstrap, "config", "apply", str(EXAMPLE)).exit_code == 0
    applied = config_history(bootstrap, topics)[-1].recorded_at

    corrected = invoke(topics, bootstrap, "rate", "set", "--tariff", ON_NET, "--code", "MSGN", "--price", "0.04",
                       "--effective-from", "2026-01-01")
    assert corrected.exit_code == 0, corrected.output
    assert "1 event(s) appended" in corrected.output
    assert "(correction: unit_price was 0.05 for what was recorded before)" in " ".join(corrected.output.split())
    late = invoke(topics, bootstrap, "rate", "set", "--tariff", ON_NET, "--code", "MSGN", "--price", "0.03",
                  "--effective-from", "2026-11-01T00:00:00Z")
    assert "retroactive" in late.output
    events = config_history(bootstrap, topics)
    assert [e.event for e in events[-2:]] == ["RateDefined", "RateDefined"]
    assert applied < events[-2].recorded_at <= events[-1].recorded_at

    november = "2026-11-15T00:00:00Z"
    assert msgn(shown_rates(topics, bootstrap, "--at", november, "--as-of", applied.isoformat())) == [
        (JANUARY, "0.05")]
    between = events[-2].recorded_at.isoformat()
    assert msgn(shown_rates(topics, bootstrap, "--at", november, "--as-of", between)) == [(JANUARY, "0.04")]
    assert msgn(shown_rates(topics, bootstrap, "--at", november)) == [("2026-11-01T00:00:00+00:00", "0.03")]
    assert msgn(shown_rates(topics, bootstrap, "--at", "2026-06-01", "--as-of",
                            datetime.now(timezone.utc).isoformat())) == [(JANUARY, "0.04")]
    assert msgn(shown_rates(topics, bootstrap)) == [(JANUARY, "0.04"), ("2026-11-01T00:00:00+00:00", "0.03")]

    table = invoke(topics, bootstrap, "config", "show", "--at", november, "--as-of", applied.isoformat()).output
    assert "has no config" not in table  # piped: never cut (the 80 columns of a terminal: test_config_bitemporal)
    assert "as of " + applied.strftime("%Y-%m-%d %H:%M:%S") in " ".join(table.split())


def test_rate_set_refuses_what_config_apply_would_refuse_and_appends_nothing(bootstrap: str, topics: Topics) -> None:
    def rate_set(*args: str):
        return invoke(topics, bootstrap, "rate", "set", "--code", "MSGN", "--effective-from", "2026-01-01", *args)

    nothing = rate_set("--tariff", ON_NET, "--price", "0.04")
    assert nothing.exit_code == 2 and nothing.output.strip() == (
        "error: rate set: environment default has no config (imbill config apply FILE)")
    assert invoke(topics, bootstrap, "config", "apply", str(EXAMPLE)).exit_code == 0
    size = len(config_history(bootstrap, topics))

    unknown = rate_set("--tariff", "Nope", "--price", "0.04")
    line, = unknown.output.strip().splitlines()
    assert unknown.exit_code == 2 and line.startswith("error: rate set: rate 'Nope|MSGN|2026-01-01T00:00:00+00:00': "
                                                      'tariff: unknown tariff "Nope" (defined: ')
    assert line.endswith("(broken_reference)")
    code = invoke(topics, bootstrap, "rate", "set", "--tariff", ON_NET, "--code", "7x", "--price", "0.04",
                  "--effective-from", "2026-01-01")
    assert code.exit_code == 2 and 'unknown destination "7x"' in code.output
    elsewhere = invoke(topics, bootstrap, "rate", "set", "--environment", "europe", "--tariff", ON_NET, "--code",
                       "MSGN", "--price", "0.04", "--effective-from", "2026-01-01")
    assert elsewhere.exit_code == 2 and "environment europe has no config" in elsewhere.output
    over = rate_set("--tariff", ON_NET, "--price", "2000000")
    assert over.exit_code == 2 and "unit_price: is over the limit" in over.output
    same = rate_set("--tariff", ON_NET, "--price", "0.05")
    assert same.exit_code == 0 and "0 event(s) appended" in same.output
    assert len(config_history(bootstrap, topics)) == size


def test_config_apply_appends_a_changed_past_price_as_a_correction(bootstrap: str, topics: Topics,
                                                                  tmp_path: Path) -> None:
    assert invoke(topics, bootstrap, "config", "apply", str(EXAMPLE)).exit_code == 0
    applied = config_history(bootstrap, topics)[-1].recorded_at
    data = yaml.safe_load(EXAMPLE.read_text())
    on_net, = [t for t in data["tariffs"] if t["name"] == ON_NET]
    msgn_rate, = [r for r in on_net["rates"] if r["rate_code"] == "MSGN"]
    msgn_rate["unit_price"] = "0.04"
    changed = tmp_path / "corrected.yaml"
    changed.write_text(yaml.safe_dump(data, sort_keys=False))

    result = invoke(topics, bootstrap, "config", "apply", str(changed))
    assert result.exit_code == 0, result.output
    assert " ".join(result.output.split()) == (
        f"environment default: 1 event(s) appended RateDefined rate:{ON_NET}|MSGN|{JANUARY} "
        "(correction: unit_price was 0.05 for what was recorded before)")
    assert msgn(shown_rates(topics, bootstrap, "--as-of", applied.isoformat())) == [(JANUARY, "0.05")]
    assert msgn(shown_rates(topics, bootstrap)) == [(JANUARY, "0.04")]
    assert "0 event(s) appended" in invoke(topics, bootstrap, "config", "apply", str(changed)).output


def test_the_live_processor_rates_new_attempts_by_the_corrected_config(bootstrap: str, topics: Topics,
                                                                       tmp_path: Path) -> None:
    """An attempt charged before a correction keeps its charge (re-rating, a later step,
    corrects it); an attempt processed after it is rated with the corrected price, and one
    after a retroactive rate's effective_from with that rate."""
    publish_config(bootstrap, topics, checklist())  # MSGN of tariff B: 0.05 from T0; 3 units a message
    worker = Worker(bootstrap, topics, tmp_path, "w-bitemp")

    def charged(attempt_id: str) -> dict:
        return wait_for(lambda: next((c for c in records_of(bootstrap, topics.charges)
                                      if c["attempt_id"] == attempt_id), None),
                        worker, 40, f"the charge of {attempt_id}")

    def rate(price: str, effective_from: datetime) -> None:
        result = set_rate(ENV, Rate("B", "MSGN", Decimal(price), effective_from), bootstrap_servers=bootstrap,
                          topics=topics)
        assert len(result.events) == 1

    try:
        publish(bootstrap, topics.attempts, [message("before", received_at=T0 + timedelta(hours=1))])
        assert charged("before")["unit_price"] == Decimal("0.05")
        rate("0.04", T0)                                      # a correction of the rate from T0
        rate("0.07", T0 + timedelta(hours=2))                 # a rate recorded after it took effect
        publish(bootstrap, topics.attempts, [message("after", received_at=T0 + timedelta(hours=1, minutes=30)),
                                             message("later", received_at=T0 + timedelta(hours=3))])
        after, later = charged("after"), charged("later")
    finally:
        worker.stop()
    assert (after["unit_price"], after["amount"], after["rate_effective_from"]) == (
        Decimal("0.04"), Decimal("0.12"), T0)
    assert (later["unit_price"], later["amount"]) == (Decimal("0.07"), Decimal("0.21"))
    before = [c for c in records_of(bootstrap, topics.charges) if c["attempt_id"] == "before"]
    assert [(c["unit_price"], c["amount"], c["account"]) for c in before] == [(Decimal("0.05"), Decimal("0.15"), ALICE)]
