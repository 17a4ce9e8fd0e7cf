"""Re-rating's corrections through the real xDR projector, on SQLite and PostgreSQL: the xdr
row of an attempt shows its latest revision, xdr_revision keeps every one, a rejection a
correction charges is superseded, and the totals are those of the latest revisions (the sum
of the differences)."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from imbill.domain.events import correction_id_of
from imbill.projections.models import RejectedAttempt, Xdr, XdrRevision, connect
from imbill.projections.projector import XdrProjector
from imbill.projections.queries import XdrFilter, aggregate_xdrs
from imbill.projections.report_data import report_data
from tests.test_projection_xdr import T0, applied_offsets, charge, producer, rejection, rows, send_charges

pytestmark = [pytest.mark.integration]

__all__ = ["producer"]  # the fixture, used by name
D = Decimal


def correction(n: int, revision: int, amount: str, previous: str, *, corrects: str | None = None,
               units: int = 1, **fields: object) -> dict:
    """Revision ``revision`` of attempt at-``n``'s outcome: ``amount`` instead of ``previous``."""
    return charge(n, kind="correction", revision=revision, charge_id=correction_id_of(f"at-{n}", revision),
                  corrects=corrects or (f"ch-{n}" if revision == 2 else correction_id_of(f"at-{n}", revision - 1)),
                  amount=amount, unit_price=D(amount) / units if units else D("0.050000"), billing_units=units,
                  difference=D(amount) - D(previous), rerate_run=f"run-{revision}",
                  rated_at=T0 + timedelta(days=revision), **fields)


def project(database_url, bootstrap, topics) -> int:
    with XdrProjector(database_url, bootstrap, topics) as projector:
        applied = projector.run_until_idle()
        assert projector.skipped == 0
        return applied


def xdr_of(database_url: str, attempt_id: str) -> dict:
    [row] = [r for r in rows(database_url, Xdr) if r["attempt_id"] == attempt_id]
    return row


def revisions_of(database_url: str, attempt_id: str) -> list[tuple]:
    return sorted((r["revision"], r["kind"], r["corrects"], r["amount"], r["difference"], r["rerate_run"])
                  for r in rows(database_url, XdrRevision) if r["attempt_id"] == attempt_id)


ONE_TWO_THREE = [charge(1, amount="0.100000"), correction(1, 2, "0.080000", "0.100000"),
                 correction(1, 3, "0.120000", "0.080000", vendor_cost=D("0.020000"))]
"""Revision 1 then 2 then 3 of at-1."""


@pytest.mark.parametrize("polls", [[3], [1, 1, 1]], ids=["one poll", "three polls"])
def test_revision_1_then_2_then_3(database_url, bootstrap, topics, producer, polls):
    sent = 0
    for count in polls:
        send_charges(producer, topics, ONE_TWO_THREE[sent:sent + count])
        sent += count
        assert project(database_url, bootstrap, topics) == count
    latest = xdr_of(database_url, "at-1")
    assert (latest["charge_id"], latest["revision"], latest["kind"], latest["corrects"]) == (
        "chg-at-1#3", 3, "correction", "chg-at-1#2")
    assert (latest["amount"], latest["vendor_cost"], latest["margin"], latest["rerate_run"]) == (
        D("0.12"), D("0.02"), D("0.10"), "run-3")
    assert latest["rated_at"] == T0 + timedelta(days=3) and latest["attempted_at"] == T0 + timedelta(seconds=1)
    assert revisions_of(database_url, "at-1") == [
        (1, "charge", None, D("0.1"), D("0.1"), None),  # a first charge's difference is its amount
        (2, "correction", "ch-1", D("0.08"), D("-0.02"), "run-2"),
        (3, "correction", "chg-at-1#2", D("0.12"), D("0.04"), "run-3")]
    assert len(rows(database_url, Xdr)) == 1 and applied_offsets(database_url) == 3


def test_an_older_revision_arriving_late_changes_nothing(database_url, bootstrap, topics, producer):
    first, second, third = ONE_TWO_THREE
    send_charges(producer, topics, [first, third])
    project(database_url, bootstrap, topics)
    send_charges(producer, topics, [second, first])  # 2 late, then the charge re-sent
    assert project(database_url, bootstrap, topics) == 2
    latest = xdr_of(database_url, "at-1")
    assert (latest["charge_id"], latest["amount"], latest["source_offset"]) == ("chg-at-1#3", D("0.12"), 1)
    assert [r[0] for r in revisions_of(database_url, "at-1")] == [1, 2, 3]


