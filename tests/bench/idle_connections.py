#!/usr/bin/env python3
"""RSS growth per idle client connection of a running gateway (each connection made one GET).

    idle_connections.py PID PORT N h1|h2c|tls

h1: HTTP/1.1 keep-alive; h2c: HTTP/2 with prior knowledge; tls: HTTP/2 over TLS (ALPN h2).
The HTTP/2 client is a few frames written by hand (preface, SETTINGS, one HEADERS with a
static-table GET /), so no library is needed. Run by tests/bench/idle_connections.sh.
"""
import asyncio, resource, ssl, struct, subprocess, sys

h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
pid, port, n, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def frame(t, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SCHEME = 0x87 if mode == "tls" else 0x86
# :method GET, :path /, :scheme, :authority "a" (literal, indexed name 1).
HEADERS = frame(1, 0x05, 1, bytes([0x82, 0x84, SCHEME, 0x01, 0x01, ord("a")]))


async def h1():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    await w.drain()
    await asyncio.wait_for(r.read(4096), 5)
    return r, w


async def h2(ctx):
    r, w = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None
    )
    w.write(PREFACE + frame(4, 0, 0, b"") + HEADERS)
    await w.drain()
    got, pos = b"", 0

    async def until_answered():
        nonlocal got, pos
        while True:
            d = await r.read(65536)
            if not d:
                raise RuntimeError("closed before the answer")
            got += d
            while pos + 9 <= len(got):
                ln = int.from_bytes(got[pos:pos + 3], "big")
                if pos + 9 + ln > len(got):
                    break
                t, fl = got[pos + 3], got[pos + 4]
                sid = int.from_bytes(got[pos + 5:pos + 9], "big") & 0x7FFFFFFF
                pos += 9 + ln
                if t == 4 and not fl & 1:
                    w.write(frame(4, 1, 0, b""))  # SETTINGS ACK
                if t == 7:
                    raise RuntimeError("GOAWAY")
                if t in (0, 1) and fl & 1 and sid == 1:
                    return

    await asyncio.wait_for(until_answered(), 5)
    return r, w


async def main():
    ctx = None
    if mode == "tls":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
    before = rss()
    conns = []
    for _ in range(n):
        conns.append(await (h1() if mode == "h1" else h2(ctx)))
    await asyncio.sleep(0.5)
    after = rss()
    open_now = subprocess.run(
        f"ss -tnH state established '( sport = :{port} )' | wc -l",
        shell=True, capture_output=True, text=True,
    ).stdout.strip()
    print(
        f"{mode}: {len(conns)} idle connections ({open_now} open at the server): RSS {before} -> {after} KiB, "
        f"{(after - before) * 1024 / len(conns) / 1024:.1f} KiB per connection"
    )
    for _, w in conns:
        w.close()


asyncio.run(main())
