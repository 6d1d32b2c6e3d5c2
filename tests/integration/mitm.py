"""A man-in-the-middle for the namespace tests: ``python mitm.py HOST PORT CERT KEY LOG``.

It listens where the manifest says a party is, terminates TLS with a certificate of its own
(same common name as the party, not the listed one) and logs how many application bytes any
client sent it through that TLS session. A Veil party must refuse it during the handshake.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading


def main(host: str, port: str, cert: str, key: str, log: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_OPTIONAL  # takes whatever client certificate it is offered
    ctx.load_verify_locations(cadata=open(cert).read())
    lock = threading.Lock()
    srv = socket.create_server((host, int(port)))
    open(log, "w").write("listening\n")

    def serve(conn: socket.socket) -> None:
        got = 0
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(10)
                while chunk := tls.recv(65536):
                    got += len(chunk)
            result = f"handshake ok, {got} application bytes\n"
        except (OSError, ssl.SSLError) as exc:
            result = f"handshake failed ({type(exc).__name__}), {got} application bytes\n"
        with lock, open(log, "a") as f:
            f.write(result)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main(*sys.argv[1:6])
