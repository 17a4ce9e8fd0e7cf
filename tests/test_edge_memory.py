"""The edge's memory is bounded whatever the datagrams: 20,000 MESSAGEs with unique 30 KB
From and To headers (each answered 400, nothing published) grow its RSS by under 50 MB."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_end_to_end import free_port_udp, stop, wait_for_edge

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
