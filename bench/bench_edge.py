"""Edge benchmark: SIP MESSAGE -> 202 Accepted per second with SIPp (sip-tester), for the
imbill edge (parse, attempt event, broker ack, answer) with digest authentication on and off,
beside a bare UDP responder, all measured in the same run, with p50/p99 response times from
SIPp's per-call RTT trace (1 ms grain) and the CPU time each server spent per MESSAGE.

    python bench/bench_edge.py [--count 30000] [--limit 200] [--rounds 1]

One edge process serves two environments by SIP domain (README, "Environments by domain"):
``bench-open`` (authentication off: SIPp's 200 accounts are not configured, the edge of trusted
peers) for SIPp on 127.0.0.1, and ``bench-auth`` (``sip_domains: [127.0.0.2]``, authentication
on, MD5 offered first as SIPp 3.6.1 answers only that) for one SIPp bound to 127.0.0.2 that
answers every challenge with ``[authentication]`` (bench/sipp/message_auth_bench.xml, one account:
SIPp cannot take credentials per call). An authenticated MESSAGE is two requests (the 401
challenge, then the request with its credentials); its response time runs from the first to
the 202. It also counts the attempts SIPp's MESSAGEs left on the topic (each 202 means one
is there).

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
# SIPp's own socket buffers (default 64 KiB) drop answers that arrive in bursts, from the edge
# (it answers a batch when the broker acknowledges it) as from the baseline: each drop costs a
# 500 ms retransmission that measures SIPp, not the server. The kernel caps it at rmem_max.
SIPP_BUFFER = 4 * 1024 * 1024
sys.path.insert(0, str(HERE.parent))

from imbill.broker import start_broker  # noqa: E402
from imbill.bus import create_topics, read_to_end  # noqa: E402
from imbill.producers.config_publisher import apply_config  # noqa: E402
from imbill.producers.sip_client import send_message  # noqa: E402
from imbill.schemas.topics import Topics  # noqa: E402


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A free port of ``kind``; a UDP one is also free on TCP (the edge listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, kind) as sock, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            sock.bind(("127.0.0.1", 0))
            if kind == socket.SOCK_DGRAM:
                try:
                    tcp.bind(("127.0.0.1", sock.getsockname()[1]))
                except OSError:
                    continue
            return sock.getsockname()[1]


def wait_answering(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if send_message("127.0.0.1", port, from_user="1001", to_user="1002", text="warm-up",
                            timeout=1.0).status == 202:
                return
            time.sleep(0.1)  # the edge has not read its config yet
        except (TimeoutError, ConnectionRefusedError):  # not listening yet: the socket is connected
            time.sleep(0.1)
    raise SystemExit(f"nothing answers on udp 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


AUTH_DOMAIN = "127.0.0.2"  # SIPp's address, and so its From host, for the authenticated run
AUTH_PASSWORD = "bench-secret"
CONFIGS = {
    "open": "environment: bench-open\nsip: {authentication: false}\n",
    "auth": f"""environment: bench-auth
sip_domains: ["{AUTH_DOMAIN}"]
sip: {{algorithms: [MD5, SHA-256]}}
customers:
  - {{name: Bench, currency: USD, accounts: [{{id: "1001", service_password: {AUTH_PASSWORD}, product: P}}]}}
