#!/usr/bin/env python3
"""Bounded flood of spoofed datagrams at a running gateway, with RSS and probe latency.

Sends N datagrams from random spoofed sources in 127.0.0.0/8 (raw socket, IP_HDRINCL: run as
root, loopback only) and reports the gateway's RSS before, right after and some seconds
after the flood, and the latency of a legitimate request (a coap-client-openssl GET) run
repeatedly during the flood.

Kinds:
  hello  DTLS 1.2 ClientHellos without a cookie to the coaps:// port
  junk   one-byte datagrams to the coaps:// port
  nosec  CoAP CON GETs to the coap:// port

Example (the gateway of examples/gateway.toml running as PID $PID):
  sudo scripts/flood.py --pid $PID --kind hello --count 10000 --rate 2000 \\
      --probe 'coap-client-openssl -m get -u serverA -k secretA -B 5 coaps://127.0.0.1:5684/GwConfig/Privileges'

Everything is bounded: --count ≤ 200000, --rate ≤ 50000/s, the whole run ≤ 120 s.
"""

import argparse
import os
import random
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

from procfs import rss_kib

MAX_COUNT = 200_000
MAX_RATE = 50_000
MAX_RUN_S = 120


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ip_udp(src, sport, dst, dport, payload):
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, udp_len)
    csum = checksum(pseudo + udp + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, udp_len, csum)
    total = 20 + udp_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, random.getrandbits(16), 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp + payload


def client_hello():
    """A well-formed DTLS 1.2 ClientHello (PSK and ECDHE-ECDSA suites), no cookie."""
    body = b"\xfe\xfd" + os.urandom(32) + b"\x00" + b"\x00"
    suites = [0xC0A8, 0xC0A4, 0x00A8, 0x00AE, 0xC0AE, 0xC0AC, 0xC02B, 0xC023]
    body += struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites)
    body += b"\x01\x00"
    groups = b"\x00\x0a\x00\x04\x00\x02\x00\x17"          # supported_groups: secp256r1
    points = b"\x00\x0b\x00\x02\x01\x00"                  # ec_point_formats: uncompressed
    sigalgs = b"\x00\x0d\x00\x04\x00\x02\x04\x03"        # ecdsa_secp256r1_sha256
    ems = b"\x00\x17\x00\x00"                            # extended_master_secret
    exts = groups + points + sigalgs + ems
    body += struct.pack("!H", len(exts)) + exts
    n = len(body)
    hs = b"\x01" + n.to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00" + n.to_bytes(3, "big") + body
    return b"\x16\xfe\xfd\x00\x00" + b"\x00" * 6 + struct.pack("!H", len(hs)) + hs


def coap_get(mid):
    token = os.urandom(4)
    # CON GET, TKL 4, Uri-Path "GwConfig"
    return bytes([0x44, 0x01]) + struct.pack("!H", mid) + token + bytes([0xB8]) + b"GwConfig"


def spoofed_source(avoid):
    while True:
        src = f"127.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        if src not in avoid:
            return src, random.randint(1024, 65535)


def probe_loop(cmd, stop, out, interval):
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            r = subprocess.run(shlex.split(cmd), capture_output=True, timeout=15)
            ok = r.returncode == 0 and r.stdout.strip() != b""
        except subprocess.TimeoutExpired:
            ok = False
        out.append((time.monotonic() - t0, ok))
        stop.wait(interval)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pid", type=int, required=True, help="the gateway's PID (for VmRSS)")
    ap.add_argument("--kind", choices=["hello", "junk", "nosec"], required=True)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--rate", type=int, default=2_000, help="datagrams per second")
    ap.add_argument("--target", default=None, help="host:port (default 127.0.0.1:5684, nosec 5683)")
    ap.add_argument("--source", default=None,
                    help="spoof this one source IP (random ports) instead of random 127.x.y.z")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds before the last RSS reading")
    ap.add_argument("--probe", default=None, help="a command timed repeatedly during the flood")
    ap.add_argument("--probe-interval", type=float, default=0.2)
    a = ap.parse_args()
    count = min(a.count, MAX_COUNT)
    rate = max(1, min(a.rate, MAX_RATE))
    default_port = 5683 if a.kind == "nosec" else 5684
    host, port = (a.target or f"127.0.0.1:{default_port}").rsplit(":", 1)
    port = int(port)
    deadline = time.monotonic() + MAX_RUN_S

    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    make = {"hello": client_hello, "junk": lambda: b"\x00",
            "nosec": lambda: coap_get(random.getrandbits(16))}[a.kind]

    before = rss_kib(a.pid)
    probes, stop = [], threading.Event()
    prober = None
    if a.probe:
        prober = threading.Thread(target=probe_loop, args=(a.probe, stop, probes, a.probe_interval))
        prober.start()
    sent, t0, batch = 0, time.monotonic(), max(1, rate // 100)
    while sent < count and time.monotonic() < deadline:
        for _ in range(min(batch, count - sent)):
            if a.source:
                src, sport = a.source, random.randint(1024, 65535)
            else:
                src, sport = spoofed_source({"127.0.0.1", host})
            raw.sendto(ip_udp(src, sport, host, port, make()), (host, 0))
            sent += 1
        ahead = sent / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    elapsed = time.monotonic() - t0
    during = rss_kib(a.pid)
    stop.set()
    if prober:
        prober.join(timeout=20)
    time.sleep(min(a.settle, max(0.0, deadline - time.monotonic())))
    after = rss_kib(a.pid)

    print(f"kind={a.kind} sent={sent} in {elapsed:.1f}s ({sent / elapsed:.0f}/s) to {host}:{port}")
    print(f"rss_kib before={before} after_flood={during} after_settle={after} "
          f"growth_mib={(during - before) / 1024:.1f} (settled {(after - before) / 1024:.1f})")
    if probes:
        lat = sorted(t for t, _ in probes)
        fails = sum(1 for _, ok in probes if not ok)
        print(f"probe n={len(lat)} failed={fails} min={lat[0] * 1000:.0f}ms "
              f"median={statistics.median(lat) * 1000:.0f}ms max={lat[-1] * 1000:.0f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