def test_3_then_2_in_one_poll_and_a_correction_before_its_charge(database_url, bootstrap, topics, producer):
    _, second, third = ONE_TWO_THREE
    send_charges(producer, topics, [third, second, charge(1, amount="0.100000")])
    assert project(database_url, bootstrap, topics) == 3
    assert xdr_of(database_url, "at-1")["charge_id"] == "chg-at-1#3"
    assert [r[0] for r in revisions_of(database_url, "at-1")] == [1, 2, 3]


def test_the_same_correction_twice_changes_nothing(database_url, bootstrap, topics, producer):
    first, second, _ = ONE_TWO_THREE
    send_charges(producer, topics, [first, second, second])
    project(database_url, bootstrap, topics)
    before = xdr_of(database_url, "at-1")
    send_charges(producer, topics, [second | {"amount": D("9.000000"), "difference": D("8.900000")}])  # same id
    assert project(database_url, bootstrap, topics) == 1
    assert xdr_of(database_url, "at-1") == before
    assert revisions_of(database_url, "at-1") == [(1, "charge", None, D("0.1"), D("0.1"), None),
                                                  (2, "correction", "ch-1", D("0.08"), D("-0.02"), "run-2")]


def rejected(database_url: str) -> dict[str, str | None]:
    return {r["rejection_id"]: r["superseded_by"] for r in rows(database_url, RejectedAttempt)}


def charged_after_all(n: int) -> dict:
    """Revision 2 of at-r``n``: its rejection rj-``n`` (no rate) becomes a charge."""
    return charge(n, attempt_id=f"at-r{n}", kind="correction", revision=2,
                  charge_id=correction_id_of(f"at-r{n}", 2), corrects=f"rj-{n}", difference=D("0.050000"),
                  rerate_run="run-1")


