#!/usr/bin/env python3
"""blocking_client.py: the first client of the Python socket tutorials: a plain blocking
socket that sends its messages and reads back exactly as many bytes.

Usage: blocking_client.py HOST PORT [--random N] [MESSAGE...]
  --random N  also send N pseudo-random bytes (seeded, so every run sends the same)
Exit status 0 only if exactly the bytes sent came back; 1 otherwise, with the reason on
stderr. Every blocking call has a timeout, so it cannot hang.
"""
import random
import socket
import sys

TIMEOUT = 5.0


def parse(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    host, port, rest = argv[1], int(argv[2]), argv[3:]
    messages = []
    while rest:
        word = rest.pop(0)
        if word == "--random":
            size = int(rest.pop(0))
            messages.append(random.Random(7342).randbytes(size))
        else:
            messages.append(word.encode())
    return host, port, messages or [b"Hello, world"]


def recv_exactly(sock, n):
    """Reads n bytes; stops early only at end of stream."""
    chunks, got = [], 0
    while got < n:
        data = sock.recv(min(65536, n - got))
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def main(argv):
    host, port, messages = parse(argv)
    expected = b"".join(messages)
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        for message in messages:
            sock.sendall(message)
        received = recv_exactly(sock, len(expected))
    if received != expected:
        print(f"received {len(received)} bytes, expected {len(expected)}"
              f"{'' if len(received) != len(expected) else ' (contents differ)'}",
              file=sys.stderr)
        return 1
    print(f"received {len(received)} bytes back")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except OSError as e:  # timeouts included
        print(f"blocking_client: {e!r}", file=sys.stderr)
        sys.exit(1)
