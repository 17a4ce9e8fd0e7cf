"""Edge benchmark: SIP MESSAGE -> 202 Accepted per second with SIPp (sip-tester), for the
imbill edge (parse, attempt event, broker ack, answer) beside a bare UDP responder measured
in the same run, with p50/p99 response times from SIPp's per-call RTT trace (1 ms grain).

    python bench/bench_edge.py [--count 30000] [--limit 200]

Needs `sipp` (make bench installs it: apt-get install sip-tester).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from imbill.broker import start_broker  # noqa: E402
from imbill.bus import create_topics  # noqa: E402
from imbill.producers.sip_client import send_message  # noqa: E402
from imbill.topics import Topics  # noqa: E402


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_answering(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            send_message("127.0.0.1", port, from_user="1001", to_user="1002", text="warm-up", timeout=1.0)
            return
        except TimeoutError:
            continue
    raise SystemExit(f"nothing answers on udp 127.0.0.1:{port}")


def run_sipp(port: int, count: int, limit: int, workdir: Path) -> dict:
    accounts = workdir / "accounts.csv"
    accounts.write_text("SEQUENTIAL\n" + "".join(f"{1000 + i};{2000 + i}\n" for i in range(200)))
    for old in workdir.glob("message_*"):
        old.unlink()
    started = time.perf_counter()
    result = subprocess.run(
        ["sipp", f"127.0.0.1:{port}", "-sf", str(HERE / "sipp" / "message.xml"), "-inf", str(accounts),
         "-r", "100000", "-l", str(limit), "-m", str(count), "-t", "u1", "-nostdin",
         "-trace_rtt", "-rtt_freq", "1000", "-timeout", "120s"],
        cwd=workdir, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    rtts = sorted(int(float(line.split(";")[1])) for f in workdir.glob("message_*_rtt.csv")
                  for line in f.read_text().splitlines()[1:] if line)
    return {"ok": result.returncode == 0, "rate": count / elapsed, "elapsed": elapsed,
            "p50": rtts[len(rtts) // 2] if rtts else None,
            "p99": rtts[int(len(rtts) * 0.99)] if rtts else None, "answered": len(rtts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30000)
    parser.add_argument("--limit", type=int, default=200, help="SIPp's concurrent MESSAGEs in flight")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp not found: apt-get install -y sip-tester (or make bench)")
    workdir = Path(tempfile.mkdtemp(prefix="imbill-bench-edge-"))
    broker = start_broker(port=free_port(socket.SOCK_STREAM))
    topics = Topics("bench-edge.")
    create_topics(broker.bootstrap_servers, topics.specs())
    children = []
    try:
        bare_port, edge_port = free_port(), free_port()
        children.append(subprocess.Popen([sys.executable, str(HERE / "bare_responder.py"), str(bare_port)],
                                         stdout=subprocess.DEVNULL))
        env = dict(os.environ, IMBILL_BOOTSTRAP_SERVERS=broker.bootstrap_servers, IMBILL_TOPIC_PREFIX=topics.prefix)
        children.append(subprocess.Popen([sys.executable, "-m", "imbill.cli", "edge", "--port", str(edge_port)],
                                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_answering(bare_port)
        wait_answering(edge_port)
        bare = run_sipp(bare_port, args.count, args.limit, workdir)
        edge = run_sipp(edge_port, args.count, args.limit, workdir)
    finally:
        for child in children:
            child.terminate()
            child.wait()
        broker.stop()
    print(f"edge benchmark: {args.count} MESSAGEs, SIPp UDP, {args.limit} in flight")
    for name, r in (("bare UDP responder (baseline)", bare), ("imbill edge (publish + ack + 202)", edge)):
        print(f"  {name:36s} {r['rate']:9.0f} MESSAGE/s  p50 {r['p50']} ms  p99 {r['p99']} ms"
              f"  answered {r['answered']}  sipp ok: {r['ok']}")
    print(f"  ratio edge/baseline: {edge['rate'] / bare['rate']:.2f}")


if __name__ == "__main__":
    main()
