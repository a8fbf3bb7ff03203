#!/usr/bin/env python3
"""multiconn_client.py: the multi-connection client of the Python `selectors` tutorials:
several non-blocking connections registered for EVENT_READ | EVENT_WRITE, each sending
its messages, then shutting down its write side and reading until the server closes.

Usage: multiconn_client.py HOST PORT NUM_CONNS [--random N] [MESSAGE...]
  --random N  each connection also sends N pseudo-random bytes (seeded per connection)
Exit status 0 only if every connection got back exactly the bytes it sent, followed by
end of stream; 1 otherwise, with one line per failed connection on stderr. The whole run
is bounded by a deadline, so it cannot hang.
"""
import random
import selectors
import socket
import sys
import time
import types

DEADLINE_SECONDS = 15.0

sel = selectors.DefaultSelector()


def parse(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    host, port, num_conns, rest = argv[1], int(argv[2]), int(argv[3]), argv[4:]
    random_size, messages = 0, []
    while rest:
        word = rest.pop(0)
        if word == "--random":
            random_size = int(rest.pop(0))
        else:
            messages.append(word.encode())
    if not messages and not random_size:
        messages = [b"Message 1 from client.", b"Message 2 from client."]
    return host, port, num_conns, messages, random_size


def start_connections(host, port, num_conns, messages, random_size):
    connections = []
    for i in range(num_conns):
        connid = i + 1
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((host, port))
        own = list(messages)
        if random_size:
            own.append(random.Random(connid).randbytes(random_size))
        data = types.SimpleNamespace(
            connid=connid,
            sent=b"".join(own),
            messages=own,
            outb=b"",
            received=[],
            recv_total=0,
            write_closed=False,
            eof=False,
            error=None,
        )
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, data=data)
        connections.append(data)
    return connections


def close(sock, data, error=None):
    data.error = data.error or error
    sel.unregister(sock)
    sock.close()


def service_connection(key, mask):
    sock, data = key.fileobj, key.data
    if mask & selectors.EVENT_READ:
        try:
            recv_data = sock.recv(4096)
        except BlockingIOError:
            recv_data = None
        except OSError as e:
            return close(sock, data, f"recv: {e!r}")
        if recv_data:
            data.received.append(recv_data)
            data.recv_total += len(recv_data)
        elif recv_data == b"":
            data.eof = True
            return close(sock, data)
    if mask & selectors.EVENT_WRITE:
        if not data.outb and data.messages:
            data.outb = data.messages.pop(0)
        if data.outb:
            try:
                sent = sock.send(data.outb)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                return close(sock, data, f"send: {e!r}")
            data.outb = data.outb[sent:]
        if not data.outb and not data.messages and not data.write_closed:
            # Everything is sent: tell the server, then only read.
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                return close(sock, data, f"shutdown: {e!r}")
            data.write_closed = True
            sel.modify(sock, selectors.EVENT_READ, data=data)


def main(argv):
    host, port, num_conns, messages, random_size = parse(argv)
    connections = start_connections(host, port, num_conns, messages, random_size)
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while sel.get_map() and time.monotonic() < deadline:
            for key, mask in sel.select(timeout=min(1.0, deadline - time.monotonic())):
                service_connection(key, mask)
        for key in list(sel.get_map().values()):
            close(key.fileobj, key.data, f"timeout after {DEADLINE_SECONDS} s")
    finally:
        sel.close()

    failures = 0
    for data in connections:
        received = b"".join(data.received)
        problem = data.error
        if not problem and received != data.sent:
            problem = f"received {len(received)} bytes, sent {len(data.sent)}" + (
                " (contents differ)" if len(received) == len(data.sent) else "")
        if not problem and not data.eof:
            problem = "no end of stream"
        if problem:
            failures += 1
            print(f"connection {data.connid}: {problem}", file=sys.stderr)
    total = sum(len(d.sent) for d in connections)
    print(f"{num_conns - failures} of {num_conns} connections echoed; {total} bytes sent")
    return 0 if failures == 0 and num_conns > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
