"""`imbill report`: the report's numbers (on SQLite and PostgreSQL, against sums made here from
the projected events), the HTML (self-contained, escaped, an empty period), the CLI, and the
page drawn by headless Chromium: every chart has coloured pixels where it stands."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from PIL import Image, ImageChops

from imbill.cli import cli
from imbill.projections.models import RejectedAttempt, Xdr, connect
from imbill.projections.report_data import (CustomerRevenue, DestinationTraffic, HourTraffic, NetSplit,
                                            RejectionCount, ReportData, VendorMargin, report_data)
from imbill.projections.projector import XDR_MAPPERS, insert_rows
from imbill.report import CHART_IDS, render_report
from imbill.schemas.codec import record_of
from tests.report_fixture import CUSTOMER_OF, ENVIRONMENT, HOURS, START, project_traffic

SINCE, UNTIL = START, START + timedelta(hours=HOURS)


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'imbill.db'}"
    project_traffic(url)
    return url


def read(url: str, **options) -> ReportData:
    engine = connect(url)
    try:
        return report_data(engine, environment=ENVIRONMENT, **({"since": SINCE, "until": UNTIL} | options))
    finally:
        engine.dispose()


def expected(outcomes, customer: str | None = None) -> dict:
    """The report's numbers summed here, in Python, from the projected events."""
    charges = [e.event for e in outcomes if e.name == "Charge" and customer in (None, e.event.customer)]
    rejections = [e.event for e in outcomes
                  if e.name == "Rejection" and customer in (None, CUSTOMER_OF.get(e.event.account))]
    hour = lambda at: at.replace(minute=0, second=0, microsecond=0)  # noqa: E731
    charged, rejected = Counter(hour(c.attempted_at) for c in charges), Counter(hour(r.attempted_at) for r in rejections)
    money = lambda rows: sum((r.amount for r in rows), Decimal(0))  # noqa: E731
    groups = defaultdict(list)
    for c in charges:
        groups["revenue", c.customer, c.currency].append(c)
        groups["net", c.on_net, c.currency].append(c)
        if c.vendor and c.currency == c.vendor_currency:
            groups["margin", c.vendor, c.currency].append(c)
    return {
        "traffic": tuple(HourTraffic(h, charged[h], rejected[h]) for h in sorted(charged.keys() | rejected.keys())),
        "revenue": tuple(CustomerRevenue(k[1], k[2], len(v), money(v)) for k, v in sorted(groups.items())
                         if k[0] == "revenue"),
        "net_split": tuple(sorted((NetSplit(k[1], k[2], len(v), money(v)) for k, v in groups.items() if k[0] == "net"),
                                  key=lambda s: (not s.on_net, s.currency))),
        "margins": tuple(VendorMargin(k[1], k[2], len(v), money(v), sum((c.vendor_cost for c in v), Decimal(0)))
                         for k, v in sorted(groups.items()) if k[0] == "margin"),
        "rejections": Counter(r.reason_code for r in rejections),
        "destinations": Counter((c.destination, c.on_net) for c in charges),
    }


@pytest.mark.parametrize("customer", [None, "Globex", "Euro Telecom"])
def test_the_numbers_are_the_projected_events_summed_per_currency(database_url, customer):
    outcomes = project_traffic(database_url)
    data, want = read(database_url, customer=customer), expected(outcomes, customer)
    assert data.traffic == want["traffic"] and data.messages > 0
    assert data.revenue == want["revenue"]
    assert data.net_split == want["net_split"]
    assert data.margins == want["margins"]
    assert {r.reason_code: r.attempts for r in data.rejections} == want["rejections"]
    assert [r.attempts for r in data.rejections] == sorted((r.attempts for r in data.rejections), reverse=True)
    top = sorted(want["destinations"].items(), key=lambda item: (-item[1], item[0][0]))[:10]
    assert data.destinations == tuple(DestinationTraffic(d, on_net, n) for (d, on_net), n in top)
    assert all(type(r.amount) is Decimal for r in data.revenue)


def test_money_sums_are_exact_where_floats_are_not(database_url):
    """100000000000.000001 is no float: summed through floats the last micro unit is lost."""
    charge = next(e for e in project_traffic(database_url, count=20) if e.name == "Charge")
    amounts = ("99999999999.999999", "0.000001", "0.000001")
    events = [dataclasses.replace(charge.event, charge_id=f"chg-big-{i}", attempt_id=f"big-{i}", customer="Big Spender",
                                  amount=Decimal(amount), vendor_cost=Decimal(amount),
                                  vendor_currency=charge.event.currency)
              for i, amount in enumerate(amounts)]
    big = [dataclasses.replace(charge, offset=10_000 + i, event=event, record=record_of(event))
           for i, event in enumerate(events)]
    engine = connect(database_url)
    with engine.begin() as conn:
        insert_rows(conn, big, XDR_MAPPERS)
    engine.dispose()
    data = read(database_url, customer="Big Spender")
    assert [(r.messages, r.amount) for r in data.revenue] == [(3, Decimal("100000000000.000001"))]
    assert [m.revenue - m.cost for m in data.margins] == [Decimal(0)]


