"""`imbill config apply` against the real local broker: the example is appended once, applying it
again appends nothing, an invalid file appends nothing, environments live side by side."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from imbill.bus import EventProducer, read_to_end
from imbill.domain.errors import ConfigError
from imbill.producers.config_file import load_config_file
from imbill.presentation import config_rows as describe
from imbill.producers.config_publisher import apply_config, config_history, current_state
from imbill.schemas.topics import Topics

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE = EXAMPLES / "instant-messaging.yaml"
SECOND = EXAMPLES / "second-environment.yaml"


def _invalid_cases() -> list[tuple[str, str, str]]:
    spec = importlib.util.spec_from_file_location("config_file_cases", Path(__file__).with_name("test_config_file.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.INVALID_CASES


def topic_size(bootstrap: str, topics: Topics) -> int:
    return sum(1 for _ in read_to_end(bootstrap, topics.config))


def apply(path: Path, bootstrap: str, topics: Topics):
    return apply_config(path, bootstrap_servers=bootstrap, topics=topics)


def objects_of(path: Path) -> int:
    return len(list(load_config_file(path).config.objects()))


def write(tmp_path: Path, data: dict, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_example_is_appended_once(bootstrap: str, topics: Topics) -> None:
    first = apply(EXAMPLE, bootstrap, topics)
    expected = objects_of(EXAMPLE)
    assert first.environment == "default"
    assert len(first.events) == expected == topic_size(bootstrap, topics)
    assert first.events[0] == ("ServiceTypesSet", "service_types")
    assert ("AccountDefined", "account:1001") in first.events

    again = apply(EXAMPLE, bootstrap, topics)
    assert again.events == ()
    assert topic_size(bootstrap, topics) == expected

    desired = load_config_file(EXAMPLE).config
    in_force = current_state(bootstrap, topics).environment("default")
    assert list(in_force.objects()) == list(desired.objects())
    history = config_history(bootstrap, topics)
    assert [(h.offset, h.event, h.key) for h in history] == [(i, n, k) for i, (n, k) in enumerate(first.events)]


def test_an_invalid_file_appends_nothing(bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    apply(EXAMPLE, bootstrap, topics)
    size = topic_size(bootstrap, topics)
    path = tmp_path / "x.yaml"
    for case, text, message in _invalid_cases():
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            apply(path, bootstrap, topics)
        assert str(caught.value) == message.replace("x.yaml", str(path)), case
    assert topic_size(bootstrap, topics) == size


def test_a_tariff_currency_change_appends_nothing(bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    apply(EXAMPLE, bootstrap, topics)
    size = topic_size(bootstrap, topics)
    data = yaml.safe_load(EXAMPLE.read_text())
    next(t for t in data["tariffs"] if t["name"] == "Instant messaging (vendor)")["currency"] = "EUR"
    data["customers"][0]["accounts"].pop()  # a valid change in the same file is not appended either
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        apply(path, bootstrap, topics)
    assert str(caught.value) == (f'{path}: tariff "Instant messaging (vendor)": currency: cannot change from USD '
                                 "to EUR (a tariff's currency is set once)")
    assert topic_size(bootstrap, topics) == size


def test_a_removed_tariff_cannot_come_back_in_another_currency(bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["tariffs"].append({"name": "Spare", "currency": "USD", "applied_to": "vendor"})
    apply(write(tmp_path, data), bootstrap, topics)
    data["tariffs"].pop()
    removed = apply(write(tmp_path, data), bootstrap, topics)
    assert removed.events == (("ConfigObjectRemoved", "tariff:Spare"),)
    size = topic_size(bootstrap, topics)
    data["tariffs"].append({"name": "Spare", "currency": "GBP", "applied_to": "vendor"})
    with pytest.raises(ConfigError, match='tariff "Spare": currency: cannot change from USD to GBP'):
        apply(write(tmp_path, data), bootstrap, topics)
    assert topic_size(bootstrap, topics) == size


def test_changes_append_only_what_changed(bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    apply(EXAMPLE, bootstrap, topics)
    data = yaml.safe_load(EXAMPLE.read_text())
    data["customers"][0]["accounts"] = data["customers"][0]["accounts"][:1]
    msgn = next(r for t in data["tariffs"] for r in t["rates"] if r["rate_code"] == "MSGN")
    msgn["unit_price"] = "0.06"
    result = apply(write(tmp_path, data), bootstrap, topics)
    assert [name for name, _ in result.events] == ["RateDefined", "ConfigObjectRemoved"]
    in_force = current_state(bootstrap, topics).environment("default")
    assert "1002" not in in_force.accounts
    assert [str(r.unit_price) for r in in_force.rates.values() if r.rate_code == "MSGN"] == ["0.060000"]
    assert apply(write(tmp_path, data), bootstrap, topics).events == ()


def test_two_environments_side_by_side(bootstrap: str, topics: Topics) -> None:
    default = apply(EXAMPLE, bootstrap, topics)
    europe = apply(SECOND, bootstrap, topics)
    assert europe.environment == "europe" and len(europe.events) == objects_of(SECOND)
    assert apply(EXAMPLE, bootstrap, topics).events == ()
    assert apply(SECOND, bootstrap, topics).events == ()
    assert topic_size(bootstrap, topics) == len(default.events) + len(europe.events)

    state = current_state(bootstrap, topics)
    assert set(state.environments) == {"default", "europe"}
    assert state.environment("default").tariffs["On-net messaging"].currency == "USD"
    assert state.environment("europe").tariffs["On-net messaging"].currency == "EUR"
    assert [h.key for h in config_history(bootstrap, topics, "europe")] == [k for _, k in europe.events]
    assert {row[0] for table in describe(state) for row in table.rows} == {"default", "europe"}


def test_an_undecodable_config_record_is_skipped_by_every_reader_and_shown_in_history(bootstrap, topics):
    """No record on the config topic can make a command unusable: it is skipped, with the
    reason, by the CLI's fold as by the processor's, and the config in force is unchanged."""
    apply_config(EXAMPLE, bootstrap_servers=bootstrap, topics=topics)
    before = current_state(bootstrap, topics)
    producer = EventProducer(bootstrap)
    producer._producer.send(topics.config, key=b"default", value=b"\x00garbage").get(10)
    producer.close()
    assert current_state(bootstrap, topics) == before
    assert apply_config(EXAMPLE, bootstrap_servers=bootstrap, topics=topics).events == ()
    history = config_history(bootstrap, topics, "default")
    assert history[-1].event == "(undecodable)" and "C3 01" in history[-1].key


def test_config_apply_is_all_or_nothing_and_names_the_object(bootstrap, topics, tmp_path):
    """A 2 MB description would have appended the events before it and then failed: now the
    whole plan is refused before the first event, naming the object."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config["customers"][0]["description"] = "x" * 2_000_000
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"big.yaml: customer:Example Corp: the CustomerDefined event would be .* bytes, over the broker's"):
        apply_config(path, bootstrap_servers=bootstrap, topics=topics)
    assert list(read_to_end(bootstrap, topics.config)) == []


def test_a_match_priority_past_the_avro_int_is_refused_with_file_object_and_field(tmp_path):
    config = yaml.safe_load(EXAMPLE.read_text())
    config["service_policies"][0]["match_priority"] = 2**70
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"huge.yaml: service policy .*match_priority"):
        load_config_file(path)


def test_a_hostile_config_record_is_refused_by_every_reader_and_history_says_why(bootstrap, topics):
    apply_config(EXAMPLE, bootstrap_servers=bootstrap, topics=topics)
    before = current_state(bootstrap, topics)
    hostile = {"event_id": "evil", "environment": "default", "occurred_at": before.last_event_at,
               "name": "Instant messaging", "service_type": "messaging", "description": "", "pattern": "%",
               "match_priority": 5, "attributes": {"msg.billing_unit_size": "sixty"}}
    producer = EventProducer(bootstrap)
    producer.publish(topics.config, "default", "ServicePolicyDefined", hostile)
    producer.close()
    assert current_state(bootstrap, topics) == before
    last = config_history(bootstrap, topics, "default")[-1]
    assert last.event == "(refused ServicePolicyDefined)" and "billing_unit_size" in last.key
