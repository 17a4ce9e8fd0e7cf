"""The guard against password guessing at the SIP edge: an address that keeps failing digest
authentication is answered 403 for a cool-down, without digest work, while a client that
knows the password goes on being served from another address, the same account included."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tracemalloc
import uuid

import pytest

from imbill.domain.errors import ConfigError
from imbill.producers.config_publisher import apply_config
from imbill.producers.sip_client import Credentials, build_message, response_headers
from imbill.producers.sip_digest import authorization
from imbill.producers.sip_guard import MAX_ENTRIES, GuardLimits, GuessingGuard
from imbill.settings import load_settings
from tests.test_edge_auth import ALICE, edge_running, send, status
from tests.test_end_to_end import EXAMPLE, free_port_udp, stop, wait_for_edge

ATTACKER = "127.0.0.2"


class Guesser:
    """A client on its own address that answers one challenge with ever new wrong passwords."""

    def __init__(self, port: int, account: str = "1001", address: str = ATTACKER) -> None:
        self.port, self.account = port, account
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(3)
        self.local = self.sock.getsockname()
        self.challenge = self.exchange(self.message(None))
        assert status(self.challenge) == 401

    def message(self, password: str | None) -> bytes:
        value = password and authorization(response_headers(self.challenge, "WWW-Authenticate"),
                                           Credentials(self.account, password), method="MESSAGE",
                                           uri="sip:1002@127.0.0.1", cnonce=uuid.uuid4().hex[:8])
        return build_message(from_user=self.account, to_user="1002", domain="127.0.0.1", text="guess",
                             local_ip=self.local[0], local_port=self.local[1], call_id=uuid.uuid4().hex,
                             cseq=2 if value else 1, authorization=("Authorization", value) if value else None)

    def exchange(self, datagram: bytes) -> bytes:
        self.sock.sendto(datagram, ("127.0.0.1", self.port))
        return self.sock.recv(65535)

    def guess(self, n: int) -> bytes:
        return self.exchange(self.message(f"guess-{n}"))

    def close(self) -> None:
        self.sock.close()


def test_a_thousand_guesses_from_one_address_are_cut_off_while_the_account_is_served_elsewhere() -> None:
    """The guesser guesses the password of 1001, whose owner sends from 127.0.0.1 all along."""
    limits = GuardLimits(source_failures=10, account_failures=30, window=60, cooldown=300)
    with edge_running(guard=GuessingGuard(limits)) as edge:
        guesser = Guesser(edge["port"])
        answers, owner = [], []
        try:
            for n in range(1000):
                answers.append(guesser.guess(n))
                if n % 50 == 0:
                    owner.append(send(edge["port"], credentials=ALICE))
            digests = edge["auth"].digests
            edge["clock"].now += 301  # the cool-down is over: the guesser is challenged again
            after = guesser.exchange(guesser.message(None))
        finally:
            guesser.close()
        attempts = edge["recorder"].attempts
    assert [status(a) for a in answers] == [401] * 10 + [403] * 990
    assert b'Warning: 399 imbill-sip-edge "too many failed authentications from 127.0.0.2' in answers[-1]
    assert [(a.status, a.challenged) for a in owner] == [(202, True)] * 20
    assert digests == 10 + len(owner), "a blocked address still costs digest work"
    assert status(after) == 401
    assert [a.source_ip for a in attempts] == ["127.0.0.1"] * 20


def test_guessing_spread_over_addresses_blocks_each_failing_address_never_the_account() -> None:
    limits = GuardLimits(source_failures=10, account_failures=6, window=60, cooldown=300)
    with edge_running(guard=GuessingGuard(limits)) as edge:
        guessers = [Guesser(edge["port"], address=f"127.0.0.{n}") for n in range(10, 14)]
        try:
            spread = [[status(g.guess(n)) for n in range(2)] for g in guessers[:3]]  # 6 failures: 1001 is watched
            late = [status(guessers[3].guess(n)) for n in range(2)]
            owner = send(edge["port"], credentials=ALICE)
        finally:
            for guesser in guessers:
                guesser.close()
    assert spread == [[401, 401], [401, 401], [401, 401]]
    assert late == [401, 403], "an address failing on a watched account is blocked at its first failure"
    assert owner.status == 202


def test_the_guard_counts_within_its_window_and_forgets_after_its_cooldown() -> None:
    guard = GuessingGuard(GuardLimits(source_failures=3, account_failures=100, window=10, cooldown=60))
    for now in (0.0, 5.0, 11.0, 12.0):  # the window restarts at 11: two failures, then three
        guard.failed("192.0.2.1", "1001", now)
    assert guard.blocked("192.0.2.1", 12.0) == 0
    guard.failed("192.0.2.1", "1001", 13.0)
    assert guard.blocked("192.0.2.1", 13.0) == 60 and guard.blocked("192.0.2.9", 13.0) == 0
    assert guard.blocked("192.0.2.1", 73.0) == 0 and guard.sizes == (0, 0, 1, 0)


def test_a_guard_turned_off_counts_nothing() -> None:
    guard = GuessingGuard(GuardLimits(source_failures=0))
    for n in range(100):
        guard.failed("192.0.2.1", "1001", float(n))
    assert guard.blocked("192.0.2.1", 100.0) == 0 and guard.sizes == (0, 0, 0, 0)


def test_a_spoofed_address_flood_cannot_grow_the_guard() -> None:
    """Every table is bounded in entries; full (measured at 8,192 entries each, scaled to
    MAX_ENTRIES), the four hold a few tens of MB at most."""
    small = GuessingGuard(GuardLimits(source_failures=2, account_failures=2), max_entries=1000)
    for n in range(20_000):
        small.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", f"acct-{n % 5000}", float(n % 50))
        small.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", None, float(n % 50))
    assert all(size <= 1000 for size in small.sizes)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        full = GuessingGuard(GuardLimits(source_failures=1, account_failures=1), max_entries=8192)
        for n in range(8192 + 100):
            full.failed(f"2001:db8::{n:x}:{n:x}:{n:x}", f"account-{n:08d}", 1.0)
            full.failed(f"2001:db8::1:{n:x}:{n:x}:{n:x}", None, 1.0)
        held = (tracemalloc.get_traced_memory()[0] - before) * MAX_ENTRIES / 8192
    finally:
        tracemalloc.stop()
    assert full.sizes[1] == full.sizes[3] == 8192
    assert held < 64 * 1024 * 1024, f"the full guard holds {held / 2**20:.0f} MiB"


@pytest.mark.parametrize(("variable", "value", "problem"), [
    ("IMBILL_EDGE_GUARD_FAILURES", "-1", "edge guard failures: must be 0 (off) to 1000000"),
    ("IMBILL_EDGE_GUARD_ACCOUNT_FAILURES", "0", "edge guard account failures: must be 1 to 1000000"),
    ("IMBILL_EDGE_GUARD_WINDOW", "0", "edge guard window: must be 1 to 86400 seconds"),
    ("IMBILL_EDGE_GUARD_COOLDOWN", "90000", "edge guard cooldown: must be 1 to 86400 seconds"),
])
def test_guard_settings_out_of_range_are_one_line(variable: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_settings({variable: value}).guard  # noqa: B018


def test_guard_settings_flags_over_environment_over_defaults() -> None:
    assert load_settings({}).guard == GuardLimits()
    environment = {"IMBILL_EDGE_GUARD_FAILURES": "4", "IMBILL_EDGE_GUARD_COOLDOWN": "30"}
    settings = load_settings(environment, edge_guard_failures=7)
    assert settings.guard == GuardLimits(source_failures=7, cooldown=30)
    assert load_settings(settings.as_environment()).guard == settings.guard


@pytest.mark.integration
def test_imbill_edge_takes_its_guard_from_the_settings(bootstrap, topics, tmp_path) -> None:
    apply_config(EXAMPLE, bootstrap_servers=bootstrap, topics=topics)
    port = free_port_udp()
    env = dict(os.environ, IMBILL_BOOTSTRAP_SERVERS=bootstrap, IMBILL_TOPIC_PREFIX=topics.prefix,
               IMBILL_EDGE_PORT=str(port), IMBILL_DATA_DIR=str(tmp_path), IMBILL_EDGE_GUARD_FAILURES="3")
    edge = subprocess.Popen([sys.executable, "-m", "imbill", "edge"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_edge(port)
        guesser = Guesser(port)
        try:
            answers = [status(guesser.guess(n)) for n in range(5)]
        finally:
            guesser.close()
    finally:
        stop(edge)
    assert answers == [401, 401, 401, 403, 403]
