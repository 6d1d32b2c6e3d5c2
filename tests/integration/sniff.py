"""A packet sniffer for the namespace tests: ``python sniff.py OUT STOP``.

Run inside the bridge's namespace, it records every frame on every interface there (the veth
ends of all hosts: what an attacker on the link sees) into ``OUT`` until the file ``STOP``
exists (at most 300 s). Linux only, needs CAP_NET_RAW.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time

ETH_P_ALL = 0x0003


def main(out: str, stop: str) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    deadline = time.monotonic() + 300
    with open(out + ".tmp", "wb") as f:
        open(out + ".ready", "w").close()
        while not os.path.exists(stop) and time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], 0.1)
            while ready:
                f.write(sock.recv(1 << 16))
                ready, _, _ = select.select([sock], [], [], 0)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
