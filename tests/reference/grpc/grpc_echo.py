"""A gRPC server and client (Python grpcio, an independent implementation) for the gateway's
tests. The proto is compiled at run time with grpcio-tools.

  grpc_echo.py server PORT            serve Echo + grpc.health.v1 on 127.0.0.1:PORT (h2c)
  grpc_echo.py client TARGET CHECKS   run CHECKS (comma-separated) against TARGET, print JSON
      TARGET: h2c://127.0.0.1:PORT or tls://127.0.0.1:PORT?ca=/path/ca.pem
"""
import json
import os
import sys
import tempfile
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = tempfile.mkdtemp(prefix="gwgrpc")
assert protoc.main(["protoc", f"-I{HERE}", f"--python_out={OUT}", f"--grpc_python_out={OUT}",
                    os.path.join(HERE, "echo.proto")]) == 0
sys.path.insert(0, OUT)
import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402


HEALTH = None


class Echo(echo_pb2_grpc.EchoServicer):
    def Unary(self, req, ctx):
        if req.text.startswith("health:"):
            from grpc_health.v1 import health_pb2
            HEALTH.set("gwtest.Echo", health_pb2.HealthCheckResponse.ServingStatus.Value(req.text[7:]))
            return echo_pb2.Msg(text="health set")
        if req.delay_ms:
            time.sleep(req.delay_ms / 1000)
        md = dict(ctx.invocation_metadata())
        ctx.set_trailing_metadata((("x-echo-trailer", md.get("x-tenant", "none")),))
        if req.text == "fail":
            ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
        return echo_pb2.Msg(text="echo:" + req.text, blob=req.blob)

    def ClientStream(self, reqs, ctx):
        n, size = 0, 0
        for r in reqs:
            n += 1
            size += len(r.blob)
        return echo_pb2.Msg(text=f"{n} messages", count=size)

    def ServerStream(self, req, ctx):
        for i in range(req.count):
            yield echo_pb2.Msg(text=f"part {i}", blob=req.blob)

    def Bidi(self, reqs, ctx):
        for r in reqs:
            yield echo_pb2.Msg(text="echo:" + r.text, blob=r.blob)


def serve(port):
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20)])
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    global HEALTH
    h = HEALTH = health.HealthServicer()
    h.set("gwtest.Echo", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def channel(target):
    opts = [("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)]
    if target.startswith("h2c://"):
        return grpc.insecure_channel(target[len("h2c://"):], options=opts)
    rest = target[len("tls://"):]
    addr, _, query = rest.partition("?")
    ca = dict(p.split("=", 1) for p in query.split("&") if p)["ca"]
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
    return grpc.secure_channel(addr, creds, options=opts + [("grpc.ssl_target_name_override", "localhost")])


def run(target, checks, token):
    stub = echo_pb2_grpc.EchoStub(channel(target))
    md = [("x-tenant", "acme")]
    if token:
        md.append(("authorization", "Bearer " + token))
    out = {}
    for check in checks:
        try:
            if check == "unary":
                r, call = stub.Unary.with_call(echo_pb2.Msg(text="hi"), metadata=md, timeout=10)
                out[check] = {"text": r.text, "trailers": dict(call.trailing_metadata())}
            elif check == "client_stream":
                blob = b"x" * (1 << 20)
                r = stub.ClientStream(iter([echo_pb2.Msg(blob=blob) for _ in range(8)]), metadata=md, timeout=20)
                out[check] = {"text": r.text, "count": r.count}
            elif check == "server_stream":
                parts = list(stub.ServerStream(echo_pb2.Msg(count=5, blob=b"y" * (512 << 10)), metadata=md, timeout=20))
                out[check] = {"parts": len(parts), "bytes": sum(len(p.blob) for p in parts)}
            elif check == "bidi":
                rs = list(stub.Bidi(iter([echo_pb2.Msg(text=str(i)) for i in range(20)]), metadata=md, timeout=20))
                out[check] = {"texts": [r.text for r in rs]}
            elif check == "deadline":
                stub.Unary(echo_pb2.Msg(text="slow", delay_ms=2000), metadata=md, timeout=0.5)
                out[check] = {"code": "OK"}
            elif check == "fail":
                stub.Unary(echo_pb2.Msg(text="fail"), metadata=md, timeout=10)
                out[check] = {"code": "OK"}
            elif check.startswith("health:"):
                r = stub.Unary(echo_pb2.Msg(text=check), timeout=10)
                out[check] = {"text": r.text}
            elif check.startswith("many"):
                n = int(check[len("many"):] or 20)
                oks = 0
                for _ in range(n):
                    stub.Unary(echo_pb2.Msg(text="x"), metadata=md, timeout=10)
                    oks += 1
                out[check] = {"code": "OK", "ok": oks}
            else:
                out[check] = {"error": "unknown check"}
        except grpc.RpcError as e:
            out[check] = {"code": e.code().name, "details": e.details()}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]))
    else:
        run(sys.argv[2], sys.argv[3].split(","), sys.argv[4] if len(sys.argv) > 4 else "")
