#!/bin/sh
# Memory load for privgw (issue 6, item 6): privileges, big listings from several sessions,
# a request flood; prints the gateway's VmRSS after each phase. Bounded in count and time.
#   scripts/memory.sh --binary target/release/privgw            # defaults: 3000 privileges,
#   scripts/memory.sh --binary target/debug/privgw --help       # 6 sessions x 16 listings,
#                                                               # 64 clients x 20 s flood
set -eu
exec python3 "$(dirname "$0")/memory.py" "$@"