def test_margin_only_where_the_vendor_cost_shares_the_currency(sqlite_url):
    data = read(sqlite_url)
    assert {(m.vendor, m.currency) for m in data.margins} == {("Carrier EU", "EUR"), ("Carrier US", "USD"),
                                                              ("Internal vendor", "USD")}
    # Euro Telecom's on-net messages cost the internal vendor USD, Example Corp's UK ones the EU carrier EUR
    assert {w.vendor for w in data.without_margin} == {"Carrier EU", "Internal vendor"}
    assert all(w.messages > 0 for w in data.without_margin)


def test_a_customers_rejections_are_those_of_its_accounts(sqlite_url):
    """Also of an account with no xDR at all (2002 of Globex, found in the config in force)."""
    globex = read(sqlite_url, customer="Globex")
    assert {r.reason_code for r in globex.rejections} == {"insufficient_funds", "service_suspended"}
    engine = connect(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(Xdr.account == "2002")).scalar() == 0
        only_rejected = conn.execute(sa.select(sa.func.count()).where(RejectedAttempt.account == "2002")).scalar()
    engine.dispose()
    assert only_rejected > 0
    assert sum(r.attempts for r in globex.rejections) > only_rejected
    assert "unknown_account" in {r.reason_code for r in read(sqlite_url).rejections}
    assert [r.customer for r in globex.revenue] == ["Globex"]


def test_the_period_is_half_open_and_in_utc(sqlite_url):
    first_hour = read(sqlite_url, until=SINCE + timedelta(hours=1))
    assert [t.hour for t in first_hour.traffic] == [SINCE]
    later = read(sqlite_url, since=SINCE + timedelta(hours=1))
    assert first_hour.messages + later.messages == read(sqlite_url).messages
    paris = timezone(timedelta(hours=1))
    assert read(sqlite_url, since=SINCE.astimezone(paris), until=UNTIL.astimezone(paris)) == read(sqlite_url)


def test_an_empty_period_renders_saying_there_is_no_traffic(sqlite_url):
    data = read(sqlite_url, since=SINCE - timedelta(days=30), until=SINCE - timedelta(days=29))
    assert data.empty and data.traffic == () and data.revenue == ()
    page = render_report(data)
    assert "No traffic" in page and "plotly-graph-div" not in page


def test_a_part_with_nothing_to_show_says_so_instead_of_an_empty_chart():
    only_rejected = ReportData("demo", SINCE, UNTIL, None, (HourTraffic(SINCE, 0, 3),), (), (), (),
                               (RejectionCount("unknown_account", 3),), (), ())
    page = render_report(only_rejected)
    assert re.findall(r'<div id="([a-z-]+)" class="plotly-graph-div"', page) == ["traffic", "rejections"]
    assert "No xDR in this period: no revenue." in page and "no margin to show" in page
    assert page.count("No message charged in this period.") == 2


def test_the_page_is_self_contained(sqlite_url):
    page = render_report(read(sqlite_url))
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I)
    assert not re.search(r"<link\b", page, re.I)
    assert "<script src=\"http" not in page
    assert page.count("Plotly.newPlot") == len(CHART_IDS)
    for chart_id in CHART_IDS:
        assert f'id="{chart_id}"' in page


def test_names_are_escaped_and_money_is_exact():
    hostile = "<b>Evil & Co</b>"
    data = ReportData("demo", SINCE, UNTIL, hostile, (HourTraffic(SINCE, 1, 0),),
                      (CustomerRevenue(hostile, "KWD", 1, Decimal("0.012500")),),
                      (NetSplit(False, "KWD", 1, Decimal("0.012500")),),
                      (DestinationTraffic("</script><script>alert(1)</script>", False, 1),),
                      (RejectionCount("no_rate", 2),), (), ())
    page = render_report(data)
    assert hostile not in page and "&lt;b&gt;Evil &amp; Co&lt;/b&gt;" in page
    assert "<script>alert(1)" not in page
    assert ">0.0125<" in page


def invoke(*args: str, url: str):
    return CliRunner().invoke(cli, ["--environment", ENVIRONMENT, *args],
                              env={"IMBILL_DATABASE_URL": url, "COLUMNS": "80", "NO_COLOR": "1"})


def test_cli_writes_the_report(sqlite_url, tmp_path):
    out = tmp_path / "report.html"
    result = invoke("report", "--from", "2026-03-02T08:00:00Z", "--to", "2026-03-02T18:00", "--customer", "Globex",
                    "--output", str(out), url=sqlite_url)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "messages" in result.output
    page = out.read_text()
    assert "customer Globex" in page and "Example Corp" not in page


