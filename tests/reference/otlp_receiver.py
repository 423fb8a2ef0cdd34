"""An OTLP/HTTP trace receiver that decodes what it gets with the official protobuf
definitions (Python `opentelemetry-proto`), independent of the gateway's encoder.

  otlp_receiver.py PORT [--delay SECONDS] [--status CODE]

Prints "ready", then one JSON line per span received:
  {"service": ..., "name": ..., "kind": "SERVER"|"CLIENT"|..., "trace_id": hex, "span_id": hex,
   "parent_span_id": hex or "", "attributes": {...}, "status": "UNSET"|"OK"|"ERROR",
   "status_message": ..., "events": [{"name": ..., "attributes": {...}}], "start": ns, "end": ns,
   "content_type": ...}
With --delay it answers each export that many seconds late; with --status, with that status.
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

port = int(sys.argv[1])
delay = float(sys.argv[sys.argv.index("--delay") + 1]) if "--delay" in sys.argv else 0.0
status = int(sys.argv[sys.argv.index("--status") + 1]) if "--status" in sys.argv else 200


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            service = attrs(rs.resource.attributes).get("service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    print(json.dumps({
                        "service": service,
                        "scope": ss.scope.name,
                        "name": s.name,
                        "kind": Span.SpanKind.Name(s.kind).replace("SPAN_KIND_", ""),
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "attributes": attrs(s.attributes),
                        "status": Status.StatusCode.Name(s.status.code).replace("STATUS_CODE_", ""),
                        "status_message": s.status.message,
                        "events": [{"name": e.name, "attributes": attrs(e.attributes)} for e in s.events],
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "content_type": self.headers.get("content-type"),
                        "auth": self.headers.get("authorization"),
                    }), flush=True)
        if delay:
            time.sleep(delay)
        out = ExportTraceServiceResponse().SerializeToString()
        self.send_response(status)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
