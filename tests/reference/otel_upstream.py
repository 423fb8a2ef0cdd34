"""An upstream that reads W3C trace context with the official OpenTelemetry Python SDK's
propagator (an independent implementation) and answers what it extracted, as JSON.

  otel_upstream.py PORT
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("gateway-test-upstream")
propagator = TraceContextTextMapPropagator()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        carrier = {k.lower(): v for k, v in self.headers.items()}
        ctx = propagator.extract(carrier)
        parent = trace.get_current_span(ctx).get_span_context()
        # The upstream's own span, child of what the gateway sent.
        with tracer.start_as_current_span("upstream", context=ctx) as span:
            own = span.get_span_context()
        body = json.dumps({
            "valid": parent.is_valid,
            "trace_id": format(parent.trace_id, "032x"),
            "parent_span_id": format(parent.span_id, "016x"),
            "sampled": parent.trace_flags.sampled,
            "own_trace_id": format(own.trace_id, "032x"),
            "tracestate": carrier.get("tracestate", ""),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
