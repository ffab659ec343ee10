#!/usr/bin/env python3
"""TCP/TLS slot load: idle sockets vs. a legitimate TLS request (issue 6, item 5).

Starts `privgw serve` with a `coaps+tcp://` and a `coap+tcp://` listener on loopback (certs from
certs/), opens N idle TCP sockets (they never send a byte) from one or several 127.x source
addresses, and meanwhile times a legitimate request from 127.0.0.1:

  * `privgw ctl -g coaps+tcp://...` as ServerA (certs/serverA.pem), `list`
  * `privgw ctl -g coap+tcp://...` as ServerB (NoSec, known by 127.0.0.1), `list`

Each legitimate request is retried (a refused connection fails fast) until it succeeds or
--budget seconds pass; the figure reported is the time to the first success. The script also
reports how many idle sockets the gateway has closed after --hold seconds.

Bounded: at most 2000 idle sockets, at most 64 sources, every wait has a timeout, and the
gateway is killed at the end.

Example (see the README, "Load tool"):
  python3 scripts/tcp_slots.py --privgw target/debug/privgw --idle 250 --sources 1 --target tls
"""

import argparse
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CERTS = os.path.join(ROOT, "certs")
MAX_IDLE = 2000
MAX_SOURCES = 64


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(directory, tls_port, tcp_port, limits):
    path = os.path.join(directory, "gateway.toml")
    with open(path, "w") as f:
        f.write(f"""[gateway]
listen = ["coaps+tcp://127.0.0.1:{tls_port}", "coap+tcp://127.0.0.1:{tcp_port}"]
store = "{os.path.join(directory, 'privgw.redb')}"
cert = "{CERTS}/gateway.pem"
key = "{CERTS}/gateway.key"
ca = "{CERTS}/ca.pem"

[limits]
{limits}

[[servers]]
id = "ServerA"
ssid = 101
cert_match = "san-dns:serverA.example"

[[servers]]
id = "ServerB"
ssid = 102
nosec_address = "127.0.0.1"
""")
    return path


def wait_listening(port, deadline):
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def open_idle(n, sources, port, connect_wait):
    """Non-blocking connects from 127.0.0.2.. (round robin); returns the connected sockets."""
    sel = selectors.DefaultSelector()
    pending = []
    for i in range(n):
        src = f"127.0.0.{2 + i % sources}"
        s = socket.socket()
        s.setblocking(False)
        s.bind((src, 0))
        err = s.connect_ex(("127.0.0.1", port))
        if err not in (0, 115):  # EINPROGRESS
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE)
        pending.append(s)
    connected = []
    deadline = time.monotonic() + connect_wait
    waiting = len(pending)
    while waiting and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            s = key.fileobj
            sel.unregister(s)
            waiting -= 1
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected.append(s)
            else:
                s.close()
    # Still in SYN state (backlog full): keep them too, they occupy the backlog.
    for s in pending:
        if s not in connected and s.fileno() != -1:
            try:
                sel.unregister(s)
            except (KeyError, ValueError):
                pass
            connected.append(s)
    sel.close()
    return connected


def count_closed(socks):
    """Idle sockets the gateway has closed (EOF or reset; a refusal counts too)."""
    closed = 0
    for s in socks:
        try:
            for _ in range(64):  # drain what the gateway sent (its CSM, an Abort), then EOF
                if s.recv(65536, socket.MSG_DONTWAIT) == b"":
                    closed += 1
                    break
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def ctl(privgw, uri, tls):
    cmd = [privgw, "ctl", "-g", uri]
    if tls:
        cmd += ["--cert", f"{CERTS}/serverA.pem", "--key", f"{CERTS}/serverA.key",
                "--ca", f"{CERTS}/ca.pem"]
    cmd += ["list"]
    return cmd


