"""Every schema encodes and decodes; golden samples written by earlier schemas still decode."""

import dataclasses
import hashlib
import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imbill.domain.errors import SchemaError, UnknownSchema
from imbill.domain.events import BalanceChanged
from imbill.schemas.codec import (MAGIC, _by_fingerprint, decode, decode_as, decode_event, encode, encode_event, event_of, fingerprint,
                                  leading_strings, record_of, register_writer, schemas, writer_name)
from imbill.schemas.physical import PhysicalReader
from tests.builders import DROP, attempt_record
from tests.samples import SAMPLES

GOLDEN = Path(__file__).parent / "golden"


def test_every_schema_has_a_sample():
    assert set(SAMPLES) == set(schemas())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name):
    data = encode(name, SAMPLES[name])
    assert data[:2] == MAGIC
    assert decode(data) == (name, SAMPLES[name])


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_event_is_a_domain_type_and_back(name):
    event = event_of(name, SAMPLES[name])
    assert type(event).__module__ == "imbill.domain.events"
    assert record_of(event) == SAMPLES[name]
    assert decode_event(encode_event(event)) == event


def test_an_attempt_without_a_field_rating_needs_is_no_attempt():
    """Rated as malformed_attempt by the processor (tests/test_processor.py): it cannot
    become a MessageAttempt."""
    with pytest.raises(SchemaError, match="to_user"):
        event_of("MessageAttempt", attempt_record(to_user=DROP))


def test_fingerprint_matches_the_avro_spec_example():
    # CRC-64-AVRO of the canonical form "int" is 0x7275d51a3f395c8f, written little-endian.
    assert fingerprint('"int"') == bytes.fromhex("8f5c393f1ad57572")


@pytest.mark.parametrize("data, error", [
    (b"", "missing C3 01"),
    (b"{\"json\": 1}", "missing C3 01"),
    (MAGIC + b"\x00" * 8 + b"x", "unknown writer schema"),
])
def test_undecodable_records_raise_schema_errors(data, error):
    with pytest.raises(SchemaError, match=error):
        decode(data)


def test_truncated_body_is_a_schema_error():
    data = encode("Charge", SAMPLES["Charge"])
    with pytest.raises(SchemaError, match="cannot decode Charge"):
        decode(data[:40])


def test_wrong_type_is_refused_on_encode():
    with pytest.raises(SchemaError, match="cannot encode Charge"):
        encode("Charge", {**SAMPLES["Charge"], "billing_units": "three"})


def test_decode_as_checks_the_record_name():
    with pytest.raises(SchemaError, match="expected a Charge record, got Rejection"):
        decode_as("Charge", encode("Rejection", SAMPLES["Rejection"]))


def test_money_is_decimal_never_float():
    for name, schema in schemas().items():
        for field in schema.parsed["fields"]:
            assert "float" not in json.dumps(field["type"]) and "double" not in json.dumps(field["type"]), name


GOLDEN_SAMPLES = sorted(path.name.removesuffix(".bin") for path in GOLDEN.glob("*.bin"))
"""``Charge`` (written by the first schema), ``Charge.v2`` (by its second version), ..."""


def test_every_schema_has_a_golden_sample():
    assert {sample.split(".")[0] for sample in GOLDEN_SAMPLES} == set(schemas())


@pytest.mark.parametrize("sample", GOLDEN_SAMPLES)
def test_golden_samples_still_decode(sample):
    """A sample written with the schema of its day must decode with today's reader schema:
    the fields it has as they were written, the fields added since with their defaults.
    A schema change that breaks this is not backward compatible: add a default or a new type."""
    name = sample.split(".")[0]
    data = (GOLDEN / f"{sample}.bin").read_bytes()
    writer = register_writer((GOLDEN / f"{sample}.avsc").read_text())
    assert data[:10] == writer.header
    got, record = decode(data)
    assert got == name
    written = json.loads((GOLDEN / f"{sample}.json").read_text())
    added = {f["name"]: f["default"] for f in schemas()[name].parsed["fields"] if f["name"] not in written}
    assert json.loads(json.dumps(record, default=str)) == written | added
    assert decode_event(data) == event_of(name, record)


def test_a_charge_of_the_first_schema_reads_as_revision_1_of_messaging():
    old = (GOLDEN / "Charge.bin").read_bytes()
    register_writer((GOLDEN / "Charge.avsc").read_text())
    charge = decode_event(old)
    assert (charge.revision, charge.service, charge.node, charge.user_agent) == (1, "messaging", None, None)
    assert (charge.cli_translated, charge.destination_description) == (None, None)


def test_every_older_writer_schema_is_kept():
    """A record of the golden writer schema decodes without the test registering it: the
    writer is among the schemas imbill ships (schemas/avro/ or schemas/avro/history/)."""
    for name in GOLDEN_SAMPLES:
        header = (GOLDEN / f"{name}.bin").read_bytes()[:10]
        assert header in _by_fingerprint(), name


def test_an_account_written_with_a_clear_password_is_read_as_its_ha1s():
    """AccountDefined before passwords were hashed: the fold never sees the password."""
    event = decode_event((GOLDEN / "AccountDefined.bin").read_bytes())
    account = event.object
    assert not hasattr(account, "service_password")
    assert (account.digest_realm, account.ha1_md5, account.ha1_sha256) == (
        "default", hashlib.md5(b"1001:default:s3cret").hexdigest(), hashlib.sha256(b"1001:default:s3cret").hexdigest())
    assert "s3cret" not in repr(event) and record_of(event)["service_password"] == ""


def test_unknown_writer_is_reported_by_fingerprint():
    data = MAGIC + b"\x01" * 8 + b"\x00"
    with pytest.raises(UnknownSchema, match="0101010101010101"):
        decode(data)


