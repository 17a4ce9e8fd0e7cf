"""The edge's memory is bounded whatever the datagrams: 20,000 MESSAGEs with unique 30 KB
From and To headers (each answered 400, nothing published), or with made-up credentials, or
wrong passwords from 20,000 addresses (the guessing guard's tables), grow its RSS by under 50 MB."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imbill.producers.config_publisher import apply_config
from imbill.producers.sip_client import Credentials, build_message, response_headers, send_message
from imbill.producers.sip_digest import authorization
from tests.test_end_to_end import EXAMPLE, free_port_udp, stop, wait_for_edge

pytestmark = pytest.mark.integration
DATAGRAMS = 20_000
HEADER_BYTES = 30_000


def hostile(n: int) -> bytes:
    """A MESSAGE whose From and To are unique and 30 KB long, refused for its Content-Length."""
    filler = f"{n:08d}".encode() * (HEADER_BYTES // 8)
    return (b"MESSAGE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK" + b"%d" % n
            + b"\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org;x=" + filler + b">;tag=" + b"%d" % n
            + b"\r\nTo: <sip:bob@example.org;y=" + filler + b">\r\nCall-ID: mem-" + b"%d" % n
            + b"\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 999\r\n\r\nhello")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def send_all(port: int, numbers: range) -> int:
    """Send in windows of 50, waiting for the answers; returns how many were answered 400."""
    refused = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(2.0)
        for start in range(numbers.start, numbers.stop, 50):
            window = range(start, min(start + 50, numbers.stop))
            for n in window:
                sock.sendto(hostile(n), ("127.0.0.1", port))
            for _ in window:
                try:
                    refused += sock.recv(65535).startswith(b"SIP/2.0 400")
                except socket.timeout:
                    break
    return refused


def test_unique_long_headers_do_not_grow_the_edge(bootstrap, topics, tmp_path):
    port = free_port_udp()
    env = dict(os.environ, IMBILL_BOOTSTRAP_SERVERS=bootstrap, IMBILL_TOPIC_PREFIX=topics.prefix,
               IMBILL_EDGE_PORT=str(port), IMBILL_DATA_DIR=str(tmp_path))
    edge = subprocess.Popen([sys.executable, "-m", "imbill", "edge"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_edge(port)
        send_all(port, range(0, 1000))  # warm up: every path taken once
        time.sleep(0.5)
        before = rss_kib(edge.pid)
        refused = send_all(port, range(1000, 1000 + DATAGRAMS))
        time.sleep(0.5)
        grown_mib = (rss_kib(edge.pid) - before) / 1024
    finally:
        stop(edge)
    assert refused >= DATAGRAMS * 0.95, f"only {refused} of {DATAGRAMS} were answered 400"
    assert grown_mib < 50, f"the edge grew by {grown_mib:.0f} MiB"


def unauthenticated(n: int) -> bytes:
    """A well-formed MESSAGE with unique 30 KB From and To and made-up digest credentials:
    it reaches authentication and is challenged (401), never published nor remembered."""
    filler = f"{n:08d}".encode() * (HEADER_BYTES // 8)
    credentials = (b'Digest username="1001", realm="default", nonce="%056x", uri="sip:bob@example.org", '
                   b'response="%064x", algorithm=SHA-256, cnonce="%d", qop=auth, nc=00000001' % (n, n, n))
    return (b"MESSAGE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK" + b"%d" % n
            + b"\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org;x=" + filler + b">;tag=" + b"%d" % n
            + b"\r\nTo: <sip:bob@example.org;y=" + filler + b">\r\nCall-ID: auth-" + b"%d" % n
            + b"\r\nCSeq: 1 MESSAGE\r\nAuthorization: " + credentials
            + b"\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")


def send_all_expecting(port: int, numbers: range, build, status: bytes) -> int:
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.settimeout(2.0)
        for start in range(numbers.start, numbers.stop, 50):
            window = range(start, min(start + 50, numbers.stop))
            for n in window:
                sock.sendto(build(n), ("127.0.0.1", port))
            for _ in window:
                try:
                    answered += sock.recv(65535).startswith(b"SIP/2.0 " + status)
                except socket.timeout:
                    break
    return answered


def test_unauthenticated_floods_do_not_grow_the_edge(bootstrap, topics, tmp_path):
    """The environment has no config: authentication is on. Refusals are answered statelessly,
    and only verified responses are remembered, so nothing of these requests is kept."""
    port = free_port_udp()
    env = dict(os.environ, IMBILL_BOOTSTRAP_SERVERS=bootstrap, IMBILL_TOPIC_PREFIX=topics.prefix,
               IMBILL_EDGE_PORT=str(port), IMBILL_DATA_DIR=str(tmp_path))
    edge = subprocess.Popen([sys.executable, "-m", "imbill", "edge"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_edge(port)
        send_all_expecting(port, range(0, 1000), unauthenticated, b"401")
        time.sleep(0.5)
        before = rss_kib(edge.pid)
        challenged = send_all_expecting(port, range(1000, 1000 + DATAGRAMS), unauthenticated, b"401")
        time.sleep(0.5)
        grown_mib = (rss_kib(edge.pid) - before) / 1024
    finally:
        stop(edge)
    assert challenged >= DATAGRAMS * 0.95, f"only {challenged} of {DATAGRAMS} were challenged"
    assert grown_mib < 50, f"the edge grew by {grown_mib:.0f} MiB"


def test_guesses_from_ever_new_addresses_do_not_grow_the_edge(bootstrap, topics, tmp_path):
    """A flood of wrong passwords from 20,000 addresses (of 127/8, as a spoofed-source flood
    would come): every one is counted and blocked by the guard (threshold 1), whose tables are
    bounded; the edge grows by under 50 MB."""
    apply_config(EXAMPLE, bootstrap_servers=bootstrap, topics=topics)
    port = free_port_udp()
    env = dict(os.environ, IMBILL_BOOTSTRAP_SERVERS=bootstrap, IMBILL_TOPIC_PREFIX=topics.prefix,
               IMBILL_EDGE_PORT=str(port), IMBILL_DATA_DIR=str(tmp_path), IMBILL_EDGE_GUARD_FAILURES="1")
    edge = subprocess.Popen([sys.executable, "-m", "imbill", "edge"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_edge(port)
        challenge = send_message("127.0.0.1", port, from_user="1001", to_user="1002", text="x").raw
        guess_from(port, challenge, range(1, 1001))  # warm up
        time.sleep(0.5)
        before = rss_kib(edge.pid)
        answers = guess_from(port, challenge, range(1001, 1001 + DATAGRAMS))
        time.sleep(0.5)
        grown_mib = (rss_kib(edge.pid) - before) / 1024
        again = guess_from(port, challenge, range(1001, 1011))
    finally:
        stop(edge)
    assert answers.count(b"401") >= DATAGRAMS * 0.95, f"only {answers.count(b'401')} guesses were checked"
    print(f"guard flood: the edge grew by {grown_mib:.1f} MiB")
    assert again == [b"403"] * 10, "an address that failed is blocked"
    assert grown_mib < 50, f"the edge grew by {grown_mib:.0f} MiB"


def guess_from(port: int, challenge: bytes, numbers: range) -> list[bytes]:
    """One wrong password from each address 127.1.x.y of ``numbers``; the status of each answer."""
    value = authorization(response_headers(challenge, "WWW-Authenticate"), Credentials("1001", "guess"),
                          method="MESSAGE", uri="sip:1002@127.0.0.1")
    statuses = []
    for n in numbers:
        address = f"127.1.{n >> 8 & 255}.{n & 255}" if n < 65536 else f"127.2.{n >> 8 & 255}.{n & 255}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((address, 0))
            sock.settimeout(2.0)
            sock.sendto(build_message(from_user="1001", to_user="1002", domain="127.0.0.1", text="x",
                                      local_ip=address, local_port=sock.getsockname()[1], cseq=2,
                                      authorization=("Authorization", value)), ("127.0.0.1", port))
            try:
                statuses.append(sock.recv(65535)[8:11])
            except socket.timeout:
                statuses.append(b"")
    return statuses
