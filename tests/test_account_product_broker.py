"""``imbill account product`` on the real local broker: an account's product changed from a past
instant, refused in one line when the account, the product or the time is unknown, shown by
``config show``, kept by a ``config apply`` of a file that says nothing of it; and ``imbill
rerate`` then corrects the attempts charged on the old product's tariff."""

from __future__ import annotations

import copy
import csv
import io
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from imbill.cli import cli
from imbill.producers.config_publisher import config_history
from imbill.schemas.topics import Topics
from tests.builders import ALICE, BOB, ENV, T0, checklist
from tests.test_account_product_history import gold
from tests.test_processor import Worker, message, publish, publish_config, records_of, wait_for
from tests.test_rerate_broker import PERIOD, changed_rows, outcomes

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "instant-messaging.yaml"


def invoke(topics: Topics, bootstrap: str, *args: str):
    return CliRunner().invoke(cli, list(args), env={"IMBILL_BOOTSTRAP_SERVERS": bootstrap, "NO_COLOR": "1",
                                                    "IMBILL_TOPIC_PREFIX": topics.prefix, "COLUMNS": "80"},
                              catch_exceptions=False)


def example_with_gold(tmp_path: Path) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["products"].append({**copy.deepcopy(data["products"][0]), "name": "Gold"})
    path = tmp_path / "gold.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def shown_history(topics: Topics, bootstrap: str, account: str) -> str:
    result = invoke(topics, bootstrap, "config", "show", "--format", "csv")
    assert result.exit_code == 0, result.output
    [value] = [row["value"] for row in csv.DictReader(io.StringIO(result.output))
               if row["kind"] == "account" and row["object"] == account and row["field"] == "product_history"]
    return value


def test_account_product_appends_the_history_and_a_file_without_it_keeps_it(bootstrap: str, topics: Topics,
                                                                            tmp_path: Path) -> None:
    config_file = example_with_gold(tmp_path)
    assert invoke(topics, bootstrap, "config", "apply", str(config_file)).exit_code == 0

    moved = invoke(topics, bootstrap, "account", "product", "--account", "1001", "--product", "Gold",
                   "--effective-from", "2026-11-01T00:00:00Z")
    assert moved.exit_code == 0, moved.output
    assert "1 event(s) appended" in moved.output and "AccountDefined account:1001" in moved.output
    assert config_history(bootstrap, topics)[-1].event == "AccountDefined"
    assert shown_history(topics, bootstrap, "1001") == (
        "Messaging from 1970-01-01T00:00:00+00:00; Gold from 2026-11-01T00:00:00+00:00")
    again = invoke(topics, bootstrap, "account", "product", "--account", "1001", "--product", "Gold",
                   "--effective-from", "2026-11-01T00:00:00Z")
    assert again.exit_code == 0 and "0 event(s) appended" in again.output

    for args, words in [
        (("--account", "9999", "--product", "Gold", "--effective-from", "2026-11-01"), "unknown account '9999'"),
        (("--account", "1001", "--product", "Nope", "--effective-from", "2026-11-01"), "unknown product 'Nope'"),
        (("--account", "1001", "--product", "Gold", "--effective-from", "soon"), "effective_from: must be a time"),
    ]:
        refused = invoke(topics, bootstrap, "account", "product", *args)
        assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, refused.output
        assert refused.output.startswith("error: account product: ") and words in refused.output

    stale = invoke(topics, bootstrap, "config", "apply", str(config_file))  # still says "Messaging"
    assert stale.exit_code == 2 and "account has a product history" in stale.output
    data = yaml.safe_load(config_file.read_text())
    data["customers"][0]["accounts"][0]["product"] = "Gold"
    config_file.write_text(yaml.safe_dump(data))
    updated = invoke(topics, bootstrap, "config", "apply", str(config_file))
    assert updated.exit_code == 0 and "0 event(s) appended" in updated.output, updated.output
    assert shown_history(topics, bootstrap, "1001").endswith("Gold from 2026-11-01T00:00:00+00:00")


def test_rerate_corrects_attempts_to_the_product_the_account_had_then(bootstrap: str, topics: Topics,
                                                                      tmp_path: Path) -> None:
    publish_config(bootstrap, topics, gold(checklist(msgn_price="0.05")))
    worker = Worker(bootstrap, topics, tmp_path, "w-product-rerate")
    try:
        publish(bootstrap, topics.attempts, [*[message(f"a{n}") for n in range(3)],
                                             *[message(f"b{n}", sender=BOB) for n in range(2)]])
        wait_for(lambda: outcomes(bootstrap, topics) >= 5, worker, 60, "the attempts to be charged")
        assert {c["tariff"] for c in records_of(bootstrap, topics.charges)} == {"B"}

        moved = invoke(topics, bootstrap, "account", "product", "--account", ALICE, "--product", "IM Gold",
                       "--effective-from", (T0 - timedelta(days=1)).isoformat(), "--environment", ENV)
        assert moved.exit_code == 0, moved.output
        run = invoke(topics, bootstrap, "rerate", *PERIOD, "--csv", "-")
        assert run.exit_code == 0, run.output
        rows = changed_rows(run)
        assert sorted(r["attempt_id"] for r in rows) == ["a0", "a1", "a2"]  # BOB stays on "IM product"
        assert {(r["old_amount"], r["new_amount"], r["difference"]) for r in rows} == {("0.15", "0.24", "0.09")}
        corrections = [c for c in records_of(bootstrap, topics.charges) if c["kind"] == "correction"]
        assert {(c["account"], c["tariff"], c["unit_price"]) for c in corrections} == {(ALICE, "G", Decimal("0.08"))}
    finally:
        worker.stop()
