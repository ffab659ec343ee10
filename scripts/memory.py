#!/usr/bin/env python3
"""Memory load for privgw (issue 6, item 6): what authorised clients can make the gateway hold.

Starts a simulated OMA DM device and a gateway (NoSec UDP on loopback, every request from
127.0.0.1 is ServerA) from the given binary, then, bounded in count and time:

  1. creates --privileges privileges (POST, one at a time, verified on the device);
  2. walks the listing from one session (Block2, and ?after=&limit= pages where the gateway
     pages) and counts block round trips;
  3. from --sessions sessions, asks block 0 of --variants distinct listings each
     (?after=p<k>&limit=<max>), which the Block2 cache keeps for follow-ups;
  4. floods --clients sockets with CON GET /.well-known/core for --flood-seconds
     (windowed, distinct MIDs), which the duplicate cache keeps for replays;

and prints the gateway's VmRSS (from /proc/<pid>/status) after each phase. Standard library
only. Usage: scripts/memory.sh [--binary target/release/privgw] [options]; see --help.
"""

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

from procfs import rss_kib

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST = 1, 2
URI_PATH, CONTENT_FORMAT, URI_QUERY, ACCEPT, BLOCK2 = 11, 12, 15, 17, 23
JSON = 50


def uint(n):
    out = b""
    while n:
        out = bytes([n & 0xFF]) + out
        n >>= 8
    return out


def encode(mtype, code, mid, token, options, payload=b""):
    out = bytearray([0x40 | (mtype << 4) | len(token), code, mid >> 8 & 0xFF, mid & 0xFF])
    out += token
    last = 0
    for num, val in sorted(options, key=lambda o: o[0]):
        delta, last = num - last, num

        def ext(n):
            if n < 13:
                return n, b""
            if n < 269:
                return 13, bytes([n - 13])
            return 14, (n - 269).to_bytes(2, "big")

        dn, de = ext(delta)
        ln, le = ext(len(val))
        out.append(dn << 4 | ln)
        out += de + le + val
    if payload:
        out.append(0xFF)
        out += payload
    return bytes(out)


def decode(data):
    """(type, code, mid, token, {option: [values]}, payload) or None."""
    if len(data) < 4:
        return None
    tkl = data[0] & 0x0F
    mtype, code, mid = data[0] >> 4 & 3, data[1], data[2] << 8 | data[3]
    token, i, num, opts = data[4 : 4 + tkl], 4 + tkl, 0, {}
    while i < len(data) and data[i] != 0xFF:
        d, ln = data[i] >> 4, data[i] & 0x0F
        i += 1
        if d == 13:
            d, i = data[i] + 13, i + 1
        elif d == 14:
            d, i = int.from_bytes(data[i : i + 2], "big") + 269, i + 2
        if ln == 13:
            ln, i = data[i] + 13, i + 1
        elif ln == 14:
            ln, i = int.from_bytes(data[i : i + 2], "big") + 269, i + 2
        num += d
        opts.setdefault(num, []).append(data[i : i + ln])
        i += ln
    payload = data[i + 1 :] if i < len(data) else b""
    return mtype, code, mid, token, opts, payload


def code_str(code):
    return f"{code >> 5}.{code & 0x1F:02}"


def path_options(path):
    path, _, query = path.partition("?")
    opts = [(URI_PATH, s.encode()) for s in path.strip("/").split("/") if s]
    opts += [(URI_QUERY, q.encode()) for q in query.split("&") if q]
    return opts


