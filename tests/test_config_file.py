"""The config file: YAML -> the desired config objects of one environment, or a ConfigError
naming the file, the object and the field."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from imbill.domain.errors import ConfigError
from imbill.producers.config_file import EPOCH, ConfigFileError, load_config_file, parse_config
from imbill.domain.config import Account, Rate, ServicePolicy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE = EXAMPLES / "instant-messaging.yaml"

# Small files, each broken in one way, and the exact message. Reused by the broker test.
# Context most cases share: a vendor tariff A, a customer tariff B, the MSGN destination.
A = "{name: A, currency: USD, applied_to: vendor, rates: [{rate_code: '|', unit_price: '0'}]}"
B = "{name: B, currency: USD, applied_to: customer, rates: [{rate_code: '1', unit_price: '0.05'}]}"
PRODUCT = "{name: P, services: [messaging], usage_charges: [{service: messaging, tariff: B}]}"

INVALID_CASES = [
    # -- the file itself
    ("malformed yaml", "environment: e\ntariffs: [{name: A\n",
     "x.yaml: line 3, column 1: malformed YAML: expected ',' or '}', but got '<stream end>'"),
    ("bad indentation", "environment: e\n  tariffs: []\n",
     "x.yaml: line 2, column 10: malformed YAML: mapping values are not allowed here"),
    ("duplicate key", "environment: e\nenvironment: f\n",
     "x.yaml: line 2, column 1: malformed YAML: duplicate key 'environment'"),
    ("empty file", "", "x.yaml: expected a mapping with environment and the config sections, got an empty file"),
    ("not a mapping", "- environment: e\n",
     "x.yaml: expected a mapping with environment and the config sections, got a list"),
    ("no environment", "tariffs: []\n", "x.yaml: environment: required"),
    # -- unknown fields
    ("unknown section", "environment: e\ncolour: red\n",
     "x.yaml: colour: unknown field (allowed: environment, billing_engine, dialing_rules, destinations, "
     "service_policies, tariffs, vendors, products, customers, sip, sip_domains)"),
    ("unknown tariff field", "environment: e\ntariffs: [{name: A, currency: USD, applied_to: vendor, colour: red}]\n",
     'x.yaml: tariff "A": colour: unknown field (allowed: name, currency, service, applied_to, routing, '
     "managed_by, description, rates)"),
    ("unknown account field",
     f"environment: e\ntariffs: [{B}]\nproducts: [{PRODUCT}]\n"
     "customers: [{name: C, currency: USD, accounts: [{id: 1001, product: P, pin: 1234}]}]\n",
     'x.yaml: customer "C": account "1001": pin: unknown field (allowed: id, service_password, product, '
     "aliases, service_policy, balance_model, opening_balance, credit_limit, product_history)"),
    ("unknown service type", "environment: e\nbilling_engine: {service_types: {messaging: true, fax: true}}\n",
     "x.yaml: billing_engine: service_types: fax: unknown field (allowed: messaging, voice)"),
    # -- references
    ("unknown connection tariff",
     f"environment: e\ntariffs: [{A}]\nvendors: [{{name: V, connections: [{{description: C1, tariff: Z}}]}}]\n",
     'x.yaml: vendor "V": connection "C1": tariff: unknown tariff "Z" (defined: "A")'),
    ("unknown usage charge tariff",
     "environment: e\nproducts: [{name: P, services: [messaging], usage_charges: [{service: messaging, tariff: Z}]}]\n",
     'x.yaml: product "P": usage charge "messaging/PortaSIP": tariff: unknown tariff "Z" (defined: none)'),
    ("unknown product",
     f"environment: e\ntariffs: [{B}]\nproducts: [{PRODUCT}]\n"
     "customers: [{name: C, currency: USD, accounts: [{id: 1001, product: Gold}]}]\n",
     'x.yaml: customer "C": account "1001": product: unknown product "Gold" (defined: "P")'),
    ("unknown account policy",
     f"environment: e\ntariffs: [{B}]\nproducts: [{PRODUCT}]\n"
     "customers: [{name: C, currency: USD, accounts: [{id: 1001, product: P, service_policy: VIP}]}]\n",
     'x.yaml: customer "C": account "1001": service_policy: unknown service policy "VIP" (defined: none)'),
    ("unknown product policy",
     "environment: e\nproducts: [{name: P, services: [messaging], service_policy: Push}]\n",
     'x.yaml: product "P": service_policy: unknown service policy "Push" (defined: none)'),
    ("unknown connection policy",
     f"environment: e\ntariffs: [{A}]\n"
     "vendors: [{name: V, connections: [{description: C1, tariff: A, service_policy: SMPP}]}]\n",
     'x.yaml: vendor "V": connection "C1": service_policy: unknown service policy "SMPP" (defined: none)'),
    ("unknown destination",
     "environment: e\ntariffs: [{name: B, currency: USD, applied_to: customer, rates: [{rate_code: MSGN, unit_price: 1}]}]\n",
     'x.yaml: tariff "B": rate "MSGN": rate_code: unknown destination "MSGN" '
     "(a rate code is digits, | or a destination prefix)"),
    # -- duplicates
    ("duplicate tariff", f"environment: e\ntariffs: [{A}, {A}]\n", 'x.yaml: tariff "A": name: defined twice'),
    ("duplicate policy",
     "environment: e\nservice_policies: [{name: IM, service_type: messaging}, {name: IM, service_type: messaging}]\n",
     'x.yaml: service policy "IM": name: defined twice'),
    ("duplicate product", f"environment: e\ntariffs: [{B}]\nproducts: [{PRODUCT}, {PRODUCT}]\n",
     'x.yaml: product "P": name: defined twice'),
    ("duplicate customer",
     "environment: e\ncustomers: [{name: C, currency: USD}, {name: C, currency: USD}]\n",
     'x.yaml: customer "C": name: defined twice'),
    ("duplicate vendor", "environment: e\nvendors: [{name: V}, {name: V}]\n", 'x.yaml: vendor "V": name: defined twice'),
    ("duplicate destination", "environment: e\ndestinations: [{prefix: MSGN}, {prefix: MSGN}]\n",
     'x.yaml: destination "MSGN": prefix: defined twice'),
    ("duplicate connection",
     f"environment: e\ntariffs: [{A}]\n"
     "vendors: [{name: V, connections: [{description: C1, tariff: A}, {description: C1, tariff: A}]}]\n",
     'x.yaml: vendor "V": connection "C1": description: defined twice'),
    ("duplicate account",
     f"environment: e\ntariffs: [{B}]\nproducts: [{PRODUCT}]\n"
     "customers: [{name: C, currency: USD, accounts: [{id: 1001, product: P}]},\n"
     "            {name: D, currency: USD, accounts: [{id: 1001, product: P}]}]\n",
     'x.yaml: customer "D": account "1001": id: defined twice (also under customer "C")'),
    ("alias is an account",
     f"environment: e\ntariffs: [{B}]\nproducts: [{PRODUCT}]\n"
     "customers: [{name: C, currency: USD, accounts: [{id: 1001, product: P}, {id: 1002, product: P, aliases: [1001]}]}]\n",
     'x.yaml: customer "C": account "1002": aliases: "1001" is already account "1001"'),
    ("alias used twice",
     f"environment: e\ntariffs: [{B}]\nproducts: [{PRODUCT}]\n"
     "customers: [{name: C, currency: USD, accounts: [{id: 1001, product: P, aliases: [alice]},\n"
     "                                                {id: 1002, product: P, aliases: [alice]}]}]\n",
     'x.yaml: customer "C": account "1002": aliases: "alice" is already an alias of account "1001"'),
    ("duplicate rate",
     "environment: e\ntariffs: [{name: B, currency: USD, applied_to: customer, rates: [\n"
     "  {rate_code: '1', unit_price: '0.05', effective_from: 2026-01-01T00:00:00Z},\n"
     "  {rate_code: '1', unit_price: '0.06', effective_from: '2026-01-01T01:00:00+01:00'}]}]\n",
     'x.yaml: tariff "B": rate "1": effective_from: 2026-01-01T00:00:00+00:00 is defined twice for rate code 1'),
    # -- money
    ("negative price",
     "environment: e\ntariffs: [{name: B, currency: USD, applied_to: customer, rates: [{rate_code: '1', unit_price: -0.05}]}]\n",
     'x.yaml: tariff "B": rate "1": unit_price: must not be negative, got -0.05'),
    ("price too precise",
     "environment: e\ntariffs: [{name: B, currency: USD, applied_to: customer, rates: [{rate_code: '1', unit_price: 0.0000001}]}]\n",
     'x.yaml: tariff "B": rate "1": unit_price: has more than 6 decimals, got 1e-07'),
    ("price not a number",
     "environment: e\ntariffs: [{name: B, currency: USD, applied_to: customer, rates: [{rate_code: '1', unit_price: free}]}]\n",
     "x.yaml: tariff \"B\": rate \"1\": unit_price: must be an amount such as \"0.05\", got 'free'"),
    ("negative opening balance",
     f"environment: e\ntariffs: [{B}]\nproducts: [{PRODUCT}]\n"
     "customers: [{name: C, currency: USD, accounts: [{id: 1001, product: P, opening_balance: '-10'}]}]\n",
     'x.yaml: customer "C": account "1001": opening_balance: must not be negative, got -10'),
    ("negative credit limit",
     f"environment: e\ntariffs: [{B}]\nproducts: [{PRODUCT}]\n"
     "customers: [{name: C, currency: USD, accounts: [{id: 1001, product: P, credit_limit: -5}]}]\n",
     'x.yaml: customer "C": account "1001": credit_limit: must not be negative, got -5'),
    ("prepaid credit limit",
     f"environment: e\ntariffs: [{B}]\nproducts: [{PRODUCT}]\n"
     "customers: [{name: C, currency: USD, accounts: [{id: 1001, product: P, balance_model: prepaid, credit_limit: 5}]}]\n",
     'x.yaml: customer "C": account "1001": credit_limit: only a postpaid account has a credit limit'),
    # -- tariffs and who may use them
    ("routing on vendor messaging tariff",
     "environment: e\ntariffs: [{name: A, currency: USD, applied_to: vendor, routing: true}]\n",
     'x.yaml: tariff "A": routing: must be disabled for a vendor messaging tariff'),
    ("applied to reseller", "environment: e\ntariffs: [{name: A, currency: USD, applied_to: reseller}]\n",
     "x.yaml: tariff \"A\": applied_to: must be vendor or customer, got 'reseller'"),
    ("bad currency", "environment: e\ntariffs: [{name: A, currency: dollars, applied_to: vendor}]\n",
     "x.yaml: tariff \"A\": currency: must be a three-letter currency code such as USD, got 'dollars'"),
    ("usage charge with vendor tariff",
     f"environment: e\ntariffs: [{A}]\n"
     "products: [{name: P, services: [messaging], usage_charges: [{service: messaging, tariff: A}]}]\n",
     'x.yaml: product "P": usage charge "messaging/PortaSIP": tariff: "A" is a vendor tariff; '
     "a usage charge needs a customer tariff"),
    ("usage charge for a service not included",
     f"environment: e\ntariffs: [{B}]\n"
     "products: [{name: P, services: [voice], usage_charges: [{service: messaging, tariff: B}]}]\n",
     'x.yaml: product "P": usage charge "messaging/PortaSIP": service: messaging is not among the '
     "product's services (voice)"),
    ("connection with customer tariff",
     f"environment: e\ntariffs: [{B}]\nvendors: [{{name: V, connections: [{{description: C1, tariff: B}}]}}]\n",
     'x.yaml: vendor "V": connection "C1": tariff: "B" is a customer tariff; a connection needs a vendor tariff'),
    ("customer tariff in another currency",
     f"environment: e\ntariffs: [{B}]\nproducts: [{PRODUCT}]\n"
     "customers: [{name: C, currency: EUR, accounts: [{id: 1001, product: P}]}]\n",
     'x.yaml: customer "C": account "1001": product: "P" charges messaging with tariff "B" in USD, '
     "not in the customer's currency EUR"),
    # -- service policies
    ("unknown attribute",
     "environment: e\nservice_policies: [{name: IM, service_type: messaging, attributes: {msg: {colour: red}}}]\n",
     'x.yaml: service policy "IM": attributes: msg.colour is unknown; allowed: msg.billing_unit_size, '
     "msg.bind_as, msg.dest_addr_npi, msg.dest_addr_ton, msg.external_routing, msg.heartbeat_interval, "
     "msg.incoming_aaa, msg.local_lookup, msg.outgoing_aaa, msg.reconnect_interval, msg.registered_delivery, "
     "msg.reject_error_codes, msg.source_addr_npi, msg.source_addr_ton, msg.system_type, msg.transport_protocol, "
     "msg.userpart_e164_translation"),
    ("bad attribute value",
     "environment: e\nservice_policies: [{name: IM, service_type: messaging, attributes: {msg: {billing_unit_size: 0}}}]\n",
     'x.yaml: service policy "IM": attributes: msg.billing_unit_size = 0 is out of range; allowed: >= 1'),
    ("bad transport",
     "environment: e\nservice_policies: [{name: IM, service_type: messaging, attributes: {msg: {transport_protocol: XMPP}}}]\n",
     'x.yaml: service policy "IM": attributes: msg.transport_protocol = "XMPP" is not an allowed value; '
     "allowed: SIP, SMPP"),
    ("connection attribute on a domain policy",
     "environment: e\nservice_policies: [{name: IM, service_type: messaging, recipient_domain_pattern: '%',\n"
     "                    attributes: {msg: {bind_as: transceiver}}}]\n",
     'x.yaml: service policy "IM": attributes: msg.bind_as does not apply to domain_policy; allowed: connection'),
    ("domain attribute on a connection policy",
     f"environment: e\ntariffs: [{A}]\n"
     "service_policies: [{name: SMPP, service_type: messaging, attributes: {msg: {billing_unit_size: 160}}}]\n"
     "vendors: [{name: V, connections: [{description: C1, tariff: A, service_policy: SMPP}]}]\n",
     'x.yaml: service policy "SMPP": attributes: msg.billing_unit_size does not apply to connection; '
     "allowed: domain_policy"),
    ("domain attribute on a product policy",
     "environment: e\nservice_policies: [{name: Push, service_type: messaging, attributes: {msg: {local_lookup: yes}}}]\n"
     "products: [{name: P, services: [messaging], service_policy: Push}]\n",
     'x.yaml: service policy "Push": attributes: msg.local_lookup does not apply to product; allowed: domain_policy'),
    ("connection attribute on a dynamic voice policy",
     "environment: e\nservice_policies: [{name: Phones, service_type: voice, sip_endpoint_pattern: 'Linksys%',\n"
     "                    attributes: {sip: {hunt_stop_codes: [486]}}}]\n",
     'x.yaml: service policy "Phones": attributes: sip.hunt_stop_codes does not apply to called_party, '
     "calling_party, dynamic_policy; allowed: connection"),
    ("voice pattern on a messaging policy",
     "environment: e\nservice_policies: [{name: IM, service_type: messaging, sip_endpoint_pattern: 'Linksys%'}]\n",
     'x.yaml: service policy "IM": sip_endpoint_pattern: a messaging policy is matched by recipient_domain_pattern'),
    ("voice policy on a messaging connection",
     f"environment: e\ntariffs: [{A}]\nservice_policies: [{{name: Phones, service_type: voice}}]\n"
     "vendors: [{name: V, connections: [{description: C1, tariff: A, service_policy: Phones}]}]\n",
     'x.yaml: vendor "V": connection "C1": service_policy: "Phones" is a voice policy, not a messaging one'),
    ("bad service type", "environment: e\nservice_policies: [{name: IM, service_type: fax}]\n",
     "x.yaml: service policy \"IM\": service_type: must be messaging or voice, got 'fax'"),
    # -- dialing rules
    ("unassigned country code", "environment: e\ndialing_rules: {country_code: '999'}\n",
     "x.yaml: dialing_rules: country_code: must be an assigned country code, got '999'"),
    ("unquoted prefix", "environment: e\ndialing_rules: {country_code: 1, international_prefix: 011}\n",
     "x.yaml: dialing_rules: international_prefix: must be str, got 9 (quote it: YAML reads 011 as the number 9)"),
    ("min over max", "environment: e\ndialing_rules: {country_code: '44', min_length: 12, max_length: 11}\n",
     "x.yaml: dialing_rules: min_length: 12 is greater than max_length 11"),
    ("unknown dialing rules field", "environment: e\ndialing_rules: {country_code: '44', trunk: '0'}\n",
     "x.yaml: dialing_rules: trunk: unknown field (allowed: country_code, international_prefix, national_prefix, "
     "area_code, min_length, max_length)"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES])
def test_an_invalid_file_is_refused_naming_file_object_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="x.yaml")
    assert str(caught.value) == message


def test_every_problem_is_reported_one_per_line() -> None:
    text = ("environment: e\ntariffs: [{name: A, currency: USD, applied_to: vendor, routing: true},\n"
            "          {name: A, currency: USD, applied_to: vendor}]\n")
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, source="x.yaml")
    assert caught.value.problems == ['x.yaml: tariff "A": name: defined twice',
                                     'x.yaml: tariff "A": routing: must be disabled for a vendor messaging tariff']


def test_the_error_names_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("environment: e\ncolour: red\n")
    with pytest.raises(ConfigError, match=rf"^{path}: colour: unknown field"):
        load_config_file(path)
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'missing.yaml'}: cannot read"):
        load_config_file(tmp_path / "missing.yaml")


def test_the_example_follows_the_checklist() -> None:
    desired = load_config_file(EXAMPLES / "instant-messaging.yaml")
    config = desired.config
    assert desired.environment == "default" and config.messaging_enabled
    assert "MSGN" in config.destinations
    policy = config.service_policies["Instant messaging"]
    assert (policy.service_type, policy.pattern, policy.match_priority) == ("messaging", "%", 5)
    assert {k: policy.attributes[k] for k in ("msg.transport_protocol", "msg.outgoing_aaa", "msg.local_lookup",
                                              "msg.userpart_e164_translation", "msg.billing_unit_size")} == {
        "msg.transport_protocol": "SIP", "msg.outgoing_aaa": True, "msg.local_lookup": True,
        "msg.userpart_e164_translation": True, "msg.billing_unit_size": 60}
    tariff_a = config.tariffs["Instant messaging (vendor)"]
    assert (tariff_a.applied_to, tariff_a.service, tariff_a.routing) == ("vendor", "messaging", False)
    assert config.rates[f"Instant messaging (vendor)|||{EPOCH.isoformat()}"].unit_price == 0
    connection = config.vendor_connections["Internal vendor/Internal messaging via SIP"]
    assert (connection.tariff, connection.internal, connection.use_for) == ("Instant messaging (vendor)", True, "SIP-UA")
    assert config.vendors["Internal vendor"].internal
    msgn = [r for r in config.rates.values() if r.tariff == "On-net messaging" and r.rate_code == "MSGN"]
    assert [r.unit_price for r in msgn] == [Decimal("0.05")]
    assert config.tariffs["On-net messaging"].currency == "USD"
    product = config.products["Messaging"]
    assert set(product.services) == {"voice", "messaging"}
    assert [(u.service, u.node, u.tariff) for u in product.usage_charges] == [("messaging", "PortaSIP", "On-net messaging")]
    assert {a.balance_model for a in config.accounts.values()} == {"prepaid", "postpaid"}
    assert all(a.aliases for a in config.accounts.values())
    assert desired.policy_usages == {"Instant messaging": frozenset({"domain_policy"})}


def test_the_second_environment_loads() -> None:
    desired = load_config_file(EXAMPLES / "second-environment.yaml")
    assert desired.environment != "default"
    assert {t.currency for t in desired.config.tariffs.values()} == {"EUR"}


def test_values_are_normalised() -> None:
    desired = parse_config(
        "environment: e\n"
        "destinations: [{prefix: MSGN}]\n"
        "tariffs: [{name: B, currency: USD, applied_to: customer, rates: [\n"
        "  {rate_code: MSGN, unit_price: 0.05},\n"
        "  {rate_code: 44, unit_price: 1, effective_from: 2026-03-01},\n"
        "  {rate_code: 1, unit_price: '0.100', effective_from: '2026-03-01T12:00:00+02:00'}]}]\n"
        "products: [{name: P, services: [messaging], usage_charges: [{service: messaging, tariff: B}]}]\n"
        "customers: [{name: C, currency: USD, accounts: [{id: 1001, product: P, aliases: [12125550101]}]}]\n",
        source="x.yaml")
    rates = {r.rate_code: r for r in desired.config.rates.values()}
    assert rates["MSGN"] == Rate("B", "MSGN", Decimal("0.05"), EPOCH)
    assert isinstance(rates["MSGN"].unit_price, Decimal)
    assert rates["44"].effective_from == datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert rates["1"].effective_from == datetime(2026, 3, 1, 10, tzinfo=timezone.utc)
    assert rates["1"].unit_price == Decimal("0.1")
    assert desired.config.accounts["1001"] == Account("1001", "C", "P", aliases=("12125550101",))


def test_policy_usages_follow_where_a_policy_is_used() -> None:
    desired = parse_config(
        "environment: e\n"
        "tariffs: [{name: A, currency: USD, applied_to: vendor}, {name: B, currency: USD, applied_to: customer}]\n"
        "service_policies:\n"
        "  - {name: Static, service_type: messaging, attributes: {msg: {outgoing_aaa: no}}}\n"
        "  - {name: SMPP, service_type: messaging, attributes: {msg: {bind_as: transmitter, heartbeat_interval: 30}}}\n"
        "  - {name: Push, service_type: messaging, attributes: {audiocodes.cmms: {push_events: yes}}}\n"
        "  - {name: Phones, service_type: voice, sip_endpoint_pattern: 'Linksys%, Cisco%',\n"
        "     attributes: {sip: {keep_alive_interval: 60}}}\n"
        "  - {name: Spare, service_type: messaging, attributes: {msg: {bind_as: receiver}}}\n"
        "vendors: [{name: V, connections: [{description: SMSC, tariff: A, service_policy: SMPP}]}]\n"
        "products: [{name: P, services: [messaging], usage_charges: [{service: messaging, tariff: B}],\n"
        "            service_policy: Push}]\n"
        "customers: [{name: C, currency: USD, accounts: [{id: 1001, product: P, service_policy: Static},\n"
        "                                                {id: 1002, product: P, service_policy: Phones}]}]\n",
        source="x.yaml")
    assert desired.policy_usages == {
        "Static": frozenset({"domain_policy"}), "SMPP": frozenset({"connection"}), "Push": frozenset({"product"}),
        "Phones": frozenset({"dynamic_policy", "calling_party", "called_party"}), "Spare": frozenset()}
    assert desired.config.service_policies["SMPP"] == ServicePolicy(
        "SMPP", "messaging", attributes={"msg.bind_as": "transmitter", "msg.heartbeat_interval": 30})
    assert desired.config.service_policies["Phones"].pattern == "Linksys%, Cisco%"


def test_a_missing_section_is_empty_and_lists_may_be_left_blank() -> None:
    desired = parse_config("environment: e\ntariffs:\ncustomers:\n  - name: C\n    currency: USD\n    accounts:\n")
    assert list(desired.config.objects()) == [desired.config.customers["C"]]
    assert not desired.config.messaging_enabled


@pytest.mark.parametrize(("field", "where"), [("unit_price", "rates"), ("opening_balance", "accounts"),
                                              ("credit_limit", "accounts")])
def test_amounts_past_their_documented_limit_are_refused(field, where, tmp_path) -> None:
    """Every amount has a maximum (domain.money) so no arithmetic on it can leave the events'
    decimal(24, 6): a unit price of at most 1,000,000, balances and credit of 1,000,000,000."""
    text = (EXAMPLE.read_text().replace('unit_price: "0.05"', 'unit_price: "2000000"')
            if field == "unit_price" else EXAMPLE.read_text().replace('opening_balance: "10.00"',
                                                                     'opening_balance: "1e15"')
            .replace('credit_limit: "50.00"', 'credit_limit: "1e15"'))
    path = tmp_path / "big.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"big.yaml: .*{field}: is over the limit"):
        load_config_file(path)
