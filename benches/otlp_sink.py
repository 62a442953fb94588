#!/usr/bin/env python3
"""A minimal OTLP/HTTP traces sink for measuring tracing's cost: answers 200 to every POST (an
export to /v1/traces), counts exports and bytes and prints them on SIGTERM. Only listens on
127.0.0.1. Usage: python3 benches/otlp_sink.py PORT"""
import signal, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
stats = {"exports": 0, "bytes": 0}
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        with lock:
            stats["exports"] += 1; stats["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
def bye(*_):
    print(f"exports={stats['exports']} bytes={stats['bytes']}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
srv.serve_forever()
