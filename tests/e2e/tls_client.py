#!/usr/bin/env python3
"""tls_client.py: clients of a TLS echo server made with Python's ssl module, for the
TLS specs: what luahost must serve, and what it must survive.

Usage: tls_client.py MODE HOST PORT CA [ARGS...]
  echo N SIZE      N concurrent connections each send SIZE random bytes and read them
                   back; byte-exact, or exit 1
  handshakes N     N concurrent handshakes at once, then one echoed line each
  wrongname NAME   verify the server as NAME: exits 0 if the handshake is refused
  split N          one record of N bytes sent a byte per send(); exit 0 if echoed
  plaintext        a plain HTTP request: exit 0 if the server closes without echoing
  garbage N        N random bytes: likewise
  silent           connects and says nothing: exit 0 once the server hangs up
  stall            sends half a ClientHello and waits: likewise
  truncate         echoes a line, then ends TCP without close_notify
  clean            echoes a line, then sends close_notify and closes
Each run is bounded: every socket has a timeout, so it cannot hang.
"""
import os
import random
import resource
import selectors
import socket
import ssl
import sys

TIMEOUT = 10.0


def context(ca, name_check=True):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = name_check
    return ctx


def connect(host, port, ca, name="localhost"):
    raw = socket.create_connection((host, port), timeout=TIMEOUT)
    return context(ca).wrap_socket(raw, server_hostname=name)


def read_exactly(s, n):
    got = bytearray()
    while len(got) < n:
        chunk = s.recv(min(65536, n - len(got)))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def echo(host, port, ca, n, size):
    """n connections in one select loop, each sending while it reads what came back."""
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(n):
        s = connect(host, port, ca)
        s.setblocking(False)
        c = {"i": i, "s": s, "data": random.Random(i).randbytes(size), "sent": 0,
             "got": bytearray()}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    open_ = n
    while open_ > 0:
        events = sel.select(TIMEOUT)
        if not events:
            break
        for key, mask in events:
            c = key.data
            if mask & selectors.EVENT_WRITE and c["sent"] < size:
                try:
                    c["sent"] += c["s"].send(c["data"][c["sent"]:c["sent"] + 65536])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
                if c["sent"] == size:
                    sel.modify(c["s"], selectors.EVENT_READ, c)
            try:
                while len(c["got"]) < size:
                    chunk = c["s"].recv(65536)
                    if not chunk:
                        break
                    c["got"] += chunk
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            if len(c["got"]) >= size:
                sel.unregister(c["s"])
                open_ -= 1
    failures = []
    for c in conns:
        if bytes(c["got"]) != c["data"]:
            failures.append("connection %d: %d bytes back, %d sent, of %d; %s" % (
                c["i"], len(c["got"]), c["sent"], size,
                "the same" if c["data"].startswith(bytes(c["got"])) else "different"))
        c["s"].close()
    return failures


def handshakes(host, port, ca, n):
    ctx = context(ca)
    raws = [socket.create_connection((host, port), timeout=TIMEOUT) for _ in range(n)]
    objs, done = [], 0
    for raw in raws:
        raw.setblocking(False)
        objs.append(ctx.wrap_socket(raw, server_hostname="localhost",
                                    do_handshake_on_connect=False))
    pending = set(range(n))
    sel = selectors.DefaultSelector()
    for i in pending:
        sel.register(objs[i], selectors.EVENT_READ | selectors.EVENT_WRITE, i)
    while pending:
        events = sel.select(TIMEOUT)
        if not events:
            return ["%d handshakes of %d not done" % (len(pending), n)]
        for key, _ in events:
            i = key.data
            try:
                objs[i].do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            sel.unregister(objs[i])
            pending.discard(i)
            done += 1
    failures = []
    for i, s in enumerate(objs):
        s.setblocking(True)
        s.settimeout(TIMEOUT)
        line = b"handshake %d\n" % i
        s.sendall(line)
        if read_exactly(s, len(line)) != line:
            failures.append("connection %d: no echo" % i)
        s.close()
    return failures


def resume(host, port, ca, expect):
    """Two connections in turn, the second offering the session the first was given."""
    ctx, session, reused = context(ca), None, None
    for _ in range(2):
        raw = socket.create_connection((host, port), timeout=TIMEOUT)
        s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        s.sendall(b"line\n")
        if read_exactly(s, 5) != b"line\n":  # TLS 1.3's tickets come before the echo
            return ["no echo"]
        session, reused = s.session, s.session_reused
        s.unwrap().close()
    if reused != (expect == "resumed"):
        return ["the second connection was %sresumed" % ("" if reused else "not ")]
    return []


def server_hangs_up(s):
    """True if the server ends the connection (EOF, reset or an alert) within TIMEOUT."""
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
            if b"HTTP" in data or b"GET" in data:
                return False  # echoed as data: it was not refused
    except (ConnectionResetError, ssl.SSLError):
        return True
    except socket.timeout:
        return False


def split(host, port, ca, n):
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    plain = socket.create_connection((host, port), timeout=TIMEOUT)
    plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    obj = context(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            plain.sendall(outgoing.read())
            incoming.write(plain.recv(65536))
    plain.sendall(outgoing.read())
    data = bytes(random.Random(7).randbytes(n))
    obj.write(data)
    record = outgoing.read()
    for i in range(len(record)):
        plain.send(record[i:i + 1])
    got = b""
    while len(got) < n:
        try:
            got += obj.read(65536)
        except ssl.SSLWantReadError:
            chunk = plain.recv(65536)
            if not chunk:
                break
            incoming.write(chunk)
    plain.close()
    return [] if got == data else ["%d of %d bytes came back right" % (len(got), n)]


def main(argv):
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    mode, host, port, ca, rest = argv[1], argv[2], int(argv[3]), argv[4], argv[5:]
    failures = []
    if mode == "echo":
        failures = echo(host, port, ca, int(rest[0]), int(rest[1]))
    elif mode == "handshakes":
        failures = handshakes(host, port, ca, int(rest[0]))
    elif mode == "wrongname":
        try:
            connect(host, port, ca, rest[0])
            failures = ["the server's certificate was taken for " + rest[0]]
        except ssl.SSLCertVerificationError as e:
            print("refused:", e.verify_message)
    elif mode == "resume":
        failures = resume(host, port, ca, rest[0])
    elif mode == "split":
        failures = split(host, port, ca, int(rest[0]))
    elif mode in ("plaintext", "garbage", "silent", "stall"):
        s = socket.create_connection((host, port), timeout=TIMEOUT)
        if mode == "stall":
            outgoing = ssl.MemoryBIO()
            obj = context(ca).wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="h")
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            hello = outgoing.read()
            s.sendall(hello[:len(hello) // 2])
        elif mode == "plaintext":
            s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        elif mode == "garbage":
            s.sendall(os.urandom(int(rest[0])))
        if not server_hangs_up(s):
            failures = ["the server did not hang up"]
    elif mode in ("truncate", "clean"):
        s = connect(host, port, ca)
        s.sendall(b"line\n")
        if read_exactly(s, 5) != b"line\n":
            failures = ["no echo"]
        if mode == "clean":
            s.unwrap().close()
            return 1 if failures else 0
        raw = socket.socket(fileno=s.detach())  # no close_notify: TCP's FIN alone
        raw.settimeout(TIMEOUT)
        raw.shutdown(socket.SHUT_WR)
        raw.recv(1)
        raw.close()
    else:
        sys.exit(__doc__)
    for f in failures:
        print(f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
