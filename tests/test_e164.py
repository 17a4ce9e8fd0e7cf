"""E.164 translation of SIP user parts by dialing rules (userpart_e164_translation)."""

from __future__ import annotations

from dataclasses import asdict

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imbill.domain.errors import ConfigError
from imbill.domain.e164 import DialingRules, InvalidDialingRules, to_e164

US = DialingRules("1", "011", national_prefix="1", area_code="212", min_length=11)
UK = DialingRules("44", "00", national_prefix="0", area_code="20", min_length=11, max_length=12)
UA = DialingRules("380", area_code="44", min_length=12, max_length=12)
LOOSE_UK = DialingRules("44")
LOOSE_US = DialingRules("1", international_prefix="011", national_prefix="1")


@pytest.mark.parametrize(
    ("user_part", "rules", "expected"),
    [
        # "+CC...": international, whatever the rules' prefixes
        ("+12125551234", US, "12125551234"),
        ("+442079460000", US, "442079460000"),
        ("+380441234567", UK, "380441234567"),
        ("+380 44 123 45 67", UA, "380441234567"),
        # international prefix
        ("01144 20 7946 0000", US, "442079460000"),
        ("00442079460000", UK, "442079460000"),
        ("00380441234567", UA, "380441234567"),
        ("0012125551234", UK, "12125551234"),
        # national trunk prefix -> country code + national number
        ("1-212-555-1234", US, "12125551234"),
        ("020 7946 0000", UK, "442079460000"),
        ("07911 123456", UK, "447911123456"),
        ("044 123 45 67", UA, "380441234567"),
        # international prefix wins over the shorter trunk prefix it starts with
        ("0044 20 7946 0000", LOOSE_UK, "442079460000"),
        # bare national numbers -> country code + number
        ("(212) 555-1234", US, "12125551234"),
        ("7911123456", UK, "447911123456"),
        ("441234567", UA, "380441234567"),
        # short local numbers get the default area code
        ("555-1234", US, "12125551234"),
        ("7946 0000", UK, "442079460000"),
        ("123-45-67", UA, "380441234567"),
        # already E.164 without "+": starts with the country code and has a full length
        ("442079460000", UK, "442079460000"),
        ("380441234567", UA, "380441234567"),
        ("3801234", UA, "380443801234"),  # starts with 380 but too short: a local number
        ("4412345678", LOOSE_UK, "4412345678"),  # the documented ambiguity: read as E.164
        # test numbers are translated, phonenumbers validity is not asked
        ("15550001", LOOSE_US, "15550001"),
        ("+1 555 0001", LOOSE_US, "15550001"),
        # visual separators
        ("+1 (212) 555-1234", US, "12125551234"),
        ("212.555.1234", US, "12125551234"),
        ("(+44) 20-7946-0000", UK, "442079460000"),
        # too short or too long after translation
        ("123", UK, None),
        ("+12125551234", UA, None),  # UA rules want 12 digits
        ("+1234567890123456", LOOSE_UK, None),
        ("0", UK, None),
        ("00", UK, None),
        ("+", UK, None),
        ("+1", LOOSE_US, None),
        # unassigned country codes
        ("+999 1234 5678", LOOSE_UK, None),
        ("+0 123 456 789", LOOSE_UK, None),
        ("+001 212 555 1234", LOOSE_UK, None),
        # SIP names and other non-numbers
        ("alice", UK, None),
        ("bob.smith", UK, None),
        ("john-doe", US, None),
        ("12ab34567", UK, None),
        ("", UK, None),
        ("   ", UK, None),
        ("*98", UK, None),
        ("#1234567", UK, None),
        ("44+2079460000", UK, None),
        ("++442079460000", UK, None),
        ("+442079460000\x00", UK, None),
        ("\u0664\u0664\u0662\u0660\u0667\u0669\u0664\u0666\u0660\u0660", UK, None),  # Arabic-Indic
        ("\uff14\uff14\uff12\uff10\uff17\uff19\uff14\uff16\uff10\uff10\uff10\uff10", UK, None),  # fullwidth
        ("1" * 100_000, LOOSE_UK, None),
    ],
)
def test_to_e164(user_part: str, rules: DialingRules, expected: str | None) -> None:
    assert to_e164(user_part, rules) == expected


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({}, "country_code"),
        ({"country_code": "4a"}, "country_code"),
        ({"country_code": "+44"}, "country_code"),
        ({"country_code": "999"}, "country_code"),
        ({"country_code": "001"}, "country_code"),
        ({"country_code": ""}, "country_code"),
        ({"country_code": True}, "country_code"),
        ({"country_code": "44", "international_prefix": ""}, "international_prefix"),
        ({"country_code": "44", "international_prefix": "+"}, "international_prefix"),
        ({"country_code": "1", "international_prefix": 11}, "international_prefix"),  # YAML 011 -> 9
        ({"country_code": "44", "national_prefix": "O"}, "national_prefix"),
        ({"country_code": "44", "national_prefix": "00"}, "national_prefix"),
        ({"country_code": "44", "area_code": "2O"}, "area_code"),
        ({"country_code": "44", "area_code": None}, "area_code"),
        ({"country_code": "44", "min_length": 0}, "min_length"),
        ({"country_code": "44", "min_length": "7"}, "min_length"),
        ({"country_code": "44", "max_length": 16}, "max_length"),
        ({"country_code": "44", "max_length": True}, "max_length"),
        ({"country_code": "44", "min_length": 12, "max_length": 11}, "min_length"),
    ],
)
def test_from_mapping_rejects_bad_fields(fields: dict[str, object], field_name: str) -> None:
    with pytest.raises(ValueError, match=f"^{field_name}:"):
        DialingRules.from_mapping(fields)