class Client:
    """One UDP socket = one session at the gateway; one CON at a time."""

    def __init__(self, gateway, mid=0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(gateway)
        self.mid = mid

    def request(self, code, path, options=(), payload=b"", timeout=10.0):
        self.mid = (self.mid + 1) & 0xFFFF
        token = self.mid.to_bytes(2, "big")
        msg = encode(CON, code, self.mid, token, path_options(path) + list(options), payload)
        deadline = time.monotonic() + timeout
        resend = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= resend:
                self.sock.send(msg)
                resend = time.monotonic() + 2.0
            r, _, _ = select.select([self.sock], [], [], 0.2)
            if r:
                try:
                    got = decode(self.sock.recv(65536))
                except ConnectionRefusedError:
                    continue
                if got and got[3] == token:
                    return got
        raise TimeoutError(f"no answer to {path}")

    def get_blocks(self, path, first_only=False):
        """GET with Block2 (1024-byte blocks); (code, body, round trips)."""
        body, num, trips = b"", 0, 0
        while True:
            block = uint(num << 4 | 6)
            _, code, _, _, opts, payload = self.request(
                GET, path, [(ACCEPT, uint(JSON)), (BLOCK2, block)]
            )
            trips += 1
            body += payload
            b2 = opts.get(BLOCK2)
            more = bool(b2 and int.from_bytes(b2[0], "big") & 0x8)
            if first_only or not more or code >> 5 != 2 or trips > 100_000:
                return code, body, trips
            num += 1


def report(phase, pid, extra=""):
    kib = rss_kib(pid)
    print(f"{phase:<28} VmRSS {kib / 1024:8.1f} MiB  {extra}", flush=True)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(binary, workdir, args):
    dev_port, gw_port = free_port(), free_port()
    with open(os.path.join(workdir, "dev.toml"), "w") as f:
        f.write(
            f'id = "devC"\nlisten = "coap://127.0.0.1:{dev_port}"\nprofile = "dm"\n'
            '[acls]\n"/" = "Get=*"\n"/3" = "Get=*&Replace=ServerA"\n"/3/0" = ""\n'
        )
    with open(os.path.join(workdir, "gw.toml"), "w") as f:
        f.write(
            f'[gateway]\nlisten = ["coap://127.0.0.1:{gw_port}"]\nstore = "gw.redb"\n'
            '[[servers]]\nid = "ServerA"\nssid = 101\nnosec_address = "127.0.0.1"\n'
            f'[[devices]]\nid = "devC"\nuri = "coap://127.0.0.1:{dev_port}"\nprofile = "dm"\n'
            + args.extra_toml.replace("\\n", "\n")
            + "\n"
        )
    log = open(os.path.join(workdir, "log.txt"), "w")
    env = dict(os.environ, RUST_LOG="warn")
    dev = subprocess.Popen([binary, "device", "--config", "dev.toml"], cwd=workdir, stderr=log, env=env)
    gw = subprocess.Popen([binary, "serve", "--config", "gw.toml"], cwd=workdir, stderr=log, env=env)
    gateway = ("127.0.0.1", gw_port)
    probe = Client(gateway)
    for _ in range(100):
        try:
            probe.request(GET, "/.well-known/core", timeout=0.3)
            return dev, gw, gateway
        except TimeoutError:
            time.sleep(0.1)
    raise SystemExit("gateway did not start; see " + log.name)


def create(gateway, n, max_seconds):
    c = Client(gateway, 1000)
    body = json.dumps(
        {"TargetID": "devC", "TargetType": "Device", "URI": "/3/0", "ACL": "Get=ServerA"}
    ).encode()
    made, until, last = 0, time.monotonic() + max_seconds, ""
    while made < n and time.monotonic() < until:
        _, code, _, _, _, payload = c.request(POST, "/GwConfig/Privileges", [(CONTENT_FORMAT, uint(JSON))], body)
        if code != 0x41:
            last = f"stopped at {code_str(code)}: {payload[:120].decode(errors='replace')}"
            break
        made += 1
    return made, last


def walk(gateway, max_limit):
    """Every page of the listing; (entries, round trips, seconds, bytes)."""
    c = Client(gateway, 5000)
    t0, trips, total, entries = time.monotonic(), 0, 0, 0
    path = "/GwConfig/Privileges"
    for _ in range(10_000):
        code, body, n = c.get_blocks(path)
        trips, total = trips + n, total + len(body)
        if code >> 5 != 2:
            break
        doc = json.loads(body)
        if "Privileges" in doc and isinstance(doc["Privileges"], dict):
            entries += len(doc["Privileges"])
            if "Next" not in doc:
                break
            path = f"/GwConfig/Privileges?after={doc['Next']}&limit={max_limit}"
        else:
            entries += len(doc)
            break
    return entries, trips, time.monotonic() - t0, total


def cache_bodies(gateway, sessions, variants, max_limit):
    clients = [Client(gateway, 10_000 + 1000 * i) for i in range(sessions)]
    sent = 0
    for k in range(variants):
        for c in clients:
            c.get_blocks(f"/GwConfig/Privileges?after=p{k + 1}&limit={max_limit}", first_only=True)
            sent += 1
    return clients, sent


def flood(gateway, clients, seconds, window):
    socks = []
    for i in range(clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(gateway)
        s.setblocking(False)
        socks.append(s)
    mids = [0] * clients
    outstanding = [0] * clients
    opts = path_options("/.well-known/core")
    sent = answered = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for i, s in enumerate(socks):
            while outstanding[i] < window:
                mids[i] = (mids[i] + 1) & 0xFFFF
                try:
                    s.send(encode(CON, GET, mids[i], b"", opts))
                except BlockingIOError:
                    break
                outstanding[i] += 1
                sent += 1
        ready, _, _ = select.select(socks, [], [], 0.05)
        for s in ready:
            i = socks.index(s)
            while True:
                try:
                    s.recv(2048)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                outstanding[i] = max(0, outstanding[i] - 1)
                answered += 1
        # Lost datagrams must not stall a socket forever.
        if not ready:
            outstanding = [0] * clients
    return sent, answered


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default="target/release/privgw")
    p.add_argument("--privileges", type=int, default=3000)
    p.add_argument("--sessions", type=int, default=6)
    p.add_argument("--variants", type=int, default=16)
    p.add_argument("--max-limit", type=int, default=1000, help="limit= asked in pages")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--window", type=int, default=4, help="CONs in flight per flood client")
    p.add_argument("--flood-seconds", type=float, default=20)
    p.add_argument("--settle-seconds", type=float, default=0, help="wait, then RSS again")
    p.add_argument("--max-seconds", type=float, default=300, help="bound on privilege creation")
    p.add_argument("--extra-toml", default="", help="appended to the gateway config, \\n for newlines")
    args = p.parse_args()
    binary = os.path.abspath(args.binary)
    with tempfile.TemporaryDirectory() as workdir:
        dev, gw, gateway = start(binary, workdir, args)
        try:
            report("started", gw.pid)
            t0 = time.monotonic()
            made, why = create(gateway, args.privileges, args.max_seconds)
            report("created privileges", gw.pid, f"{made} in {time.monotonic() - t0:.1f} s {why}")
            entries, trips, secs, size = walk(gateway, args.max_limit)
            report("listing walked", gw.pid, f"{entries} entries, {size} bytes, {trips} block round trips, {secs * 1000:.0f} ms")
            kept, sent = cache_bodies(gateway, args.sessions, args.variants, args.max_limit)
            report("Block2 bodies requested", gw.pid, f"{sent} listings (block 0) from {args.sessions} sessions")
            sent, answered = flood(gateway, args.clients, args.flood_seconds, args.window)
            rate = answered / args.flood_seconds
            report("request flood", gw.pid, f"{args.clients} clients, {sent} sent, {answered} answered ({rate:.0f}/s)")
            if args.settle_seconds > 0:
                time.sleep(args.settle_seconds)
                report(f"after {args.settle_seconds:.0f} s idle", gw.pid)
            del kept
        finally:
            for proc in (gw, dev):
                proc.terminate()
            for proc in (gw, dev):
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    sys.exit(main())