def timed_request(cmd, budget):
    """Seconds to the first successful run of `cmd` (retried), attempts, and the last error."""
    start = time.monotonic()
    attempts = 0
    last = ""
    while time.monotonic() - start < budget:
        attempts += 1
        left = budget - (time.monotonic() - start)
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=max(1.0, left), text=True)
        except subprocess.TimeoutExpired:
            last = "timeout"
            break
        if r.returncode == 0:
            return time.monotonic() - start, attempts, ""
        last = (r.stdout + r.stderr).strip().splitlines()[-1:] or ["exit %d" % r.returncode]
        last = last[0][:160]
        time.sleep(0.05)
    return None, attempts, last


def report(label, result):
    secs, attempts, err = result
    if secs is None:
        print(f"  {label}: FAILED after {attempts} attempt(s): {err}")
    else:
        print(f"  {label}: {secs * 1000:.0f} ms ({attempts} attempt(s))")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--privgw", default=os.path.join(ROOT, "target", "debug", "privgw"))
    p.add_argument("--idle", type=int, default=250, help="idle sockets to open (max 2000)")
    p.add_argument("--sources", type=int, default=1,
                   help="source addresses 127.0.0.2.. used round robin (max 64)")
    p.add_argument("--target", choices=["tls", "tcp", "both"], default="tls",
                   help="which listener the idle sockets go to")
    p.add_argument("--hold", type=float, default=5.0, help="seconds to hold the idle sockets")
    p.add_argument("--budget", type=float, default=30.0,
                   help="seconds one legitimate request may take, retries included")
    p.add_argument("--limits", default="",
                   help="[limits] TOML lines, e.g. 'tcp_max_per_ip = 8' (\\n between lines)")
    args = p.parse_args()
    if not (0 <= args.idle <= MAX_IDLE and 1 <= args.sources <= MAX_SOURCES):
        sys.exit(f"--idle must be 0..{MAX_IDLE}, --sources 1..{MAX_SOURCES}")

    tls_port, tcp_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as d:
        config = write_config(d, tls_port, tcp_port, args.limits.replace("\\n", "\n"))
        log = open(os.path.join(d, "gateway.log"), "w+")
        gw = subprocess.Popen([args.privgw, "serve", "--config", config],
                              stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            if not (wait_listening(tls_port, deadline) and wait_listening(tcp_port, deadline)):
                sys.exit("the gateway did not start listening")
            tls_cmd = ctl(args.privgw, f"coaps+tcp://127.0.0.1:{tls_port}", True)
            tcp_cmd = ctl(args.privgw, f"coap+tcp://127.0.0.1:{tcp_port}", False)
            print(f"idle={args.idle} sources={args.sources} target={args.target} "
                  f"limits={args.limits!r}")
            print("baseline (no idle sockets):")
            report("TLS list", timed_request(tls_cmd, args.budget))
            report("TCP list", timed_request(tcp_cmd, args.budget))

            ports = {"tls": [tls_port], "tcp": [tcp_port], "both": [tls_port, tcp_port]}
            socks = []
            started = time.monotonic()
            for port in ports[args.target]:
                socks += open_idle(args.idle, args.sources, port, connect_wait=3.0)
            print(f"opened {len(socks)} idle socket(s) in {time.monotonic() - started:.2f} s")
            print("with the idle sockets held:")
            report("TLS list", timed_request(tls_cmd, args.budget))
            report("TCP list", timed_request(tcp_cmd, args.budget))
            rest = args.hold - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)
            closed = count_closed(socks)
            print(f"after {time.monotonic() - started:.1f} s the gateway had closed "
                  f"{closed} of {len(socks)} idle socket(s)")
            for s in socks:
                s.close()
        finally:
            gw.kill()
            gw.wait(timeout=10)
            log.seek(0)
            lines = log.read().splitlines()
            noisy = [line for line in lines if "refus" in line or "pre-auth" in line
                     or "handshake" in line]
            print(f"gateway log: {len(lines)} line(s), {len(noisy)} about refusals/handshakes")
            for line in noisy[:3]:
                print("   ", line[:200])
            for line in (line for line in lines if "refused connections in" in line):
                print("    summary:", line[:300])


if __name__ == "__main__":
    main()
