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
* The Kafka key is the sending account, "environment/from_user" (`attempt_key`),
  so one account's attempts stay in order on one partition.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sipmessage import MediaType

from imbill.producers.sip import SipRequest

__all__ = ["DIRECTIONS", "attempt_from_request", "attempt_id_for", "attempt_key", "body_chars"]

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


def attempt_from_request(
    request: SipRequest,
    *,
    environment: str,
    received_at: datetime,
    source_ip: str,
    source_port: int,
    transport: str = "UDP",
    edge_id: str,
    direction: str = "outgoing",
) -> dict[str, Any]:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    return {
        "attempt_id": attempt_id_for(request.call_id, request.cseq, request.cseq_method),
        "received_at": _utc(received_at),
        "environment": environment,
        "direction": direction,
        "call_id": request.call_id,
        "cseq": request.cseq,
        "from_user": request.from_user,
        "from_domain": request.from_domain,
        "to_user": request.to_user,
        "to_domain": request.to_domain,
        "request_uri": request.request_uri,
        "user_agent": request.user_agent,
        "content_type": request.content_type,
        "body_chars": body_chars(request.body, request.content_type),
        "body_bytes": len(request.body),
        "source_ip": source_ip,
        "source_port": int(source_port),
        "transport": transport,
        "edge_id": edge_id,
    }


def attempt_key(attempt: Mapping[str, Any]) -> bytes:
    """The Kafka key: the sending account within its environment."""
    return f"{attempt['environment']}/{attempt['from_user']}".encode()


@lru_cache(maxsize=256)
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
