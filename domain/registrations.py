"""The registrar's rules (RFC 3261 section 10.3) over values: the bindings of one account
and one REGISTER in, the RegistrationChanged events it causes (or why it fails) out.

A binding is an account's Contact (a SIP URI where its client receives requests) until
``expires_at``. The events are the truth: :class:`Bindings` is their fold, the same at the
SIP edge (which rebuilds it from the registrations topic when it starts) and wherever
else bindings are wanted. Time is an argument, never read here.

    Contact: <uri>;expires=N, ...      -> bound (new contact) or refreshed (known contact)
    Contact: <uri>;expires=0           -> removed
    Contact: * with Expires: 0         -> every binding of the account removed
    Contact: * otherwise, or with URIs -> 400
    0 < expiry < the minimum           -> 423 Interval Too Brief (Min-Expires: the minimum)
    expiry above the maximum           -> the maximum
    a known contact, same Call-ID, a
    CSeq not above the binding's       -> 400 (the update is aborted: an old request re-ordered)
    more contacts than MAX_BINDINGS    -> 403 (the oldest are not pushed out by a stranger's
                                          request: only the account itself can register)

An expiry is the contact's ``expires`` parameter, else the ``Expires`` header, else the
default (the maximum). Contacts are compared by :func:`contact_key` (scheme and host case
folded, URI parameters kept), a simplification of RFC 3261 19.1.4.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from imbill.domain.events import RegistrationChanged

__all__ = ["BOUND", "REFRESHED", "REMOVED", "EXPIRED", "STATES", "MAX_BINDINGS", "RegisterLimits", "Contact",
           "Register", "RegisterRefused", "Binding", "Bindings", "register", "expired", "contact_key",
           "registration_event_id"]

BOUND, REFRESHED, REMOVED, EXPIRED = "bound", "refreshed", "removed", "expired"
STATES = (BOUND, REFRESHED, REMOVED, EXPIRED)
MAX_BINDINGS = 10
"""Contacts one account may have at once: a bound on the edge's memory per account."""


@dataclass(frozen=True, slots=True)
class RegisterLimits:
    """The registrar's bounds on an expiry, in seconds (settings IMBILL_EDGE_REGISTER_*)."""

    min_expires: int = 60
    max_expires: int = 3600

    def __post_init__(self) -> None:
        if not 1 <= self.min_expires <= self.max_expires <= 86_400 * 7:
            raise ValueError(f"register expiry bounds: need 1 <= minimum <= maximum <= 604800, not "
                             f"{self.min_expires} and {self.max_expires}")


@dataclass(frozen=True, slots=True)
class Contact:
    """One Contact of a REGISTER: its URI and its ``expires`` parameter (None: none given)."""

    uri: str
    expires: int | None = None


@dataclass(frozen=True, slots=True)
class Register:
    """What a REGISTER asks, as the registrar reads it (SIP parsing is the edge's)."""

    environment: str
    account: str
    contacts: tuple[Contact, ...]
    wildcard: bool
    """``Contact: *``: remove every binding (valid only alone, with ``Expires: 0``)."""
    expires: int | None
    """The Expires header (None: none)."""
    call_id: str
    cseq: int
    user_agent: str | None
    source: str
    """host:port the REGISTER came from."""
    transport: str


@dataclass(frozen=True, slots=True)
class RegisterRefused:
    """Why a REGISTER changes nothing: the SIP status and words for the Warning."""

    status: int
    reason: str
    min_expires: int | None = None


@dataclass(frozen=True, slots=True)
class Binding:
    """A live binding, as the events say it."""

    contact: str
    expires_at: datetime
    user_agent: str | None
    source: str
    transport: str
    call_id: str
    cseq: int
    changed_at: datetime
    """When it was bound or last refreshed: the newest binding is delivered to first."""

    def remaining(self, now: datetime) -> int:
        """Seconds until it expires, rounded up (0 when it has)."""
        return max(0, math.ceil((self.expires_at - now).total_seconds()))


def contact_key(uri: str) -> str:
    """A Contact URI for comparison: scheme and host part case-folded, the user part as is."""
    scheme, _, rest = uri.partition(":")
    user, at, host = rest.rpartition("@")
    return f"{scheme.lower()}:{user}{at}{host.lower()}"