products: [{{name: P}}]
""",
}


def run_sipp(port: int, count: int, limit: int, workdir: Path, *, authenticated: bool = False) -> dict:
    accounts = workdir / "accounts.csv"
    if authenticated:
        accounts.write_text("SEQUENTIAL\n1001;1002\n")
        scenario = ["-sf", str(HERE / "sipp" / "message_auth_bench.xml"), "-i", AUTH_DOMAIN, "-au", "1001",
                    "-ap", AUTH_PASSWORD]
    else:
        accounts.write_text("SEQUENTIAL\n" + "".join(f"{1000 + i};{2000 + i}\n" for i in range(200)))
        scenario = ["-sf", str(HERE / "sipp" / "message.xml")]
    for old in workdir.glob("message_*"):
        old.unlink()
    started = time.perf_counter()
    result = subprocess.run(
        ["sipp", f"127.0.0.1:{port}", *scenario, "-inf", str(accounts),
         "-r", "100000", "-l", str(limit), "-m", str(count), "-t", "u1", "-nostdin", "-buff_size", str(SIPP_BUFFER),
         "-trace_rtt", "-rtt_freq", "1000", "-timeout", "120s"],
        cwd=workdir, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    rtts = sorted(int(float(line.split(";")[1])) for f in workdir.glob("message_*_rtt.csv")
                  for line in f.read_text().splitlines()[1:] if line)
    if result.returncode != 0:
        print("  sipp:", " | ".join(line for line in result.stderr.splitlines()[:3]), file=sys.stderr)
    return {"ok": result.returncode == 0, "rate": count / elapsed, "elapsed": elapsed,
            "p50": rtts[len(rtts) // 2] if rtts else None,
            "p99": rtts[int(len(rtts) * 0.99)] if rtts else None, "answered": len(rtts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30000)
    parser.add_argument("--limit", type=int, default=200, help="SIPp's concurrent MESSAGEs in flight")
    parser.add_argument("--rounds", type=int, default=1, help="alternate baseline and edge runs; report medians")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp not found: apt-get install -y sip-tester (or make bench)")
    workdir = Path(tempfile.mkdtemp(prefix="imbill-bench-edge-"))
    broker = start_broker(port=free_port(socket.SOCK_STREAM))
    topics = Topics("bench-edge.")
    create_topics(broker.bootstrap_servers, topics.specs())
    for name, text in CONFIGS.items():  # the two environments the edge serves (module doc)
        (workdir / f"{name}.yaml").write_text(text)
        apply_config(workdir / f"{name}.yaml", bootstrap_servers=broker.bootstrap_servers, topics=topics)
    children = []
    runs: dict[str, list[dict]] = {"bare": [], "edge": [], "auth": []}
    try:
        bare_port, edge_port = free_port(), free_port()
        children.append(subprocess.Popen([sys.executable, str(HERE / "bare_responder.py"), str(bare_port)],
                                         stdout=subprocess.DEVNULL))
        env = dict(os.environ, IMBILL_BOOTSTRAP_SERVERS=broker.bootstrap_servers, IMBILL_TOPIC_PREFIX=topics.prefix,
                   IMBILL_ENVIRONMENT="bench-open")
        children.append(subprocess.Popen([sys.executable, "-m", "imbill", "edge", "--port", str(edge_port)],
                                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_answering(bare_port)
        wait_answering(edge_port)
        for _ in range(args.rounds):
            for name, port, child in (("bare", bare_port, children[0]), ("edge", edge_port, children[1]),
                                      ("auth", edge_port, children[1])):
                before = cpu_seconds(child.pid)
                runs[name].append(run_sipp(port, args.count, args.limit, workdir, authenticated=name == "auth"))
                runs[name][-1]["cpu_us"] = (cpu_seconds(child.pid) - before) / args.count * 1e6
        attempts = [r.record for r in read_to_end(broker.bootstrap_servers, topics.attempts) if r.record]
        published = {a["call_id"] for a in attempts if a["user_agent"] == "SIPp/bench"}
        authenticated = {a["call_id"] for a in attempts
                         if a["user_agent"] == "SIPp/auth-bench" and a["environment"] == "bench-auth"}
    finally:
        for child in children:
            child.terminate()
            child.wait()
        broker.stop()
    print(f"edge benchmark: {args.count} MESSAGEs per run, SIPp UDP, {args.limit} in flight"
          + (f", {args.rounds} rounds (medians)" if args.rounds > 1 else ""))
    bare, edge, auth = (_median(runs[name]) for name in ("bare", "edge", "auth"))
    for name, r in (("bare UDP responder (baseline)", bare), ("imbill edge, authentication off", edge),
                    ("imbill edge, digest authentication", auth)):
        print(f"  {name:36s} {r['rate']:9.0f} MESSAGE/s  p50 {r['p50']} ms  p99 {r['p99']} ms"
              f"  answered {r['answered']}  sipp ok: {r['ok']}  CPU {r['cpu_us']:.0f} us/MESSAGE")
    print(f"  ratio edge/baseline: {edge['rate'] / bare['rate']:.2f}")
    print(f"  ratio authenticated/unauthenticated: {auth['rate'] / edge['rate']:.2f} (aim >= 0.5); CPU per MESSAGE "
          f"unauthenticated/authenticated: {edge['cpu_us'] / auth['cpu_us']:.2f}"
          + (" ; per round (back to back): " + ", ".join(f"{a['rate'] / e['rate']:.2f}" for a, e in
                                                       zip(runs["auth"], runs["edge"])) if args.rounds > 1 else ""))
    print(f"  attempts on the topic: {len(published)} of {args.count * args.rounds} unauthenticated and "
          f"{len(authenticated)} of {args.count * args.rounds} authenticated MESSAGEs sent by SIPp")
    if args.rounds > 1:
        for name in ("bare", "edge", "auth"):
            print(f"  {name} rounds: " + ", ".join(f"{r['rate']:.0f}/s p99 {r['p99']} ms" for r in runs[name]))


def _median(runs: list[dict]) -> dict:
    middle = len(runs) // 2
    pick = lambda key: sorted(r[key] for r in runs)[middle]  # noqa: E731 - per-key medians
    return {"rate": pick("rate"), "p50": pick("p50"), "p99": pick("p99"), "answered": pick("answered"),
            "cpu_us": pick("cpu_us"), "ok": all(r["ok"] for r in runs)}


if __name__ == "__main__":
    main()
