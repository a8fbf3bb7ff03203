# py_echo.py: the echo server of the Python selectors tutorials, as they write it
# (DefaultSelector, the callback in key.data, recv(1024) and a send that "hopes it won't
# block"), with only the prints taken out and the port taken from the command line.
# Usage: python3 py_echo.py PORT
import selectors
import socket
import sys

sel = selectors.DefaultSelector()


def accept(sock, mask):
    conn, addr = sock.accept()  # Should be ready
    conn.setblocking(False)
    sel.register(conn, selectors.EVENT_READ, read)


def read(conn, mask):
    data = conn.recv(1024)  # Should be ready
    if data:
        conn.send(data)  # Hope it won't block
    else:
        sel.unregister(conn)
        conn.close()


sock = socket.socket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(100)
sock.setblocking(False)
sel.register(sock, selectors.EVENT_READ, accept)

while True:
    events = sel.select()
    for key, mask in events:
        callback = key.data
        callback(key.fileobj, mask)
