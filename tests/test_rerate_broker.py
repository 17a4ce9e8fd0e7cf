"""``imbill rerate`` on the real local broker, with a live processor: a rate corrected for the
past, a dry run that says what would change, the run that appends the corrections, a second
run that appends nothing; a no_rate rejection that becomes a charge; a charge reversed."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from click.testing import CliRunner

from imbill.cli import cli
from imbill.domain.config import Rate
from imbill.schemas.topics import Topics
from tests.builders import ALICE, BOB, ENV, T0, checklist, payment
from imbill.schemas.codec import record_of
from tests.test_processor import Worker, message, publish, publish_config, records_of, wait_for

pytestmark = pytest.mark.integration

PERIOD = ("--from", "2024-01-01", "--to", "2024-01-02", "--environment", ENV)


def imbill(bootstrap: str, topics: Topics, *args: str):
    return CliRunner().invoke(cli, ["--bootstrap-servers", bootstrap, "--topic-prefix", topics.prefix, *args],
                              env={"COLUMNS": "80", "NO_COLOR": "1"}, terminal_width=80)


def publish_more_config(bootstrap: str, topics: Topics, builder, already: int) -> int:
    """Publish the builder's events after the first ``already``; the new count."""
    publish(bootstrap, topics.config, [(ENV, name, record) for name, record in builder.events[already:]])
    return len(builder.events)


def outcomes(bootstrap: str, topics: Topics) -> int:
    return len(records_of(bootstrap, topics.charges)) + len(records_of(bootstrap, topics.rejections))


def changed_rows(result) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(result.stdout[result.stdout.index("attempt_id,"):])))


def test_a_corrected_rate_is_re_rated_once_and_balances_follow(bootstrap: str, topics: Topics, tmp_path) -> None:
    config = checklist(msgn_price="0.05")
    publish_config(bootstrap, topics, config)
    published = len(config.events)
    worker = Worker(bootstrap, topics, tmp_path, "w-rerate")
    try:
        publish(bootstrap, topics.attempts, [*[message(f"a{n}") for n in range(6)],
                                             *[message(f"b{n}", sender=BOB) for n in range(4)]])
        wait_for(lambda: outcomes(bootstrap, topics) >= 10, worker, 60, "the attempts to be charged")
        config.define(Rate("B", "MSGN", Decimal("0.04"), T0))
        publish_more_config(bootstrap, topics, config, published)

        dry = imbill(bootstrap, topics, "rerate", *PERIOD, "--dry-run", "--csv", "-")
        assert dry.exit_code == 0, dry.output
        rows = changed_rows(dry)
        assert len(rows) == 10 and {r["difference"] for r in rows} == {"-0.03"}
        assert {r["old_amount"]: r["new_amount"] for r in rows} == {"0.15": "0.12"}
        assert "dry run, nothing appended" in dry.stdout
        assert records_of(bootstrap, topics.corrections) == []
    finally:
        worker.stop()
