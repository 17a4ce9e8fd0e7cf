"""Why a message is not charged: one refusal type and the reason codes.

A refusal is not an exception: the processor turns it into a Rejection event with the
stable reason code, seen by ops and downstream systems alike.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, NamedTuple

__all__ = ["Refusal", "REASON_CODES", "CONFIG_REASON_CODES"]

REASON_CODES: Mapping[str, str] = MappingProxyType({
    "malformed_attempt": "The attempt event cannot be decoded or lacks a field rating needs.",
    "implausible_attempt": "The attempt cannot be real: a body length out of range, more text than a SIP datagram, "
                           "or dated in the future.",
    "unknown_environment": "The virtual environment has no instant messaging setup (no service types).",
    "service_disabled": "Messaging is not enabled in the environment (BillingEngine ServiceTypes).",
    "unknown_recipient": "An incoming message's recipient is no account or alias of the environment.",
    "unknown_account": "The sender is not an account of the environment.",
    "service_not_in_product": "The account's product does not include the Messaging service.",
    "no_usage_charge": "The product has no Messaging usage charge with a defined tariff.",
    "not_accounted": "The service policy has outgoing_aaa off: authentication only, no accounting.",
    "smpp_on_net": "The transport protocol is SMPP, which delivers off-net messages only.",
    "no_rate": "The customer tariff has no rate in force for the destination.",
    "undeliverable": "An off-net message while the service policy has external_routing off.",
    "no_route": "No vendor connection for Messaging has a rate for the destination.",
    "insufficient_funds": "The prepaid balance, or the postpaid credit limit, cannot cover the charge.",
    "service_suspended": "The account's messaging service is suspended (wallet empty) until a top-up.",
    "currency_mismatch": "The charge is in another currency than the account's balance.",
    "undelivered": "The SIP edge could not deliver the on-net message to the recipient's registered Contact (480 no "
                   "binding, 408 no answer, or the recipient's refusal): not charged unless IMBILL_CHARGE_UNDELIVERED.",
    "outside_dedup_window": "The attempt is dated more than 24 hours before the newest attempt billed to its "
                            "account: a first copy of it may be forgotten, so it is not charged (domain/dedup.py).",
})

CONFIG_REASON_CODES: Mapping[str, str] = MappingProxyType({
    "undecodable_config": "The record is no Avro event of ours (garbage, an unknown schema fingerprint, a corrupt body).",
    "not_config_event": "A decodable event that is no config event (a Payment on the config topic).",
    "invalid_config_object": "The event describes no valid object: a missing field, a wrong type, values config apply "
                             "refuses (impossible dialing rules, a service policy attribute the catalogue refuses, "
                             "an environment name with /).",
    "broken_reference": "The object refers to one that is not in force, or of the wrong sort (an account's product, "
                        "a usage charge's tariff, a rate's tariff or destination, a service policy).",
    "still_referenced": "The removal of an object another object in force still refers to (rates aside).",
    "domain_taken": "SIP settings listing a domain (sip_domains) that another environment serves already.",
})
"""Why a config record is not applied: the reason codes of ConfigEventRejected, and what
``imbill config history`` shows for it."""


class Refusal(NamedTuple):
    """A reason code of :data:`REASON_CODES`, words for a person, and the account the
    refusal is recorded against ("" until known)."""

    reason_code: str
    message: str
    account: str = ""

    def against(self, account: str) -> Refusal:
        """The same refusal, recorded against ``account``."""
        return self._replace(account=account)
