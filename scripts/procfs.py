"""Small /proc readers shared by the load scripts (flood.py, memory.py)."""


def rss_kib(pid):
    """The VmRSS of process `pid` in KiB, or -1 if /proc does not say."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1