@pytest.mark.parametrize("rejection_first", [True, False], ids=["rejection first", "correction first"])
def test_a_rejection_then_a_correction_that_charges_it(database_url, bootstrap, topics, producer, rejection_first):
    """The rejection and its correction are on two topics: either may be projected first."""
    producer.send(topics.rejections, "demo/alice", "Rejection", rejection(7))
    producer.send(topics.rejections, "demo/alice", "Rejection", rejection(8))
    producer.flush()
    if rejection_first:
        project(database_url, bootstrap, topics)
    send_charges(producer, topics, [charged_after_all(7)])
    project(database_url, bootstrap, topics)
    assert rejected(database_url) == {"rj-7": "chg-at-r7#2", "rj-8": None}
    row = xdr_of(database_url, "at-r7")
    assert (row["charge_id"], row["revision"], row["corrects"], row["amount"]) == ("chg-at-r7#2", 2, "rj-7", D("0.05"))
    assert revisions_of(database_url, "at-r7") == [(2, "correction", "rj-7", D("0.05"), D("0.05"), "run-1")]
    engine = connect(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT sum(rejections) FROM daily_rejections")).scalar_one() == 1
            assert conn.execute(sa.text("SELECT sum(messages) FROM daily_customer_totals")).scalar_one() == 1
    finally:
        engine.dispose()


def test_a_reversal_shows_no_units_and_no_money(database_url, bootstrap, topics, producer):
    reversal = correction(2, 2, "0.000000", "0.050000", units=0, vendor_cost=D("0.000000"))
    send_charges(producer, topics, [charge(1), charge(2), reversal])
    assert project(database_url, bootstrap, topics) == 3
    row = xdr_of(database_url, "at-2")
    assert (row["billing_units"], row["amount"], row["margin"], row["kind"]) == (0, D(0), D(0), "correction")
    assert revisions_of(database_url, "at-2")[-1][3:5] == (D(0), D("-0.05"))
    engine = connect(database_url)
    try:
        with engine.connect() as conn:
            messages, units = conn.execute(sa.text("SELECT messages, billing_units FROM daily_customer_totals")).one()
    finally:
        engine.dispose()
    assert (messages, units) == (1, 1)  # the reversed message is no longer charged


def test_totals_by_customer_are_the_sums_of_the_latest_revisions(database_url, bootstrap, topics, producer):
    records = [charge(1, customer="acme", amount="0.100000"), correction(1, 2, "0.300000", "0.100000", customer="acme"),
               charge(2, customer="acme", amount="0.200000"),
               charge(3, account="bob", customer="beta", amount="1.000000"),
               correction(3, 2, "0.000000", "1.000000", units=0, account="bob", customer="beta"),
               charge(4, account="bob", customer="beta", amount="0.400000"),
               correction(4, 2, "0.250000", "0.400000", account="bob", customer="beta"),
               correction(4, 3, "0.500000", "0.250000", account="bob", customer="beta")]
    send_charges(producer, topics, records)
    assert project(database_url, bootstrap, topics) == len(records)
    latest = {"acme": D("0.3") + D("0.2"), "beta": D(0) + D("0.5")}
    engine = connect(database_url)
    try:
        totals = aggregate_xdrs(engine, "customer", XdrFilter(environment="demo"))
        with engine.connect() as conn:
            differences = dict(conn.execute(sa.select(XdrRevision.customer, sa.func.count())
                                            .group_by(XdrRevision.customer)).all())
    finally:
        engine.dispose()
    assert [(t["customer"], t["xdrs"], t["amount"]) for t in totals] == [("acme", 2, latest["acme"]),
                                                                       ("beta", 2, latest["beta"])]
    summed: dict[str, Decimal] = {}
    for r in rows(database_url, XdrRevision):
        summed[r["customer"]] = summed.get(r["customer"], D(0)) + r["difference"]
    assert summed == latest and differences == {"acme": 3, "beta": 5}


def test_a_correction_whose_id_another_attempt_holds_is_left_out(database_url, bootstrap, topics, producer, caplog):
    """No processor writes it (topic write access is the boundary): the row there stays, the
    projector goes on."""
    squatter = charge(9, charge_id=correction_id_of("at-1", 2))
    send_charges(producer, topics, [squatter, charge(1), correction(1, 2, "0.080000", "0.050000")])
    with caplog.at_level(logging.WARNING, logger="imbill.projections.projector"):
        assert project(database_url, bootstrap, topics) == 3
    assert xdr_of(database_url, "at-9")["charge_id"] == "chg-at-1#2"
    assert xdr_of(database_url, "at-1")["charge_id"] == "ch-1"
    assert "another attempt's xDR has that charge id" in caplog.text


@pytest.mark.parametrize("change, why", [
    ({"revision": 1}, "revision 2 or more"),
    ({"charge_id": "ch-1-fix"}, "chg-<attempt id>#<revision>"),
    ({"corrects": None}, "names no outcome"),
    ({"difference": None}, "without its difference"),
    ({"billing_units": -1}, "cannot be rated"),
    ({"amount": D("-0.010000")}, "cannot be rated"),
    ({"kind": "refund"}, "neither charge nor correction"),
])
def test_an_implausible_correction_is_skipped(database_url, bootstrap, topics, producer, change, why, caplog):
    send_charges(producer, topics, [charge(1), correction(1, 2, "0.080000", "0.050000") | change])
    with caplog.at_level(logging.WARNING, logger="imbill.projections.projector"):
        with XdrProjector(database_url, bootstrap, topics) as projector:
            assert projector.run_until_idle() == 1 and projector.skipped == 1
    assert why in caplog.text
    assert xdr_of(database_url, "at-1")["charge_id"] == "ch-1"
    assert [r[0] for r in revisions_of(database_url, "at-1")] == [1]


def test_the_report_counts_latest_revisions_and_standing_rejections(database_url, bootstrap, topics, producer):
    producer.send(topics.rejections, "demo/alice", "Rejection", rejection(7))
    producer.send(topics.rejections, "demo/alice", "Rejection", rejection(8))
    send_charges(producer, topics, [charge(1), charge(2), correction(2, 2, "0.000000", "0.050000", units=0),
                                    charged_after_all(7)])
    project(database_url, bootstrap, topics)
    engine = connect(database_url)
    try:
        data = report_data(engine, environment="demo", since=T0, until=T0 + timedelta(hours=1))
    finally:
        engine.dispose()
    assert (data.messages, data.rejected) == (2, 1)  # at-1 and at-r7 charged (at-2 reversed); rj-8 stands
    assert [(r.customer, r.messages, r.amount) for r in data.revenue] == [("acme", 2, D("0.10"))]
    assert {r.reason_code: r.attempts for r in data.rejections} == {"INSUFFICIENT_FUNDS": 1}
    assert sum(d.messages for d in data.destinations) == 2
