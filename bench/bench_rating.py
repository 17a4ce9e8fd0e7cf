"""Benchmark of the rule layer alone: attempts rated per second on one core, and memory.

    python bench/bench_rating.py            # full sizes (targets: >= 200,000 attempts/s, <= 1 GiB)
    python bench/bench_rating.py --quick    # smoke run

Part 1 generates a realistic config (3 environments; 10,000 rate codes over several tariffs
with rate history; 1,000 service policies with recipient domain patterns, some assigned
statically; 100,000 accounts with aliases; internal and external vendors), folds it into a
ConfigState through ``ConfigState.apply`` as the processor does, and times ``rate_attempt``
over a mix of on-net, off-net, incoming and refused attempts (the mix is printed, as set
and as measured). Beside it, a floor measured in the same run: the same number of plain
dict look-ups (one account look-up per attempt, with fresh key strings as rating gets).

Part 2, in a subprocess, holds a ConfigState of 1,000,000 accounts and 100,000 rate codes
plus the rating and policy indexes, and reports its resident memory beside that of a bare
interpreter.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import NamedTuple

from imbill.domain.config import ConfigState
from imbill.domain.policy import effective_attributes
from imbill.domain.events import MessageAttempt
from imbill.domain.rating import Rated, Refusal, rate_attempt

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
NOW = T0 + timedelta(days=60)
CURRENCIES = ("USD", "EUR", "GBP")
IM = {"msg.transport_protocol": "SIP", "msg.outgoing_aaa": True, "msg.local_lookup": True,
      "msg.userpart_e164_translation": True, "msg.billing_unit_size": 60, "msg.external_routing": True}


class _Fold:
    """Config events folded in batches of 10,000 as they are made, as the config reader
    folds the topic (never all of them held at once)."""

    def __init__(self) -> None:
        self.state, self.events, self.serial = ConfigState(), [], 0

    def put(self, env: str, event: str, body: dict) -> None:
        self.serial += 1
        self.events.append((event, {"event_id": f"cfg-{self.serial}", "environment": env, "occurred_at": T0,
                                    **body}))
        if len(self.events) >= 10_000:
            self.flush()

    def flush(self) -> ConfigState:
        self.state, self.events = self.state.applied(self.events, on_skip=_refused_record), []
        return self.state


def _refused_record(name: str, record: dict, error: Exception) -> None:
    """A generated record the fold refuses makes the figures meaningless: stop at once."""
    raise SystemExit(f"bench config invalid: {name} {record.get('event_id')} refused: {error}")


def _rate(tariff: str, code: str, price: str, at: datetime) -> dict:
    return {"tariff": tariff, "rate_code": code, "unit_price": Decimal(price), "effective_from": at,
            "rating_mode": "flat", "description": ""}


def build_config(envs: int, tariffs: int, codes: int, policies: int, accounts: int, seed: int) -> ConfigState:
    """The generated config, folded in batches as the config reader folds the topic."""
    rnd, fold = random.Random(seed), _Fold()
    for e in range(envs):
        env = f"env{e}"

        def put(event: str, body: dict) -> None:
            fold.put(env, event, body)

        put("ServiceTypesSet", {"messaging_enabled": True, "voice_enabled": True})
        put("DialingRulesSet", {"country_code": "44", "international_prefix": "00", "national_prefix": "0",
                                "area_code": "", "min_length": 7, "max_length": 15})
        put("DestinationDefined", {"prefix": "MSGN", "format": "custom", "description": "on-net"})
        _policies(put, rnd, policies // envs)
        _vendors(put, rnd, codes // envs // 4)
        names = [f"B{t}" for t in range(tariffs)]
        currency_of = {}
        for name in names:
            currency_of[name] = rnd.choice(CURRENCIES)
            put("TariffDefined", {"name": name, "currency": currency_of[name], "service": "messaging",
                                  "applied_to": "customer", "routing": False, "managed_by": "administrator",
                                  "description": ""})
            put("RateDefined", _rate(name, "MSGN", "0.05", T0))
            put("RateDefined", _rate(name, "MSGN", "0.04", T0 + timedelta(days=30)))
            put("RateDefined", _rate(name, "|", "0.50", T0))
            for code in _codes(rnd, codes // envs // tariffs):
                put("RateDefined", _rate(name, code, f"0.{rnd.randint(1, 40):02d}", T0))
            put("ProductDefined", {"name": f"P-{name}", "services": ["voice", "messaging"], "service_policy": None,
                                   "usage_charges": [{"service": "messaging", "node": "PortaSIP", "tariff": name}]})
        for currency in CURRENCIES:  # a customer's tariff is in the customer's currency (config apply's rule)
            put("CustomerDefined", {"name": f"Acme {currency}", "currency": currency, "description": ""})
        for a in range(accounts // envs):
            put("AccountDefined", {
                "account_id": f"44{7000000000 + a}", "customer": f"Acme {currency_of[f'B{a % tariffs}']}",
                "product": f"P-B{a % tariffs}",
                "aliases": [f"user{a}"], "digest_realm": "", "ha1_md5": "", "ha1_sha256": "",
                "service_policy": f"static{a % 50}" if a % 10 == 0 else None, "balance_model": "prepaid",
                "opening_balance": Decimal("10.00"), "credit_limit": Decimal(0)})
    return fold.flush()


def _codes(rnd: random.Random, count: int) -> set[str]:
    found: set[str] = set()
    while len(found) < count:
        found.add("".join(rnd.choice("0123456789") for _ in range(rnd.randint(2, 7))))
    return found


def _policies(put, rnd: random.Random, count: int) -> None:
    put("ServicePolicyDefined", {"name": "Instant messaging", "service_type": "messaging", "description": "",
                                 "pattern": "%", "match_priority": 5, "attributes": IM})
    for p in range(count - 51):
        put("ServicePolicyDefined", {"name": f"dyn{p}", "service_type": "messaging", "description": "",
                                     "pattern": f"%.tenant{p}.example, tenant{p}.%", "match_priority": rnd.randint(0, 10),
                                     "attributes": {**IM, "msg.billing_unit_size": rnd.choice([60, 70, 160])}})
    for p in range(50):
        put("ServicePolicyDefined", {"name": f"static{p}", "service_type": "messaging", "description": "",
                                     "pattern": None, "match_priority": 0, "attributes": {"msg.billing_unit_size": 100}})


def _vendors(put, rnd: random.Random, codes: int) -> None:
    put("VendorDefined", {"name": "Internal", "internal": True, "description": ""})
    put("TariffDefined", {"name": "A", "currency": "USD", "service": "messaging", "applied_to": "vendor",
                          "routing": False, "managed_by": "administrator", "description": ""})
    put("RateDefined", _rate("A", "|", "0", T0))
    put("VendorConnectionDefined", {"vendor": "Internal", "description": "IM via SIP", "service_type": "messaging",
                                    "connection_type": "SIP/SIMPLE", "tariff": "A", "internal": True,
                                    "use_for": "SIP-UA", "routing_preference": 0, "service_policy": None})
    for v in range(4):
        put("VendorDefined", {"name": f"Carrier{v}", "internal": False, "description": ""})
        put("TariffDefined", {"name": f"V{v}", "currency": "USD", "service": "messaging", "applied_to": "vendor",
                              "routing": True, "managed_by": "administrator", "description": ""})
        for code in _codes(rnd, codes) | {"44"}:
            put("RateDefined", _rate(f"V{v}", code, f"0.0{rnd.randint(1, 9)}", T0))
        put("VendorConnectionDefined", {"vendor": f"Carrier{v}", "description": "out", "service_type": "messaging",
                                        "connection_type": "SMPP", "tariff": f"V{v}", "internal": False,
                                        "use_for": None, "routing_preference": v, "service_policy": None})


class Traffic:
    """Attempts as a processor sees them: freshly decoded records, in batches.

    Messages come in conversations: with probability ``repeat`` an attempt continues one
    of the last 5,000 conversations (same environment, sender and destination), else it
    starts a new one (``--repeat-share 0``: every destination drawn afresh, the worst case
    for the memos). New conversations: senders uniform over the accounts; destinations 30%
    an account number, 15% an alias, 15% a national number of an account (E.164
    translation), 30% and 7% off-net numbers in international form (``+44...``, ``00...``)
    from a pool per run, 3% unknown names. 5% of attempts are incoming, 1% of new
    conversations come from unknown senders. Bodies are 1-400 characters, and attempts were
    received at any time in the 50 days after the first rates (late rating included).

    Every string of a record is a fresh object, as a decoder makes it (no cached hash, not
    the object a memo holds), so a look-up costs what it costs in the processor.
    """

    MIX = ("{repeat:.0%} of attempts continue one of the last 5,000 conversations, the others start one "
           "(to an account number 30%, alias 15%, national number 15%, off-net number 37% from a pool of "
           "{pool:,}, unknown name 3%); 5% incoming; 1-400 characters; received over 50 days")

    def __init__(self, envs: int, accounts: int, pool: int, seed: int, repeat: float = 0.8) -> None:
        self.rnd, self.envs, self.per_env, self.repeat = random.Random(seed), envs, accounts // envs, repeat
        pools = random.Random(seed * 31)
        self.pool = [f"+44{pools.randrange(10**9, 10**10)}" for _ in range(pool * 8 // 10)] + \
                    [f"00{pools.randrange(10**9, 10**11)}" for _ in range(pool * 2 // 10)]
        self.conversations: list[tuple[str, str, str, str]] = []
        self.serial = self.started = 0

    def _conversation(self) -> tuple[str, str, str, str]:
        rnd = self.rnd
        if self.conversations and rnd.random() < self.repeat:
            return rnd.choice(self.conversations)
        self.started += 1
        b, kind = rnd.randrange(self.per_env), rnd.random()
        to_user = (f"44{7000000000 + b}" if kind < 0.3 else f"user{b}" if kind < 0.45
                   else f"0{7000000000 + b}" if kind < 0.6 else rnd.choice(self.pool) if kind < 0.97
                   else f"nobody{b}")
        sender = f"44{7000000000 + rnd.randrange(self.per_env)}" if rnd.random() < 0.99 else "mallory"
        found = (f"env{rnd.randrange(self.envs)}", sender, to_user, rnd.choice(DOMAINS))
        self.conversations.append(found)
        if len(self.conversations) > 5000:
            del self.conversations[:1000]
        return found

    def batch(self, count: int) -> list[MessageAttempt]:
        rnd, out = self.rnd, []
        for _ in range(count):
            self.serial += 1
            env, sender, to_user, domain = (_decoded(text) for text in self._conversation())
            out.append(MessageAttempt(
                attempt_id=f"att-{self.serial}", environment=env,
                received_at=T0 + timedelta(seconds=rnd.randrange(50 * 86400)),
                direction=_decoded("incoming" if self.serial % 20 == 0 else "outgoing"), call_id="", cseq=1,
                from_user=sender, from_domain=domain, to_user=to_user, to_domain=domain, request_uri="",
                user_agent=None, content_type=None, body_chars=rnd.randint(1, 400), body_bytes=0, source_ip="",
                source_port=0, transport="UDP", edge_id=""))
        return out


def _decoded(text: str) -> str:
    """``text`` as a new string object, as decoding a record makes it."""
    return text.encode().decode()


DOMAINS = ("sip.acme.example", "tenant7.example", "im.tenant3.example", "other.example")
BATCH = 1000


def bench_rating(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    config = build_config(args.environments, args.tariffs, args.rate_codes, args.policies, args.accounts, args.seed)
    built = time.perf_counter()
    traffic = Traffic(args.environments, args.accounts, args.offnet_pool, args.seed, args.repeat_share)
    for attempt in traffic.batch(BATCH):  # builds each environment's indexes
        rate_attempt(attempt, config, rated_at=NOW)
    indexed = time.perf_counter()
    for _ in range(args.warmup // BATCH):  # a running processor's caches
        for attempt in traffic.batch(BATCH):
            rate_attempt(attempt, config, rated_at=NOW)
    print(f"config: {args.environments} environments, {args.accounts:,} accounts, {args.rate_codes:,} rate codes, "
          f"{args.policies:,} policies; folded in {built - started:.1f} s, indexes built in {indexed - built:.2f} s")
    print(f"traffic: {Traffic.MIX.format(repeat=args.repeat_share, pool=args.offnet_pool)}")
    runs = [_run(config, traffic, args.attempts) for _ in range(args.repeat)]
    best = max(runs)
    print(f"rating:  {best.rate:>12,.0f} attempts/s on one core, best of {args.repeat} "
          f"(runs: {', '.join(f'{r.rate:,.0f}' for r in runs)})")
    print(f"floor:   {best.floor:>12,.0f} plain dict look-ups/s (one per attempt, same batches)")
    print(f"ratio:   {best.floor / best.rate:>12.1f} x the floor's time per attempt; target >= 200,000/s: "
          f"{'met' if best.rate >= 200_000 else 'NOT met'}")
    print(f"mix:     {best.new:.0%} of attempts started a conversation; outcomes: "
          + ", ".join(f"{share:.0%} {kind}" for kind, share in best.outcomes))
    if args.profile:
        batch = traffic.batch(args.attempts)
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [rate_attempt(a, config, rated_at=NOW) for a in batch])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


class Run(NamedTuple):
    rate: float
    """Attempts rated per CPU second."""
    floor: float
    """Plain dict look-ups per CPU second, one per attempt of the same batches."""
    new: float
    """Share of attempts that started a conversation."""
    outcomes: tuple[tuple[str, float], ...]


def _run(config: ConfigState, traffic: Traffic, count: int) -> Run:
    """Only the rating of each fresh batch is timed, in CPU seconds of this process."""
    rating = floor = 0.0
    outcomes: Counter[str] = Counter()
    started = traffic.started
    clock = time.process_time  # CPU time of this process: other work on the machine does not count
    for _ in range(max(1, count // BATCH)):
        batch = traffic.batch(BATCH)
        accounts = config.environments[batch[0].environment].accounts
        probes = [{"from_user": _decoded(attempt.from_user)} for attempt in batch]  # hashed by neither loop yet
        begun = clock()
        for probe in probes:
            accounts.get(probe["from_user"])
        middle = clock()
        results = [rate_attempt(attempt, config, rated_at=NOW) for attempt in batch]
        rating += clock() - middle
        floor += middle - begun
        outcomes.update(_outcome(r) for r in results)
    total = max(1, count // BATCH) * BATCH
    return Run(total / rating, total / floor, (traffic.started - started) / total,
               tuple((kind, outcomes[kind] / total) for kind in ("on-net", "off-net", "incoming", "refused")))


def _outcome(result: Rated | Refusal) -> str:
    if type(result) is Refusal:
        return "refused"
    return "incoming" if result.direction == "incoming" else "on-net" if result.on_net else "off-net"


def rss_child(args: argparse.Namespace) -> None:
    """Runs in the subprocess: hold the big config and its indexes, print memory as JSON."""
    config = build_config(args.environments, args.tariffs, args.rss_rate_codes, args.policies, args.rss_accounts,
                          args.seed)
    traffic = Traffic(args.environments, args.rss_accounts, args.offnet_pool, args.seed, args.repeat_share)
    for _ in range(args.rss_attempts // BATCH):  # fills the bounded memos as a long run does
        for attempt in traffic.batch(BATCH):
            rate_attempt(attempt, config, rated_at=NOW)
        effective_attributes(config.environments[attempt.environment], account=attempt.from_user,
                             to_domain=attempt.to_domain)
    print(json.dumps(_memory()))


def _memory() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process. Not ru_maxrss: Linux carries the parent's
    peak across fork and exec, so a child would report the parent's size."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) * 1024
    return {"rss": found["VmRSS"], "peak": found["VmHWM"]}


_BARE = ("import json\n"
         "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
         "print(json.dumps({'rss': int(status['VmRSS'].split()[0]) * 1024,"
         " 'peak': int(status['VmHWM'].split()[0]) * 1024}))")


def bench_memory(args: argparse.Namespace) -> None:
    bare = json.loads(subprocess.run([sys.executable, "-c", _BARE], capture_output=True, text=True,
                                     check=True).stdout)
    child_args = [sys.executable, __file__, "--rss-child", *_size_flags(args)]
    started = time.perf_counter()
    held = json.loads(subprocess.run(child_args, capture_output=True, text=True, check=True).stdout)
    mib = 1024 * 1024
    print(f"memory:  {held['rss'] / mib:,.0f} MiB resident (peak {held['peak'] / mib:,.0f} MiB) holding "
          f"{args.rss_accounts:,} accounts and {args.rss_rate_codes:,} rate codes plus indexes "
          f"(built in {time.perf_counter() - started:.0f} s); bare interpreter {bare['rss'] / mib:.0f} MiB; "
          f"target <= 1 GiB: {'met' if held['peak'] <= 1024 * mib else 'NOT met'}")


def _size_flags(args: argparse.Namespace) -> list[str]:
    return [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in
            ("environments", "tariffs", "policies", "rss_accounts", "rss_rate_codes", "rss_attempts", "offnet_pool",
             "seed", "repeat_share")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, default in (("environments", 3), ("tariffs", 4), ("rate-codes", 10_000), ("policies", 1_000),
                          ("accounts", 100_000), ("attempts", 200_000), ("repeat", 3), ("warmup", 100_000),
                          ("offnet-pool", 20_000), ("rss-accounts", 1_000_000),
                          ("rss-rate-codes", 100_000), ("rss-attempts", 300_000), ("seed", 7)):
        parser.add_argument(f"--{flag}", type=int, default=default)
    parser.add_argument("--repeat-share", type=float, default=0.8,
                        help="share of attempts continuing a recent conversation (0: all fresh)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--profile", action="store_true", help="cProfile the rating loop")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocess")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rate_codes, args.policies, args.accounts, args.attempts = 1_000, 200, 3_000, 20_000
        args.rss_accounts, args.rss_rate_codes, args.repeat, args.warmup = 30_000, 3_000, 1, 5_000
        args.rss_attempts = 10_000
    if args.rss_child:
        return rss_child(args)
    bench_rating(args)
    if not args.no_memory:
        bench_memory(args)


if __name__ == "__main__":
    main()
