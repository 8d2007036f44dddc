"""rawhttp.py - shared by the raw-socket test clients in test/py (imported as a
sibling module: they run as `python3 test/py/<name>.py`).

read_to_eof(sock): reads until the server closes, and says how the connection
ended: "eof" (a clean close), "reset" (ECONNRESET) or "timeout" (the socket's
timeout passed). Returns (bytes read, how).
"""
import socket


def read_to_eof(sock):
    raw, how = b"", "eof"
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                break
            raw += d
    except ConnectionResetError:
        how = "reset"
    except socket.timeout:
        how = "timeout"
    return raw, how
