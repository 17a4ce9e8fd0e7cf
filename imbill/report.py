"""The analysts' report: one self-contained HTML file of a period's traffic, with charts.

:func:`render_report` turns the values of :func:`imbill.projections.report_data.report_data`
into a page a person opens in any browser, offline: plotly.js is inlined once in the head
(no ``<script src>``), every chart has a fixed size in its own ``div.chart``, and every
money figure is also in a table with its exact decimal value (a chart's bars are floats).
Money is never added across currencies: a money chart has one panel per currency.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from decimal import Decimal
from typing import Callable, Iterable, Sequence

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from imbill.domain.money import money_text
from imbill.projections.report_data import ReportData

__all__ = ["CHART_IDS", "CHART_WIDTH", "render_report"]

CHART_WIDTH = 960
CHART_HEIGHT = 380
CHART_IDS = ("traffic", "revenue", "net-split", "destinations", "rejections", "margin")
"""The charts of a report, in page order; a chart with nothing to show is one sentence instead
(``margin``: when no vendor cost shares its xDR's currency)."""
COLOURS = {"charged": "#2a78d6", "rejected": "#e0553b", "on-net": "#2a9d6a", "off-net": "#7b5cd6",
           "revenue": "#2a78d6", "cost": "#e0a43b", "margin": "#2a9d6a"}
MARGIN_NOTE = ("Margin = amount - vendor cost, computed only over the xDRs whose vendor cost is in the same "
               "currency as the amount; xDRs whose vendor cost is in another currency are counted apart "
               "and add no margin. Nothing is converted between currencies.")

_STYLE = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px auto; max-width: 1000px; color: #1d2733; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin: 28px 0 6px; }
p.period, p.note { color: #55606e; font-size: 13px; margin: 4px 0; }
.chart { width: %dpx; height: %dpx; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border-bottom: 1px solid #dde2e8; padding: 3px 12px 3px 0; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.summary td { font-size: 15px; }
""" % (CHART_WIDTH, CHART_HEIGHT)


def render_report(data: ReportData) -> str:
    """The whole HTML page of ``data``."""
    body = _empty(data) if data.empty else "\n".join(_sections(data))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>{_e(_title(data))}</title>\n"
            f"<style>{_STYLE}</style>\n<script>{get_plotlyjs()}</script>\n</head><body>\n"
            f"<h1>{_e(_title(data))}</h1>\n<p class=\"period\">{_e(_period(data))}</p>\n{body}\n</body></html>\n")


def _title(data: ReportData) -> str:
    who = f"customer {data.customer}" if data.customer is not None else "all customers"
    return f"imbill report: environment {data.environment}, {who}"


def _period(data: ReportData) -> str:
    return (f"Messages attempted from {_instant(data.since)} to {_instant(data.until)} (UTC, end excluded); "
            "from the xDR projection.")


def _empty(data: ReportData) -> str:
    return (f"<h2>No traffic</h2>\n<p class=\"empty\">No traffic: no xDR and no rejected attempt "
            f"in this period{' for this customer' if data.customer is not None else ''}.</p>")


def _sections(data: ReportData) -> Iterable[str]:
    yield _summary(data)
    yield _part("Traffic per hour", "traffic", data.traffic, lambda: _traffic_figure(data),
                "No message charged and no attempt rejected in this period.")
    yield _part("Revenue per customer", "revenue", data.revenue, lambda: _revenue_figure(data),
                "No xDR in this period: no revenue.", _table(
                    ("customer", "currency", "messages", "revenue"),
                    [(r.customer, r.currency, r.messages, _money(r.amount, r.currency)) for r in data.revenue]))
    yield _part("On-net / off-net", "net-split", data.messages, lambda: _net_split_figure(data),
                "No message charged in this period.", _table(
                    ("", "currency", "messages", "revenue"),
                    [(_net(s.on_net), s.currency, s.messages, _money(s.amount, s.currency)) for s in data.net_split]))
    yield _part("Top destinations", "destinations", data.destinations, lambda: _destinations_figure(data),
                "No message charged in this period.")
    yield _part("Rejections by reason", "rejections", data.rejections, lambda: _rejections_figure(data),
                "No rejected attempt in this period.")
    yield _margin_section(data)


def _part(title: str, chart_id: str, shown: object, figure: Callable[[], go.Figure], nothing: str,
          table: str = "") -> str:
    """A section: its chart and table when there is something to show, else one sentence."""
    if not shown:
        return f"<h2>{_e(title)}</h2><p class=\"note\">{_e(nothing)}</p>"
    return f"<h2>{_e(title)}</h2>{_chart(chart_id, figure())}{table}"


def _summary(data: ReportData) -> str:
    rows = [("messages charged", data.messages), ("attempts rejected", data.rejected)]
    rows += [(f"revenue {currency}", _money(amount, currency)) for currency, amount in _revenue_per_currency(data)]
    return _table(("", ""), rows, css="summary", head=False)


def _revenue_per_currency(data: ReportData) -> list[tuple[str, Decimal]]:
    totals: dict[str, Decimal] = {}
    for row in data.revenue:
        totals[row.currency] = totals.get(row.currency, Decimal(0)) + row.amount
    return sorted(totals.items())


def _margin_section(data: ReportData) -> str:
    parts = ["<h2>Margin per vendor</h2>", f"<p class=\"note\">{_e(MARGIN_NOTE)}</p>"]
    if data.margins:
        parts.append(_chart("margin", _margin_figure(data)))
        rows = [(m.vendor, m.currency, m.messages, _money(m.revenue, m.currency), _money(m.cost, m.currency),
                 _money(m.margin, m.currency)) for m in data.margins]
        parts.append(_table(("vendor", "currency", "messages", "revenue", "vendor cost", "margin"), rows))
    else:
        parts.append("<p class=\"note\">No xDR whose vendor cost is in its own currency: no margin to show.</p>")
    if data.without_margin:
        parts.append(_table(("vendor", "xDRs with the vendor cost in another currency (no margin)"),
                            [(w.vendor, w.messages) for w in data.without_margin]))
    return "\n".join(parts)


def _traffic_figure(data: ReportData) -> go.Figure:
    hours = [t.hour for t in data.traffic]
    figure = go.Figure([
        go.Bar(name="charged", x=hours, y=[t.charged for t in data.traffic], marker_color=COLOURS["charged"]),
        go.Bar(name="rejected", x=hours, y=[t.rejected for t in data.traffic], marker_color=COLOURS["rejected"]),
    ])
    figure.update_layout(barmode="stack", yaxis_title="attempts", xaxis_title="hour (UTC)")
    return figure


def _currencies(values: Iterable[str]) -> list[str]:
    return sorted(set(values))


def _per_currency(title: str, currencies: Sequence[str]) -> go.Figure:
    """One panel per currency (``title`` + currency), each with its own money axis."""
    figure = make_subplots(rows=1, cols=max(len(currencies), 1), subplot_titles=[f"{title} {c}" for c in currencies])
    for col, currency in enumerate(currencies, start=1):
        figure.update_yaxes(title_text=currency, row=1, col=col)
    return figure


def _revenue_figure(data: ReportData) -> go.Figure:
    currencies = _currencies(r.currency for r in data.revenue)
    figure = _per_currency("revenue", currencies)
    for col, currency in enumerate(currencies, start=1):
        rows = [r for r in data.revenue if r.currency == currency]
        figure.add_trace(go.Bar(name=currency, x=[r.customer for r in rows], y=[float(r.amount) for r in rows],
                                marker_color=COLOURS["revenue"], showlegend=False), row=1, col=col)
    return figure


def _net_split_figure(data: ReportData) -> go.Figure:
    messages = {True: 0, False: 0}
    for split in data.net_split:
        messages[split.on_net] += split.messages
    figure = go.Figure(go.Pie(labels=["on-net", "off-net"], values=[messages[True], messages[False]], sort=False,
                              marker_colors=[COLOURS["on-net"], COLOURS["off-net"]], hole=0.35,
                              textinfo="label+value+percent"))
    figure.update_layout(title_text="messages charged")
    return figure


def _destinations_figure(data: ReportData) -> go.Figure:
    rows = list(reversed(data.destinations))
    figure = go.Figure(go.Bar(orientation="h", y=[d.destination for d in rows], x=[d.messages for d in rows],
                              marker_color=[COLOURS["on-net" if d.on_net else "off-net"] for d in rows],
                              text=[_net(d.on_net) for d in rows], textposition="inside"))
    figure.update_layout(xaxis_title="messages charged", yaxis_type="category")
    return figure


def _rejections_figure(data: ReportData) -> go.Figure:
    rows = list(reversed(data.rejections))
    figure = go.Figure(go.Bar(orientation="h", y=[r.reason_code for r in rows], x=[r.attempts for r in rows],
                              marker_color=COLOURS["rejected"]))
    figure.update_layout(xaxis_title="attempts rejected")
    return figure


def _margin_figure(data: ReportData) -> go.Figure:
    currencies = _currencies(m.currency for m in data.margins)
    figure = _per_currency("margin per vendor", currencies)
    for col, currency in enumerate(currencies, start=1):
        rows = [m for m in data.margins if m.currency == currency]
        vendors = [m.vendor for m in rows]
        for part, values in (("revenue", [m.revenue for m in rows]), ("cost", [m.cost for m in rows]),
                             ("margin", [m.margin for m in rows])):
            figure.add_trace(go.Bar(name=part, x=vendors, y=[float(v) for v in values], marker_color=COLOURS[part],
                                    legendgroup=part, showlegend=col == 1), row=1, col=col)
    figure.update_layout(barmode="group")
    return figure


def _chart(chart_id: str, figure: go.Figure) -> str:
    figure.update_layout(template="plotly_white", width=CHART_WIDTH, height=CHART_HEIGHT,
                         margin={"l": 70, "r": 20, "t": 50, "b": 60}, font_family="DejaVu Sans, Arial, sans-serif")
    plot = figure.to_html(full_html=False, include_plotlyjs=False, div_id=chart_id,
                          default_width=f"{CHART_WIDTH}px", default_height=f"{CHART_HEIGHT}px",
                          config={"displaylogo": False, "responsive": False})
    return f"<div class=\"chart\">{plot}</div>"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], *, css: str = "", head: bool = True) -> str:
    numeric = [all(isinstance(row[i], (int, Decimal)) or _is_money(row[i]) for row in rows)
               for i in range(len(header))]
    thead = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if head else ""
    cells = ("<td class=\"n\">", "<td>")
    body = "".join("<tr>" + "".join(f"{cells[0] if numeric[i] else cells[1]}{_e(str(v))}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table class=\"{css}\">{thead}{body}</table>"


def _is_money(value: object) -> bool:
    return isinstance(value, str) and value.replace(".", "", 1).lstrip("-").isdigit()


def _money(amount: Decimal, currency: str) -> str:
    """Exact, as every output of imbill writes money: the currency's minor units, and every
    further decimal the sum has."""
    return money_text(amount, currency)


def _net(on_net: bool) -> str:
    return "on-net" if on_net else "off-net"


def _instant(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _e(text: str) -> str:
    return html.escape(text, quote=True)
