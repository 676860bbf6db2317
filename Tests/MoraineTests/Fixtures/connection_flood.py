#!/usr/bin/env python3
"""Opens connections to a server as fast as it can and never sends a byte: the attack of a
stranger without the cluster key. It keeps at most HOLD connections open, closing its oldest
to open the next (and re-opening at once what the server closes), for SECONDS seconds, then
prints how many connections it opened.

usage: connection_flood.py tcp HOST PORT SOURCE_ADDRESS HOLD SECONDS
       connection_flood.py unix PATH HOLD SECONDS
"""
import collections
import socket
import sys
import time


def open_one(argv):
    if argv[1] == "tcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((argv[4], 0))
        s.settimeout(1.0)
        s.connect((argv[2], int(argv[3])))
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        s.connect(argv[2])
    return s


def main(argv):
    hold, seconds = (int(argv[5]), float(argv[6])) if argv[1] == "tcp" else (int(argv[3]), float(argv[4]))
    held = collections.deque()
    opened = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            held.append(open_one(argv))
            opened += 1
        except OSError:
            failed += 1
            time.sleep(0.001)
        while len(held) > hold:
            held.popleft().close()
    for s in held:
        s.close()
    print(opened, failed, flush=True)


if __name__ == "__main__":
    main(sys.argv)
