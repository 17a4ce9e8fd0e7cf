"""Service policy precedence: the attributes in force for one message (or call).

``domain/service-policies.txt``: a policy with a pattern is matched dynamically (messaging:
the recipient domain; voice: the SIP end-point, i.e. the User-Agent); "if more than one
policy matches, the one with the highest Match Priority is used"; "if the policy is
statically assigned to an account, it will always be applied (in spite of the match
pattern)" and "service policy attributes that have been statically assigned to an account
receive the highest priority". So, attribute by attribute:

1. the account's statically assigned policy, if it sets the attribute;
2. else the dynamic winner: among the policies of the service type whose pattern matches
   (:mod:`.patterns`), the highest match priority; equal priorities are broken by policy
   name ascending (the document leaves ties open; the name makes the choice deterministic);
3. else the catalogue default (None where the catalogue has none: "not defined").

A static policy of another service type, or one that no longer exists, is not applied.
Results are cached per environment version: the policies matching a text (one pass over
every pattern), the merged attributes per (static policy, winner), and the effective policy
per (static policy, matched text), so the policy of a message costs two dict look-ups once
warm, and a new recipient domain costs one pass over the patterns whatever the account.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from imbill.domain.config import Account, EnvironmentConfig, ServicePolicy
from imbill.domain.catalogue import CATALOGUE
from imbill.domain.patterns import MATCH_NONE, compile_pattern

__all__ = ["PolicyMatch", "EffectivePolicy", "effective_attributes", "matching_policies", "DEFAULT",
           "PolicyRow", "AttributeRow", "Explanation", "explain"]

DEFAULT = "default"
_CACHE_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class PolicyMatch:
    """A dynamic policy whose pattern matched."""

    name: str
    match_priority: int


@dataclass(frozen=True, slots=True, eq=False)
class EffectivePolicy:
    """The attributes in force and where each one came from."""

    values: Mapping[str, Any]
    source: Mapping[str, str]
    matched: tuple[PolicyMatch, ...]
    winner: str | None
    static: str | None
    policies: tuple[str, ...]
    """Policies that contributed at least one attribute, static first (Charge.policies)."""

    @property
    def service_policy(self) -> str | None:
        """The policy named on the charge: the static one if assigned, else the winner."""
        return self.static if self.static is not None else self.winner

    def get(self, key: str, default: Any = None) -> Any:
        value = self.values.get(key)
        return default if value is None else value


class _PolicyIndex:
    __slots__ = ("env", "version", "dynamic", "matched", "merged", "resolved")

    def __init__(self, env: EnvironmentConfig) -> None:
        self.env, self.version = env, env.version
        self.dynamic: dict[str, list[tuple[ServicePolicy, Any]]] = {}
        for policy in sorted(env.service_policies.values(), key=lambda p: (-p.match_priority, p.name)):
            matcher = compile_pattern(policy.pattern)
            self.dynamic.setdefault(policy.service_type, []).append((policy, matcher))
        self.matched: dict[tuple[str, str], tuple[ServicePolicy, ...]] = {}
        self.merged: dict[tuple[str, str | None, str | None], tuple[Mapping, Mapping, tuple[str, ...]]] = {}
        self.resolved: dict[tuple[str, str | None, str | None], EffectivePolicy] = {}


def _remembered(memo: dict, key: Any, value: Any) -> Any:
    if len(memo) >= _CACHE_LIMIT:
        memo.clear()
    memo[key] = value
    return value


def _index(env: EnvironmentConfig) -> _PolicyIndex:
    return env.derived("policy", _PolicyIndex)


def matching_policies(env: EnvironmentConfig, service_type: str, text: str | None) -> tuple[ServicePolicy, ...]:
    """Dynamic policies of ``service_type`` matching ``text``, winner first."""
    if text is None:
        return ()
    index = _index(env)
    found = index.matched.get((service_type, text))
    if found is None:
        found = tuple(p for p, matches in index.dynamic.get(service_type, ()) if matches(text))
        _remembered(index.matched, (service_type, text), found)
    return found


def _static_policy(env: EnvironmentConfig, account: Account | str | None, service_type: str) -> str | None:
    if isinstance(account, str):
        account = env.accounts.get(account)
    name = account.service_policy if account is not None else None
    policy = env.service_policies.get(name) if name else None
    return name if policy is not None and policy.service_type == service_type else None


def effective_attributes(env: EnvironmentConfig, *, account: Account | str | None, to_domain: str | None,
                         user_agent: str | None = None, service_type: str = "messaging") -> EffectivePolicy:
    """The effective policy for ``account`` (id or object) sending to ``to_domain``.

    Messaging policies match the recipient domain, voice policies the User-Agent.
    """
    index = _index(env)
    static = _static_policy(env, account, service_type)
    text = to_domain if service_type == "messaging" else user_agent
    key = (service_type, static, text)
    found = index.resolved.get(key)
    if found is None:
        found = _remembered(index.resolved, key, _resolve(index, service_type, static, text))
    return found


def _resolve(index: _PolicyIndex, service_type: str, static: str | None, text: str | None) -> EffectivePolicy:
    matched = matching_policies(index.env, service_type, text)
    winner = matched[0] if matched else None
    key = (service_type, static, winner.name if winner else None)
    merged = index.merged.get(key) or _remembered(index.merged, key, _merge(index.env, *key[:2], winner))
    values, source, policies = merged
    return EffectivePolicy(values=values, source=source, matched=tuple(PolicyMatch(p.name, p.match_priority)
                           for p in matched), winner=winner.name if winner else None, static=static, policies=policies)


def _merge(env: EnvironmentConfig, service_type: str, static: str | None,
           winner: ServicePolicy | None) -> tuple[Mapping[str, Any], Mapping[str, str], tuple[str, ...]]:
    """Values, sources and contributing policies of a (static, winner) pair: the catalogue
    defaults, then the winner's attributes, then the static policy's."""
    values = {key: spec.default for key, spec in CATALOGUE.get(service_type, {}).items()}
    source = dict.fromkeys(values, DEFAULT)
    static_policy = env.service_policies.get(static) if static else None
    layers = [p for p in (winner, static_policy) if p is not None]
    if len(layers) == 2 and layers[0] is layers[1]:
        layers.pop()
    for policy in layers:
        values.update(policy.attributes)
        source.update(dict.fromkeys(policy.attributes, policy.name))
    policies = tuple(p.name for p in reversed(layers) if any(source[k] == p.name for k in p.attributes))
    return MappingProxyType(values), MappingProxyType(source), policies


# --- imbill policy explain ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PolicyRow:
    """One policy of the service type and the part it played: static, winner, matched,
    not matched (its pattern did not match) or not dynamic (no pattern, not assigned)."""

    name: str
    role: str
    match_priority: int
    pattern: str | None


@dataclass(frozen=True, slots=True)
class AttributeRow:
    """One attribute: the value in force, its source, and what each layer said (None: unset)."""

    attribute: str
    value: Any
    source: str
    static_value: Any
    dynamic_value: Any
    default: Any


@dataclass(frozen=True, slots=True)
class Explanation:
    effective: EffectivePolicy
    policies: tuple[PolicyRow, ...]
    attributes: tuple[AttributeRow, ...]


def explain(env: EnvironmentConfig, *, account: Account | str | None, to_domain: str | None,
            user_agent: str | None = None, service_type: str = "messaging",
            all_attributes: bool = False) -> Explanation:
    """Rows for ``imbill policy explain``: every policy's role, then every attribute that is
    set by a policy or has a default (``all_attributes``: every catalogue attribute)."""
    effective = effective_attributes(env, account=account, to_domain=to_domain,
                                     user_agent=user_agent, service_type=service_type)
    return Explanation(effective, _policy_rows(env, effective, service_type),
                       _attribute_rows(env, effective, service_type, all_attributes))


def _role(policy: ServicePolicy, effective: EffectivePolicy, matched: set[str]) -> str:
    if policy.name == effective.static:
        return "static"
    if policy.name == effective.winner:
        return "winner"
    if policy.name in matched:
        return "matched"
    return "not matched" if compile_pattern(policy.pattern) is not MATCH_NONE else "not dynamic"


def _policy_rows(env: EnvironmentConfig, effective: EffectivePolicy, service_type: str) -> tuple[PolicyRow, ...]:
    matched = {m.name for m in effective.matched}
    order = {"static": 0, "winner": 1, "matched": 2, "not matched": 3, "not dynamic": 4}
    rows = [PolicyRow(p.name, _role(p, effective, matched), p.match_priority, p.pattern)
            for p in env.service_policies.values() if p.service_type == service_type]
    return tuple(sorted(rows, key=lambda r: (order[r.role], -r.match_priority, r.name)))


def _attribute_rows(env: EnvironmentConfig, effective: EffectivePolicy, service_type: str,
                    all_attributes: bool) -> tuple[AttributeRow, ...]:
    catalogue = CATALOGUE.get(service_type, {})
    static = env.service_policies.get(effective.static).attributes if effective.static else {}
    dynamic = env.service_policies.get(effective.winner).attributes if effective.winner else {}
    rows = []
    for key in sorted(effective.values):
        default = catalogue[key].default if key in catalogue else None
        if all_attributes or key in static or key in dynamic or default is not None:
            rows.append(AttributeRow(key, effective.values[key], effective.source[key],
                                     static.get(key), dynamic.get(key), default))
    return tuple(rows)