# -- encode_event writes converted logical values with the physical schema: the same bytes -------

EVENT_SAMPLES = sorted(name for name in SAMPLES if type(event_of(name, SAMPLES[name])).__name__ == name)


@pytest.mark.parametrize("name", EVENT_SAMPLES)
def test_an_event_encodes_to_the_bytes_of_its_record(name):
    event = event_of(name, SAMPLES[name])
    assert encode_event(event) == encode(name, record_of(event))


_moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                        timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)),
                                                   timezone(timedelta(hours=-8))]))
_amounts = st.decimals(min_value=-10**17, max_value=10**17, places=6, allow_nan=False, allow_infinity=False) | \
    st.sampled_from([Decimal("-0"), Decimal("-0.000"), Decimal("0.15"), Decimal("0.150"), Decimal("1E+3"),
                     Decimal("-128"), Decimal("127.999999"), Decimal("-0.000001")])


@given(delta=_amounts, balance=_amounts, moment=_moments)
def test_logical_values_encode_as_fastavro_writes_them(delta, balance, moment):
    """Twice each, as decimals are remembered by their text."""
    for _ in range(2):
        event = BalanceChanged("bal-1", "default", "1001", "charge", "chg-1", delta, balance, "USD", moment)
        assert encode_event(event) == encode("BalanceChanged", record_of(event))


_CHARGE_OPTIONAL = ("node", "cli_translated", "destination_description", "user_agent", "difference", "rerate_run",
                    "delivery", "delivery_code")
_SOME = {"node": "PortaSIP", "cli_translated": "+441632960001", "destination_description": "UK mobile",
         "user_agent": "Linphone/5.2", "difference": Decimal("-0.050000"), "rerate_run": "run-1",
         "delivery": "failed", "delivery_code": 480}


@given(present=st.lists(st.booleans(), min_size=len(_CHARGE_OPTIONAL), max_size=len(_CHARGE_OPTIONAL)))
def test_a_charge_with_any_of_its_optional_fields_null_encodes_as_fastavro_writes_it(present):
    """The trailing nulls are written as bytes 0 by PhysicalWriter: every mix of null and
    set among the Charge's optional fields, those at the end included."""
    values = {name: _SOME[name] if shown else None for name, shown in zip(_CHARGE_OPTIONAL, present)}
    event = event_of("Charge", {**SAMPLES["Charge"], **values})
    assert encode_event(event) == encode("Charge", record_of(event))
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize("field, value", [
    ("delta", Decimal("NaN")), ("delta", Decimal("1.0000001")), ("delta", Decimal("1" * 25)), ("delta", 1.5),
    ("occurred_at", "2026-01-15"), ("account", None), ("account", ("string", "1001")),
])
def test_a_value_fastavro_refuses_is_refused_with_its_words(field, value):
    event = event_of("BalanceChanged", {**SAMPLES["BalanceChanged"], field: value})
    with pytest.raises(SchemaError) as expected:
        encode("BalanceChanged", record_of(event))
    with pytest.raises(SchemaError) as got:
        encode_event(event)
    assert str(got.value) == str(expected.value)


# -- decode reads a record of today's schema with the physical schema: the same values ------------

def _fastavro_decoded(data: bytes) -> dict:
    """What fastavro itself reads, logical types and all (the reference of the physical reader)."""
    writer = _by_fingerprint()[bytes(data[:10])]
    return fastavro.schemaless_reader(io.BytesIO(data[10:]), writer.parsed, None)


def _typed(record: dict) -> dict:
    """Values with their types and time zones: Decimal('0.150') is not Decimal('0.15')."""
    return {name: (type(value), str(value), getattr(value, "tzinfo", None)) for name, value in record.items()}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_record_of_todays_schema_decodes_as_fastavro_reads_it(name):
    data = encode(name, SAMPLES[name])
    assert _typed(decode(data)[1]) == _typed(_fastavro_decoded(data))


@given(amount=_amounts, moment=_moments, difference=_amounts | st.none())
def test_logical_values_decode_as_fastavro_reads_them(amount, moment, difference):
    """Twice each, as decimals are remembered by their bytes."""
    charge = event_of("Charge", SAMPLES["Charge"])
    for _ in range(2):
        quantized = amount.quantize(Decimal("0.000001"))
        data = encode_event(dataclasses.replace(charge, amount=quantized, rated_at=moment, difference=difference))
        assert _typed(decode(data)[1]) == _typed(_fastavro_decoded(data))


def test_a_schema_with_a_logical_type_out_of_reach_has_no_physical_reader():
    raw = {"type": "record", "name": "X", "fields": [
        {"name": "at", "type": {"type": "array", "items": {"type": "long", "logicalType": "timestamp-millis"}}}]}
    assert PhysicalReader.of(raw) is None
    assert PhysicalReader.of({**raw, "fields": [{"name": "at", "type": {"type": "long",
                                                                        "logicalType": "timestamp-millis"}}]})


@pytest.mark.parametrize("name, leading", [("Charge", 2), ("Rejection", 2), ("MessageAttempt", 1)])
def test_every_writer_of_a_scanned_record_begins_with_its_id_strings(name, leading):
    """leading_strings reads a Charge's or Rejection's ids (an attempt's id) without decoding."""
    writers = [w for w in _by_fingerprint().values() if w.name == name]
    assert writers and all([f["type"] for f in w.raw["fields"][:leading]] == ["string"] * leading for w in writers)
    data = encode(name, SAMPLES[name])
    record = decode(data)[1]
    assert leading_strings(data, leading) == tuple(record[f["name"]] for f in schemas()[name].raw["fields"][:leading])
    assert writer_name(data) == name and writer_name(b"\x00" * 12) is None
    assert leading_strings(data[:12], leading) is None
