#!/usr/bin/env python3
"""hostile.py: clients that misbehave at the TCP level, for the reliability specs.

Usage: hostile.py MODE PORT COUNT [SIZE]
  close          COUNT times: connect, then close at once (FIN)
  reset          COUNT times: connect, then reset at once (SO_LINGER 0: RST, no FIN)
  send-reset     COUNT times: connect, send SIZE bytes, reset at once, so the server's
                 reply meets a reset connection (EPIPE / ECONNRESET on its send)
  reset-mid-reply COUNT times: connect with a small receive buffer, send without reading
                 until the server stops taking bytes (at most SIZE), read one byte of the
                 reply, then reset while the server still has output for us
Talks to 127.0.0.1 only. Prints one summary line; exits 0 unless a connect failed or the
whole run passed its deadline (60 s).
"""
import socket
import struct
import sys
import time

DEADLINE = time.monotonic() + 60.0
LINGER_0 = struct.pack("ii", 1, 0)


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
    sock.close()


def connect(port, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5.0)
    sock.connect(("127.0.0.1", port))
    return sock


def reset_mid_reply(port, size):
    sock = connect(port, rcvbuf=4096)
    sock.setblocking(False)
    chunk, sent, stalled_since = b"r" * 65536, 0, None
    while sent < size:
        try:
            sent += sock.send(chunk[: size - sent])
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 0.2:
                break  # the server stopped reading: its output is backed up
            time.sleep(0.005)
    sock.settimeout(5.0)
    sock.recv(1)  # the reply has begun
    reset(sock)
    return sent


def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    mode, port, count = argv[1], int(argv[2]), int(argv[3])
    size = int(argv[4]) if len(argv) > 4 else 1024
    started = time.monotonic()
    total = 0
    for i in range(count):
        if time.monotonic() > DEADLINE:
            sys.exit("%s: deadline passed after %d of %d" % (mode, i, count))
        try:
            if mode == "close":
                connect(port).close()
            elif mode == "reset":
                reset(connect(port))
            elif mode == "send-reset":
                sock = connect(port)
                sock.sendall(b"x" * size)
                reset(sock)
            elif mode == "reset-mid-reply":
                total += reset_mid_reply(port, size)
            else:
                sys.exit("unknown mode " + mode)
        except OSError as e:
            sys.exit("%s: connection %d of %d failed: %s" % (mode, i + 1, count, e))
    print("ok %s %d %.3f %d" % (mode, count, time.monotonic() - started, total))


if __name__ == "__main__":
    main(sys.argv)
