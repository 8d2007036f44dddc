"""serve_util.py - helpers the benchmark scripts share to run a server on
loopback: a free TCP port, a wait until /health answers 200, and a stop."""
import http.client
import socket
import subprocess
import time


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_health(port, proc, timeout, poll=0.2):
    """True once GET /health on port answers 200; False when proc exits first
    or timeout seconds pass."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(poll)
    return False


def stop(proc, timeout=20):
    """Terminates proc (SIGTERM: a server's graceful shutdown), killing it
    when it has not exited after timeout seconds; waits for it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