def registration_event_id(environment: str, account: str, contact: str, state: str, call_id: str,
                          cseq: int) -> str:
    """Stable: the same REGISTER (Call-ID and CSeq) makes the same ids, and the expiry of a
    binding (the Call-ID and CSeq that last set it) the same id at every edge."""
    identity = "\n".join((environment, account, contact_key(contact), state, call_id, str(cseq)))
    return "reg-" + hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class Bindings:
    """Every live binding of one edge's environments, by account: the fold of the
    RegistrationChanged events (``apply`` them in topic order per account)."""

    def __init__(self) -> None:
        self._accounts: dict[tuple[str, str], dict[str, Binding]] = {}

    def __len__(self) -> int:
        return sum(map(len, self._accounts.values()))

    def __bool__(self) -> bool:
        """Whether any account has a binding (at once: the edge asks for every MESSAGE)."""
        return bool(self._accounts)

    def apply(self, event: RegistrationChanged) -> None:
        key = (event.environment, event.account)
        contacts = self._accounts.setdefault(key, {})
        if event.state in (BOUND, REFRESHED):
            contacts[contact_key(event.contact)] = _binding_of(event)
        else:
            contacts.pop(contact_key(event.contact), None)
        if not contacts:
            del self._accounts[key]

    def of(self, environment: str, account: str, now: datetime) -> tuple[Binding, ...]:
        """The account's live bindings at ``now``, the most recently registered first."""
        contacts = self._accounts.get((environment, account), {})
        return tuple(sorted((b for b in contacts.values() if b.expires_at > now),
                            key=lambda b: b.changed_at, reverse=True))

    def lapsed(self, now: datetime) -> list[tuple[str, str, Binding]]:
        """(environment, account, binding) of every binding expired at ``now``."""
        return [(env, account, binding) for (env, account), contacts in self._accounts.items()
                for binding in contacts.values() if binding.expires_at <= now]


def register(bindings: Iterable[Binding], request: Register, now: datetime,
             limits: RegisterLimits = RegisterLimits()) -> tuple[RegistrationChanged, ...] | RegisterRefused:
    """The events of one authenticated REGISTER for ``request.account``, whose live bindings
    are ``bindings`` (RFC 3261 10.3 steps 6 to 8); a query (no Contact) causes none."""
    current = {contact_key(b.contact): b for b in bindings}
    if request.wildcard:
        if request.contacts or request.expires != 0:
            return RegisterRefused(400, "Contact: * needs Expires: 0 and no other Contact")
        return tuple(_event(request, b.contact, REMOVED, now, now) for b in current.values()
                     if _newer(b, request))
    asked = [(contact, _expiry(contact, request.expires, limits)) for contact in request.contacts]
    brief = [seconds for _, seconds in asked if 0 < seconds < limits.min_expires]
    if brief:
        return RegisterRefused(423, f"an expiry of {min(brief)} s is under the minimum {limits.min_expires} s",
                               limits.min_expires)
    events = []
    for contact, seconds in asked:
        known = current.get(contact_key(contact.uri))
        if known is not None and not _newer(known, request):
            return RegisterRefused(400, f"CSeq {request.cseq} is not above {known.cseq}, the binding's of "
                                        f"{contact.uri} for this Call-ID")
        if seconds == 0:
            if known is not None:
                events.append(_event(request, known.contact, REMOVED, now, now))
            continue
        state = REFRESHED if known is not None else BOUND
        events.append(_event(request, contact.uri, state, now, now + timedelta(seconds=seconds)))
    if len(_after(current, events)) > MAX_BINDINGS:
        return RegisterRefused(403, f"more than {MAX_BINDINGS} contacts for account {request.account}")
    return tuple(events)


def expired(environment: str, account: str, binding: Binding, now: datetime) -> RegistrationChanged:
    """The event of a binding that lapsed without a refresh."""
    return RegistrationChanged(
        registration_event_id(environment, account, binding.contact, EXPIRED, binding.call_id, binding.cseq),
        environment, account, binding.contact, binding.expires_at, binding.user_agent, binding.source,
        binding.transport, binding.call_id, binding.cseq, EXPIRED, now)


def _expiry(contact: Contact, header: int | None, limits: RegisterLimits) -> int:
    asked = contact.expires if contact.expires is not None else header
    return limits.max_expires if asked is None else min(asked, limits.max_expires)


def _newer(binding: Binding, request: Register) -> bool:
    """RFC 3261 10.3 step 7: another Call-ID updates; the same one only with a higher CSeq."""
    return binding.call_id != request.call_id or request.cseq > binding.cseq


def _after(current: dict[str, Binding], events: list[RegistrationChanged]) -> set[str]:
    keys = set(current)
    for event in events:
        (keys.discard if event.state == REMOVED else keys.add)(contact_key(event.contact))
    return keys


def _event(request: Register, contact: str, state: str, now: datetime, expires_at: datetime) -> RegistrationChanged:
    return RegistrationChanged(
        registration_event_id(request.environment, request.account, contact, state, request.call_id,
                              request.cseq),
        request.environment, request.account, contact, expires_at, request.user_agent, request.source,
        request.transport, request.call_id, request.cseq, state, now)


def _binding_of(event: RegistrationChanged) -> Binding:
    return Binding(event.contact, event.expires_at, event.user_agent, event.source, event.transport, event.call_id,
                   event.cseq, event.occurred_at)
