#!/usr/bin/env python3
# A Hub double whose CDN sends half of a 4 MiB file, then nothing, forever (for a timing check).
import socket, threading, sys, time
SIZE = 4 << 20
SHA = "a" * 64
def handle(c):
    req = c.recv(65536).decode("latin1")
    line = req.split("\r\n")[0]
    method, path = line.split()[0], line.split()[1]
    if path.startswith("/timm/"):
        c.sendall((f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{PORT}/cdn/blob\r\n"
                   f"x-linked-etag: \"{SHA}\"\r\nx-linked-size: {SIZE}\r\n"
                   "x-repo-commit: 0123456789abcdef0123456789abcdef01234567\r\n"
                   "Content-Length: 0\r\nConnection: close\r\n\r\n").encode())
        c.close(); return
    c.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n".encode())
    if method == "GET":
        c.sendall(b"\0" * (SIZE // 2))
        time.sleep(600)
    c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(16); PORT = s.getsockname()[1]
print(PORT, flush=True)
while True:
    c, _ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