def test_invalid_rules_are_a_config_error_and_a_value_error() -> None:
    with pytest.raises(ConfigError):
        DialingRules("44", min_length=9, max_length=8)
    assert issubclass(InvalidDialingRules, ValueError)


def test_from_mapping_reads_a_dialing_rules_set_record() -> None:
    record = {
        "event_id": "e-1",
        "environment": "acme",
        "occurred_at": 0,
        "country_code": "1",
        "international_prefix": "011",
        "national_prefix": "1",
        "area_code": "212",
        "min_length": 11,
        "max_length": 15,
    }
    assert DialingRules.from_mapping(record) == US


def test_from_mapping_defaults_and_int_country_code() -> None:
    assert DialingRules.from_mapping({"country_code": 44}) == LOOSE_UK


def test_not_a_string_is_not_a_phone_number() -> None:
    assert to_e164(None, UK) is None  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------------------

_COUNTRY_CODES = sorted(str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


@st.composite
def dialing_rules(draw: st.DrawFn) -> DialingRules:
    international_prefix = draw(st.from_regex(r"[0-9]{1,3}", fullmatch=True))
    national_prefixes = st.from_regex(r"[0-9]{0,2}", fullmatch=True)
    national_prefix = draw(national_prefixes.filter(lambda prefix: prefix != international_prefix))
    min_length, max_length = sorted(draw(st.lists(st.integers(1, 15), min_size=2, max_size=2)))
    return DialingRules(
        country_code=draw(st.sampled_from(_COUNTRY_CODES)),
        international_prefix=international_prefix,
        national_prefix=national_prefix,
        area_code=draw(st.from_regex(r"[0-9]{0,4}", fullmatch=True)),
        min_length=min_length,
        max_length=max_length,
    )


user_parts = st.one_of(
    st.text(),
    st.from_regex(r"\+?[0-9 ().-]{0,20}", fullmatch=True),
    st.from_regex(r"[0-9]{1,16}", fullmatch=True),
)


def _starts_with_country_code(digits: str) -> bool:
    return any(
        not digits.startswith("0")
        and phonenumbers.region_code_for_country_code(int(digits[:length])) != phonenumbers.UNKNOWN_REGION
        for length in (1, 2, 3)
    )


@given(st.text(), dialing_rules())
def test_never_raises_on_any_text(user_part: str, rules: DialingRules) -> None:
    result = to_e164(user_part, rules)
    assert result is None or isinstance(result, str)


@given(user_parts, dialing_rules())
def test_result_is_an_e164_number_within_the_rules_lengths(user_part: str, rules: DialingRules) -> None:
    result = to_e164(user_part, rules)
    if result is not None:
        assert result.isascii() and result.isdigit()
        assert rules.min_length <= len(result) <= rules.max_length
        assert _starts_with_country_code(result)


@given(user_parts, dialing_rules())
def test_translating_a_translated_number_changes_nothing(user_part: str, rules: DialingRules) -> None:
    result = to_e164(user_part, rules)
    if result is not None:
        assert to_e164("+" + result, rules) == result


@given(st.from_regex(r"[1-9][0-9]{6,9}", fullmatch=True), dialing_rules())
def test_a_bare_national_number_gets_the_country_code(number: str, rules: DialingRules) -> None:
    result = to_e164(number, rules)
    dialed_a_prefix = number.startswith(rules.international_prefix) or (
        rules.national_prefix and number.startswith(rules.national_prefix)
    )
    if result is not None and not dialed_a_prefix and not number.startswith(rules.country_code):
        assert result in (rules.country_code + number, rules.country_code + rules.area_code + number)


@given(dialing_rules())
def test_from_mapping_round_trips(rules: DialingRules) -> None:
    assert DialingRules.from_mapping(asdict(rules)) == rules
