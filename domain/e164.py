"""E.164 translation of a SIP destination user part by an environment's dialing rules.

The service policy attribute ``userpart_e164_translation`` ("If set to Yes, PortaBilling
will use the dialing rules for a phone number translation") sends the destination user
part through :func:`to_e164`. The dialing rules are the operator's, so the translation
follows :class:`DialingRules` exactly; ``phonenumbers`` is only asked whether a country
code is assigned, never whether a number is "valid" (test numbers such as 15550001 pass).

Visual separators (space, ``-``, ``.``, ``(``, ``)``) are removed first; what remains must
be ASCII digits with at most one leading ``+``. Then the first rule that applies wins:

1. ``+CC NSN``                 international: the digits after ``+`` are the number.
2. ``<international prefix>CC NSN``  international, e.g. ``00`` (UK, UA) or ``011`` (NANP).
3. ``<national prefix>NSN``    trunk prefix, e.g. ``0``: country code + NSN.
   When both prefixes match (``00`` and ``0``), the longer prefix wins.
4. ``CC NSN`` without ``+``     a bare number that starts with the country code and is
   itself a full number (min_length..max_length digits) is already E.164 and kept.
5. ``NSN`` or local number     country code + number; when that is shorter than
   min_length and an area code is set: country code + area code + number.

Rule 4 is ambiguous: a bare national number that happens to start with the country-code
digits and is itself min_length..max_length digits long is read as E.164, not national
(with UK defaults, ``4412345678`` stays ``4412345678``, never ``444412345678``). Tight
min_length/max_length make the reading safe; a caller can always dial the trunk prefix.

Every result is ASCII digits without ``+``, min_length..max_length long, and starts with a
country code assigned by the ITU; anything else (``alice``, ``bob.smith``, ``*98``, too
short, too long) is not a phone number and gives None. Translating ``"+" + result`` again
gives ``result``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, TypeGuard

import phonenumbers

from imbill.domain.errors import ConfigError

__all__ = ["DialingRules", "InvalidDialingRules", "to_e164"]

_SEPARATORS = str.maketrans("", "", " -.()")
_E164_MAX_LENGTH = 15
_STRING_FIELDS = ("international_prefix", "national_prefix", "area_code")
_LENGTH_FIELDS = ("min_length", "max_length")


class InvalidDialingRules(ConfigError, ValueError):
    """A dialing rules field is invalid; the message starts with the field name."""


@dataclass(frozen=True)
class DialingRules:
    """An environment's dialing rules (the DialingRulesSet event without its envelope)."""

    country_code: str
    international_prefix: str = "00"
    national_prefix: str = "0"
    area_code: str = ""
    min_length: int = 7
    max_length: int = _E164_MAX_LENGTH

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise InvalidDialingRules(problem)

    @classmethod
    def from_mapping(cls, fields: Mapping[str, object]) -> DialingRules:
        """Rules from config or a decoded DialingRulesSet record; other keys are ignored.

        Prefixes and the area code must be strings (YAML reads ``011`` as the octal 9);
        the country code may also be an int. Raises InvalidDialingRules (a ValueError).
        """
        if not isinstance(fields, Mapping):
            kind = type(fields).__name__
            raise InvalidDialingRules(f"dialing rules: expected a mapping, got {kind}")
        if "country_code" not in fields:
            raise InvalidDialingRules("country_code: required")
        known = {name: fields[name] for name in (*_STRING_FIELDS, *_LENGTH_FIELDS) if name in fields}
        for name, value in known.items():
            _check_type(name, value)
        country_code = _country_code_text(fields["country_code"])
        return cls(country_code, **known)  # type: ignore[arg-type]


def to_e164(user_part: str, rules: DialingRules) -> str | None:
    """The E.164 digits (without ``+``) that ``user_part`` dials under ``rules``, or None."""
    dialed = _dialed(user_part)
    if dialed is None:
        return None
    return _checked(_translated(dialed, rules), rules)


