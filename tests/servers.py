"""Real servers on 127.0.0.1 for tests: the same ones `make run` embeds (hllm.services).

Fixtures in conftest.py start them once per session and stop them after.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hllm.services import EMBEDDED_S3_CREDENTIALS, free_port, mlflow_server, s3_server, wait_for

__all__ = ["S3_TEST_CREDENTIALS", "free_port", "mlflow_server", "s3_server",
           "s3_server_with_auth", "wait_for"]

# What test clients put in their environment for the moto endpoint.
S3_TEST_CREDENTIALS = dict(EMBEDDED_S3_CREDENTIALS)


@contextmanager
def s3_server_with_auth(log_dir: Path) -> Iterator[str]:
    """A second moto S3 server that checks credentials (IAM auth on from the first request)."""
    with s3_server(log_dir, auth=True) as url:
        yield url


class FaultyProxy:
    """An HTTP proxy on 127.0.0.1 in front of `upstream` that answers 503 SlowDown to the
    requests `fail(method, path, n)` picks (n counts every request so far, from 0).

    Real sockets and a real server behind it: what a flaky S3 endpoint looks like to boto3,
    or, refusing everything from some request on, an MLflow server that died there.
    """

    def __init__(self, upstream: str, fail):
        import http.server
        import threading
        import urllib.parse

        self.upstream = urllib.parse.urlparse(upstream)
        self.fail, self.requests, self.failed = fail, [], 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                import http.client

                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()  # requests sends an empty file this way
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else None
                with proxy.lock:
                    n = len(proxy.requests)
                    proxy.requests.append((self.command, self.path))
                    refuse = proxy.fail(self.command, self.path, n)
                    proxy.failed += refuse
                if refuse:
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown'
                               b'</Code><Message>Reduce your request rate.</Message></Error>')
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                  timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "transfer-encoding")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _read_chunked(self) -> bytes:
                body = b""
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()  # the CRLF after each chunk
                self.rfile.readline()  # the CRLF after the last, empty chunk
                return body

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultyProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
