"""The machine's listening TCP sockets, read from /proc (Linux): which address each listens on, and
which process holds it."""

from __future__ import annotations

import ipaddress
import os


def listening_sockets() -> list[tuple[str, int, str]]:
    """Every listening TCP socket: (address, port, inode)."""
    out = []
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            if v6:
                ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
                host = str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)
            else:
                host = str(ipaddress.IPv4Address(raw[::-1]))
            out.append((host, int(hex_port, 16), fields[9]))
    return out


def listening_addresses() -> list[tuple[str, int]]:
    """Every listening TCP socket's (address, port)."""
    return [(host, port) for host, port, _ in listening_sockets()]


def listeners_beyond_loopback() -> list[tuple[str, int, int, str]]:
    """Every listening TCP socket not on loopback: (address, port, pid, command line)."""
    inodes = {inode: (host, port) for host, port, inode in listening_sockets()
              if not ipaddress.ip_address(host).is_loopback}
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in inodes:
                out.append((*inodes[link[8:-1]], int(pid), cmd[:120]))
    return out