@pytest.mark.parametrize("args, words", [
    (("--from", "yesterday", "--to", "2026-03-03"), "--from: not an ISO time: 'yesterday'"),
    (("--from", "2026-03-03", "--to", "2026-13-01"), "--to: not an ISO time: '2026-13-01'"),
    (("--from", "2026-03-03", "--to", "2026-03-02"), "--from must be before --to"),
])
def test_cli_bad_times_get_one_line(sqlite_url, tmp_path, args, words):
    result = invoke("report", *args, "--output", str(tmp_path / "r.html"), url=sqlite_url)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {words}"
    assert not (tmp_path / "r.html").exists()


def test_cli_without_a_projection_or_a_writable_output(tmp_path, sqlite_url):
    empty = invoke("report", "--from", "2026-03-02", "--to", "2026-03-03", "--output", str(tmp_path / "r.html"),
                   url=f"sqlite:///{tmp_path / 'none.db'}")
    assert empty.exit_code == 2 and "run `imbill project` first" in empty.output
    nowhere = invoke("report", "--from", "2026-03-02", "--to", "2026-03-03", "--output",
                     str(tmp_path / "no" / "such" / "r.html"), url=sqlite_url)
    assert nowhere.exit_code == 2 and len(nowhere.output.strip().splitlines()) == 1, nowhere.output
    assert "cannot write" in nowhere.output
    folder = invoke("report", "--from", "2026-03-02", "--to", "2026-03-03", "--output", str(tmp_path), url=sqlite_url)
    assert folder.output.strip() == f"error: cannot write {tmp_path}: it is a directory" and folder.exit_code == 2


def test_help_lists_the_report_command():
    line = next(line for line in invoke("--help", url="sqlite://").output.splitlines()
                if line.strip().startswith("report "))
    assert "HTML report" in line


# --- the page in a browser --------------------------------------------------------------

WIDTH = 1100
PROBE = ("<script>(function(){const r={};document.querySelectorAll('.plotly-graph-div').forEach(d=>{"
         "const b=d.getBoundingClientRect();r[d.id]=[b.left+scrollX,b.top+scrollY,b.width,b.height];});"
         "const p=document.createElement('pre');p.id='chart-boxes';p.textContent=JSON.stringify(r);"
         "document.body.appendChild(p);})();</script>")


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: make test installs it (scripts/chromium-up)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium, or bash scripts/chromium-up)")
    return found


def browse(page: Path, *args: str, height: int) -> subprocess.CompletedProcess:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--force-device-scale-factor=1", f"--window-size={WIDTH},{height}", *args, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def chart_boxes(page: Path) -> dict[str, list[float]]:
    """Where each chart stands on the page, as Chromium lays it out (a probe script appended)."""
    probed = page.with_name("probed-" + page.name)
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = browse(probed, "--dump-dom", height=1000).stdout
    return json.loads(re.search(r'<pre id="chart-boxes">([^<]*)</pre>', dom).group(1))


def coloured_pixels(page: Path, boxes: dict[str, list[float]]) -> dict[str, int]:
    """Per chart, the pixels of its box that are neither white nor grey: bars and slices."""
    height = int(max(top + h for _, top, _, h in boxes.values())) + 40
    shot = page.with_suffix(".png")
    browse(page, f"--screenshot={shot}", height=height)
    red, green, blue = Image.open(shot).convert("RGB").split()
    spread = ImageChops.subtract(ImageChops.lighter(ImageChops.lighter(red, green), blue),
                                 ImageChops.darker(ImageChops.darker(red, green), blue))
    coloured = spread.point(lambda v: 255 if v > 60 else 0)
    return {chart_id: coloured.crop((int(left), int(top), int(left + width), int(top + h))).histogram()[255]
            for chart_id, (left, top, width, h) in boxes.items()}


def test_chromium_draws_every_chart(sqlite_url, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_report(read(sqlite_url)))
    boxes = chart_boxes(page)
    assert list(boxes) == list(CHART_IDS)
    tops = [top for _, top, _, _ in boxes.values()]
    assert all(b[3] > 300 for b in boxes.values()) and tops == sorted(tops)
    drawn = coloured_pixels(page, boxes)
    assert all(count > 2000 for count in drawn.values()), drawn


def test_the_pixel_check_sees_a_chart_that_did_not_draw(sqlite_url, tmp_path):
    """The same page without plotly.js: the chart boxes are there, and empty."""
    page = tmp_path / "undrawn.html"
    page.write_text(re.sub(r"<script>.*?</script>\n</head>", "</head>", render_report(read(sqlite_url)),
                           count=1, flags=re.S))
    assert "Plotly.newPlot" in page.read_text() and len(page.read_text()) < 500_000
    drawn = coloured_pixels(page, chart_boxes(page))
    assert list(drawn) == list(CHART_IDS) and set(drawn.values()) == {0}, drawn
