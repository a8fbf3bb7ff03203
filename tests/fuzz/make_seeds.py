#!/usr/bin/env python3
"""make_seeds.py: writes the seed corpus in tests/fuzz/corpus/ from readable scenarios,
in the input encodings of fuzz_selector.c, fuzz_buffer.c and fuzz_tls.c. Run it from anywhere after
changing a scenario or an encoding; the fuzzers grow the corpus from these seeds."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- fuzz_selector: byte 0 picks the backend; two socketpairs are open to start with.
# fd operands: "-1", "high" (FD_SETSIZE + 5), or N for the N-th fd number the input used
# (0-3 are the two starting socketpairs, 0-1 and 2-3). A "!" after an operation adds a
# select after it.
SEL_OPS = {"open": 0, "close": 1, "dup": 2, "dup2": 3, "write": 4, "drain": 5, "select": 6,
           "host": 7, "reg": 8, "mod": 9, "unreg": 10, "pause": 11}
EVENTS = {"r": 0, "w": 1, "rw": 2, "0": 0xE0, "4": 0xE4}  # 0 and 4 are invalid


def sel_fd(word):
    specials = {"-1": 0, "high": 1}  # pick_fd: a byte below 16 picks -1 or HIGH_FD
    return specials[word] if word in specials else 16 + int(word)


def selector_input(backend, text):
    out = [backend]
    for ins in text.split(";"):
        op, *args = ins.split()
        again = op.endswith("!")
        op = op.rstrip("!")
        out.append(SEL_OPS[op] | (0x80 if again else 0))
        if op in ("close", "dup", "write", "drain"):
            out.append(sel_fd(args[0]))
        elif op == "dup2":
            out += [sel_fd(args[0]), sel_fd(args[1])]
        elif op == "unreg":
            out += [sel_fd(args[0]), 0]
        elif op in ("host", "reg", "mod", "pause"):
            out += [sel_fd(args[0]), EVENTS[args[1]]]
    return bytes(out)


SELECTOR_SEEDS = {
    # A batched event of a slot released and reused (fd closed, number reopened) is stale.
    "reuse": "write 1; reg 0 r; select; unreg 0; close 0; open; write 4; reg 0 r; select",
    # Host interest outlives unregister; paused READ is withheld but kept as the events.
    "host-paused": "reg 0 rw; host 0 w; pause 0 r; select; unreg 0; select; host 0 0; select",
    # A registered fd closed while a dup keeps its socket, then the number dup2'd back.
    "dup-close": "reg 0 r; dup 0; close 0; write 1; select; unreg 0; dup2 4 0; reg 0 r; select",
    # Error paths: fd -1, HIGH_FD (select: ERANGE), bad events, unknown fds.
    "errors": "reg -1 r; reg high r; mod 0 r; reg 0 0; reg 0 4; unreg 0; pause 0 r;"
              " dup2 0 high; reg high r; select; unreg high; close high",
    # Changes in the middle of a batch: modify, pause, unregister, close and reopen.
    "mid-batch": "write 1; write 3; reg 0 rw; reg 2 r; host 1 w; select; mod 0 w; pause 2 r;"
                 " unreg 1; host 1 0; close 2; open; reg 2 r; drain 0; select",
    # The backends' bookkeeping: remove one of several watched fds, then change the others.
    "churn": "reg! 0 r; reg! 1 w; reg! 2 rw; reg! 3 r; unreg! 0; mod! 3 w; unreg! 2; mod! 1 r;"
             " write! 0; close! 3; unreg! 3; reg! 0 r",
}

# ---- fuzz_buffer: byte 0 even for buffer.c alone, odd for conn.c over a socketpair.
# conn: then SO_SNDBUF (1024 + 64 * byte) and the limit (two bytes, see pick_limit). Write
# lengths are one byte: below 128 as is, 128-239 times 97 above 128, 240-255 times 8191.
W, FLUSH, SELECT, READALL = 0, 3, 6, 9
SHUT, DROP, CLOSE_PEER, TOGGLE_REG = [7, 0], [7, 1], [7, 2], [7, 3]


def w(length_byte):
    return [W, length_byte]


BUFFER_SEEDS = {
    "conn-backpressure": [1, 0, 0x40, 0x00] + w(0xFF) + w(0xC0) + w(0xC0) + w(0xC0)
    + [SELECT, READALL, FLUSH, READALL, SELECT, READALL, FLUSH, 4, 20, READALL],
    "conn-shutdown": [1, 0, 0x10, 0x00] + w(0xA0) + w(0xA0) + SHUT + w(10)
    + [READALL, FLUSH, READALL, FLUSH, READALL, READALL],
    "conn-drop-close": [1, 4, 0x20, 0x00] + w(0xC8) + w(0xC8) + DROP + [READALL] + w(50)
    + CLOSE_PEER + w(30) + [FLUSH, SELECT],
    "conn-setlimit": [1, 0, 0x30, 0x00] + TOGGLE_REG + w(0xE0) + w(0xE0) + [8, 0, 0] + w(5)
    + [FLUSH, READALL, FLUSH, READALL] + TOGGLE_REG,
    "conn-tiny-limit": [1, 0, 0, 0] + w(1) + w(0xFF) + w(2) + [READALL] + w(0xFF)
    + [READALL, FLUSH],
    # buffer.c: 0-1 append (length byte), 2 consume (byte), 3 oversized append, 4 free.
    "buffer-compact": [0, 0, 100, 0, 0xC0, 2, 0xFE, 0, 0xC0, 1, 0xF2, 2, 0xE0, 0, 0xC0, 2, 255,
                       0, 5, 3, 1, 3, 0, 4, 0, 7],
}


def write_all(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


# ---- fuzz_tls: byte 0 even: a handshake, then operations (op byte % 5): 0 the client
# writes (length = a * 97 + b, then that many bytes), 2 the server reads (its kernel read
# cut at 1 + c * 64 bytes, asking for 1 + n * 256), 3 raw bytes into the stream (length,
# bytes), 4 close_notify. Byte 0 odd: raw bytes from the start (length, bytes), each
# chunk followed by a server read.
def tls_write(data):
    return [0, len(data) // 97, len(data) % 97, *data]


def tls_read(cut=255, n=255):
    return [2, cut, n]


TLS_SEEDS = {
    "echo": [0, *tls_write(b"hello"), *tls_read()],
    "cut-reads": [0, *tls_write(bytes(range(256)) * 8), *tls_read(0, 3) * 40, *tls_read()],
    "small-reads": [0, *tls_write(b"x" * 3000), *tls_read(255, 0) * 30],
    "close-notify": [0, *tls_write(b"bye"), 4, *tls_read(), *tls_read()],
    "spliced": [0, *tls_write(b"abc"), 3, 4, *b"\x17\x03\x03\x00", *tls_read()],
    "raw-plaintext": [1, 18, *b"GET / HTTP/1.0\r\n\r\n", 0, 0],
    "raw-header-only": [1, 5, 0x16, 0x03, 0x01, 0x40, 0x00, 0, 0],
}


def main():
    backends = ["epoll", "poll", "select"]  # the order of sel_backend_names() on Linux
    write_all("fuzz_selector", {f"{name}-{be}": selector_input(i, text)
                                for i, be in enumerate(backends)
                                for name, text in SELECTOR_SEEDS.items()})
    write_all("fuzz_buffer", {name: bytes(b) for name, b in BUFFER_SEEDS.items()})
    write_all("fuzz_tls", {name: bytes(b) for name, b in TLS_SEEDS.items()})


if __name__ == "__main__":
    main()