def _dialed(user_part: object) -> str | None:
    """The user part without visual separators, if that is digits with an optional leading ``+``."""
    if not isinstance(user_part, str):
        return None
    if _is_digits(user_part.removeprefix("+")):  # nothing to remove: skip the (slow) translate
        return user_part
    dialed = user_part.translate(_SEPARATORS)
    return dialed if _is_digits(dialed.removeprefix("+")) else None


def _translated(dialed: str, rules: DialingRules) -> str:
    if dialed.startswith("+"):
        return dialed[1:]
    prefix = _dialing_prefix(dialed, rules)
    if prefix == rules.international_prefix:
        return dialed[len(prefix) :]
    if prefix:
        return rules.country_code + dialed[len(prefix) :]
    if _is_full_number(dialed, rules):
        return dialed
    return _national(dialed, rules)


def _dialing_prefix(dialed: str, rules: DialingRules) -> str:
    """The longest of the international and national prefixes that ``dialed`` starts with."""
    longest = ""
    for prefix in (rules.international_prefix, rules.national_prefix):
        if len(prefix) > len(longest) and dialed.startswith(prefix):
            longest = prefix
    return longest


def _is_full_number(dialed: str, rules: DialingRules) -> bool:
    return dialed.startswith(rules.country_code) and rules.min_length <= len(dialed) <= rules.max_length


def _national(number: str, rules: DialingRules) -> str:
    if rules.area_code and len(rules.country_code) + len(number) < rules.min_length:
        return rules.country_code + rules.area_code + number
    return rules.country_code + number


def _checked(digits: str, rules: DialingRules) -> str | None:
    if not rules.min_length <= len(digits) <= rules.max_length:
        return None
    country_code = _country_code_of(digits)
    return digits if country_code and len(digits) > len(country_code) else None


def _country_code_of(digits: str) -> str | None:
    """The assigned country code ``digits`` starts with (country codes are prefix-free)."""
    return _leading_country_code(digits[:3])


@lru_cache(maxsize=2048)  # keys are the first three digits (or fewer) of a number: at most 1,110
def _leading_country_code(head: str) -> str | None:
    for length in (1, 2, 3):
        if _is_country_code(head[:length]):
            return head[:length]
    return None


def _is_country_code(text: object) -> bool:
    if not _is_digits(text) or text.startswith("0") or len(text) > 3:
        return False
    return phonenumbers.region_code_for_country_code(int(text)) != phonenumbers.UNKNOWN_REGION


def _is_digits(text: object) -> TypeGuard[str]:
    return isinstance(text, str) and text.isascii() and text.isdigit()


def _problem(rules: DialingRules) -> str | None:
    """The first invalid field of ``rules``, as ``"field: reason, got value"``, or None."""
    checks = (
        ("country_code", _is_country_code(rules.country_code), "must be an assigned country code"),
        ("international_prefix", _is_digits(rules.international_prefix), "must be digits"),
        ("national_prefix", _is_digits_or_empty(rules.national_prefix), "must be digits or empty"),
        (
            "national_prefix",
            rules.national_prefix != rules.international_prefix,
            "same as international_prefix",
        ),
        ("area_code", _is_digits_or_empty(rules.area_code), "must be digits or empty"),
        ("min_length", _is_length(rules.min_length), f"must be an int 1..{_E164_MAX_LENGTH}"),
        ("max_length", _is_length(rules.max_length), f"must be an int 1..{_E164_MAX_LENGTH}"),
    )
    for field, ok, reason in checks:
        if not ok:
            return f"{field}: {reason}, got {getattr(rules, field)!r}"
    if rules.min_length > rules.max_length:
        return f"min_length: {rules.min_length} is greater than max_length {rules.max_length}"
    return None


def _is_digits_or_empty(text: object) -> bool:
    return text == "" or _is_digits(text)


def _is_length(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _E164_MAX_LENGTH


def _check_type(name: str, value: object) -> None:
    expected = str if name in _STRING_FIELDS else int
    if not isinstance(value, expected) or isinstance(value, bool):
        raise InvalidDialingRules(f"{name}: must be {expected.__name__}, got {value!r}")


def _country_code_text(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    raise InvalidDialingRules(f"country_code: must be str or int, got {value!r}")
