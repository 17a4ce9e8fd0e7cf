"""The MessageAttempt event payload, made from an accepted SIP MESSAGE.

* `attempt_id` is the first 32 hex digits of SHA-256 over "Call-ID\\nCSeq\\nmethod":
  a retransmission (same Call-ID and CSeq) is the same attempt, so downstream
  deduplication holds even when the edge's transaction cache has forgotten it.
* `body_chars` counts Unicode code points of the body decoded with the charset
  parameter of Content-Type (UTF-8 when there is none, or when Python does not
  know it as a text encoding). Octets that do not decode are replaced by U+FFFD,
  each invalid sequence counting as one character; the whole body is decoded,
  multipart or not. `body_bytes` is the octet count (the Content-Length).
* `received_at` is a timezone-aware UTC datetime: a naive one is refused.
* The Kafka key is the sending account, ``domain.keys.account_key`` (`attempt_key`),
  so one account's attempts stay in order on one partition.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sipmessage import MediaType

from imbill.domain.events import MessageAttempt
from imbill.domain.keys import account_key
from imbill.producers.sip import SipRequest
from imbill.producers.sip_grammar import memo_of_short

__all__ = ["DIRECTIONS", "attempt_from_request", "synthetic_attempt", "new_attempt", "attempt_id_for", "attempt_key",
           "body_chars"]

DIRECTIONS = ("outgoing", "incoming")
DEFAULT_CHARSET = "utf-8"


def attempt_id_for(call_id: str, cseq: int, cseq_method: str) -> str:
    identity = f"{call_id}\n{cseq}\n{cseq_method}".encode()
    return hashlib.sha256(identity).hexdigest()[:32]


def body_chars(body: bytes, content_type: str | None) -> int:
    """Unicode code points of the body decoded with its charset (see the module doc)."""
    charset = _charset(content_type)
    try:
        return len(body.decode(charset, errors="replace"))
    except LookupError:  # unknown, or not a text encoding (e.g. "base64")
        return len(body.decode(DEFAULT_CHARSET, errors="replace"))


def attempt_from_request(request: SipRequest, *, environment: str, received_at: datetime, source_ip: str,
                         source_port: int, transport: str = "UDP", edge_id: str,
                         direction: str = "outgoing") -> MessageAttempt:
    """The attempt of an accepted SIP MESSAGE (once per MESSAGE: its fields go to
    :func:`_attempt` in order, not by name through :func:`new_attempt`)."""
    body, content_type = request.body, request.content_type
    return _attempt(
        request.call_id, request.cseq, request.cseq_method, received_at, environment, direction,
        request.from_user, request.from_domain, request.to_user, request.to_domain, request.request_uri,
        request.user_agent, content_type, body_chars(body, content_type), len(body), source_ip, source_port,
        transport, edge_id)


def synthetic_attempt(environment: str, sender: str, to_user: str, *, body_chars: int, call_id: str,
                      received_at: datetime | None = None, domain: str = "127.0.0.1") -> MessageAttempt:
    """An outgoing attempt as the edge would publish it, made up (the traffic generator, and
    ``policy explain``'s "a message sent now")."""
    return new_attempt(
        call_id=call_id, cseq=1, cseq_method="MESSAGE", environment=environment, direction="outgoing",
        from_user=sender, from_domain=domain, to_user=to_user, to_domain=domain,
        request_uri=f"sip:{to_user}@{domain}", user_agent="imbill-traffic", content_type="text/plain",
        body_chars=body_chars, body_bytes=body_chars, source_ip="127.0.0.1", source_port=5070, transport="UDP",
        edge_id="traffic", received_at=received_at or datetime.now(UTC))


def new_attempt(*, call_id: str, cseq: int, cseq_method: str, environment: str, direction: str, from_user: str,
                from_domain: str, to_user: str, to_domain: str, request_uri: str, user_agent: str | None,
                content_type: str | None, body_chars: int, body_bytes: int, source_ip: str, source_port: int,
                transport: str, edge_id: str, received_at: datetime) -> MessageAttempt:
    """The one place an attempt is made: its stable id from Call-ID and CSeq, UTC time."""
    return _attempt(call_id, cseq, cseq_method, received_at, environment, direction, from_user, from_domain, to_user,
                    to_domain, request_uri, user_agent, content_type, body_chars, body_bytes, source_ip, source_port,
                    transport, edge_id)


def _attempt(call_id: str, cseq: int, cseq_method: str, received_at: datetime, environment: str, direction: str,
             from_user: str, from_domain: str, to_user: str, to_domain: str, request_uri: str,
             user_agent: str | None, content_type: str | None, body_chars: int, body_bytes: int, source_ip: str,
             source_port: int, transport: str, edge_id: str) -> MessageAttempt:
    """:func:`new_attempt` by position: the MessageAttempt's fields in its order, after the
    three its id is made of (the edge makes one per MESSAGE: no names to match twice)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    return MessageAttempt(
        attempt_id_for(call_id, cseq, cseq_method), _utc(received_at), environment, direction, call_id, cseq,
        from_user, from_domain, to_user, to_domain, request_uri, user_agent, content_type, body_chars, body_bytes,
        source_ip, int(source_port), transport, edge_id)


def attempt_key(attempt: MessageAttempt) -> bytes:
    """The Kafka key: the sending account within its environment."""
    return account_key(attempt.environment, attempt.from_user)


@memo_of_short(256)
def _charset(content_type: str | None) -> str:
    if not content_type:
        return DEFAULT_CHARSET
    try:
        parameters = MediaType.parse(content_type).parameters
    except ValueError:
        return DEFAULT_CHARSET
    charset = next((v for k, v in parameters.items() if k.lower() == "charset"), None)
    return (charset or "").strip('"') or DEFAULT_CHARSET


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware")
    return moment.astimezone(UTC)
