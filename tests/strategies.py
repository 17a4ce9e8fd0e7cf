"""Hypothesis strategies for the rule layer, in one place (profiles live in conftest.py)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import strategies as st

from imbill.domain.config import ServicePolicy

__all__ = ["unit_sizes", "body_chars", "prices", "currencies", "digits", "rate_codes", "numbers",
           "domains", "policy_attributes", "dynamic_policies", "static_policies", "money", "balance_operations"]

unit_sizes = st.none() | st.integers(min_value=1, max_value=1000)
body_chars = st.integers(min_value=0, max_value=20_000)
prices = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)
currencies = st.sampled_from(["USD", "EUR", "GBP", "JPY", "KRW", "KWD", "BHD", "TND", "XTS"])
digits = "0123456789"
rate_codes = st.text(digits, min_size=1, max_size=6)
numbers = st.text(digits, min_size=1, max_size=15)
domains = st.sampled_from(["sip.acme.example", "acme.example", "SIP.ACME.EXAMPLE", "globex.example", "x.org"])
_patterns = st.sampled_from(["%", "%.example", "sip.%", "%acme%", "globex.example, x.org", "_.org", "nomatch"])

policy_attributes = st.fixed_dictionaries({}, optional={
    "msg.billing_unit_size": st.integers(min_value=1, max_value=500),
    "msg.transport_protocol": st.sampled_from(["SIP", "SMPP"]),
    "msg.outgoing_aaa": st.booleans(),
    "msg.local_lookup": st.booleans(),
    "msg.external_routing": st.booleans(),
    "msg.userpart_e164_translation": st.booleans(),
})


@st.composite
def dynamic_policies(draw: st.DrawFn) -> list[ServicePolicy]:
    """Messaging policies with unique names, recipient domain patterns and priorities."""
    names = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=4), unique=True, max_size=6))
    return [ServicePolicy(f"dyn-{name}", "messaging", draw(st.integers(0, 10)), draw(_patterns), "",
                          draw(policy_attributes)) for name in names]


@st.composite
def static_policies(draw: st.DrawFn) -> ServicePolicy:
    """A policy to assign to an account: any pattern (or none) and priority."""
    pattern = draw(st.none() | _patterns)
    return ServicePolicy("static", "messaging", draw(st.integers(0, 10)), pattern, "", draw(policy_attributes))


money = st.decimals(min_value=0, max_value=50, places=2, allow_nan=False, allow_infinity=False)

balance_operations = st.lists(
    st.tuples(st.sampled_from(["charge", "charge", "charge", "top_up", "redeliver"]), money),
    max_size=60,
)
"""("charge", amount), ("top_up", amount), or ("redeliver", _): the previous record again."""


def as_price(value: Decimal) -> str:
    """A price as RateDefined text (six places at most)."""
    return format(value, "f")
