"""DNS-over-QUIC (RFC 9250) and DNS-over-HTTPS (RFC 8484) client for Alknet's DNS tests.

Usage: doq_client.py SUBCOMMAND ... (see --help of each). Every subcommand prints ONE JSON
object on stdout and exits 0 when it ran, even if the server refused or closed something (the
caller asserts on the JSON); it exits 2 with a message on stderr on a usage error or when no
result could be had (handshake failure, timeout, a query left unanswered). TLS certificates
are never verified (the server's is self-signed). Every network wait is bounded by --timeout.

  query --server HOST:PORT --client dnspython|aioquic NAME TYPE [--count N]
      N queries (default 1) on N streams of one connection, concurrently. Prints
      {"rcode", "aa", "id", "answers": [...], "authority": [...], "count"} for the first
      response, plus "all_same" when N > 1 (every response parsed, answers its query and
      equals the first).
  probe --server HOST:PORT CASE
      Sends one crafted DoQ stream (CASE: see PROBES) with raw aioquic and reports the
      server's reaction: {"case", "closed", "error_code", "reason", "stream_reset",
      "stop_sending", "blocked", "response_rcode"}.
  doh --url https://HOST:PORT/dns-query --method GET|POST NAME TYPE [--http 1|2|any]
      One query with dnspython's DoH client; prints the same shape as `query`.
  flood --server HOST:PORT --queries N [--name NAME --type TYPE] [--inflight 64]
      N queries as fast as possible on one connection, each on its own stream. Prints
      {"sent", "rcodes": {rcode: n}, "resets": {code: n}, "unanswered", "closed", "error_code"}.
"""

import argparse
import asyncio
import json
import socket
import ssl
import struct
import sys
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.quic
import dns.rcode
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StopSendingReceived, StreamDataReceived, StreamReset

PROBE_NAME = "www.gw.example."


class ClientError(Exception):
    """No result could be had: reported on stderr with exit code 2."""


# ---------------------------------------------------------------- DNS messages and output


def make_query(name, rdtype, qid=0):
    q = dns.message.make_query(name, rdtype)
    q.id = qid  # RFC 9250 section 4.2.1: the Message ID of a DoQ query is 0
    return q


def framed(wire):
    """A DoQ message on a stream: 2-byte big-endian length, then the DNS message."""
    return struct.pack("!H", len(wire)) + wire


def unframe(data):
    if len(data) < 2 or struct.unpack("!H", data[:2])[0] != len(data) - 2:
        raise ClientError(f"bad DoQ response framing ({len(data)} bytes on the stream)")
    return data[2:]


def lines(section):
    """One text line per record; sorted within each RRset (servers may shuffle the records)."""
    return [line for rrset in section for line in sorted(rrset.to_text().splitlines())]


def summary(msg):
    return {
        "rcode": dns.rcode.to_text(msg.rcode()),
        "aa": bool(msg.flags & dns.flags.AA),
        "id": msg.id,
        "answers": lines(msg.answer),
        "authority": lines(msg.authority),
    }


def report(queries, responses):
    """The `query`/`doh` JSON: the first response, and for several whether all agree."""
    out = summary(responses[0])
    out["count"] = len(responses)
    if len(responses) > 1:
        first = {k: v for k, v in out.items() if k != "count"}
        out["all_same"] = all(q.is_response(r) and summary(r) == first for q, r in zip(queries, responses))
    return out


def host_port(text):
    """HOST:PORT or [V6]:PORT for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def resolve(host, port):
    """An IP address for HOST (dnspython's DoQ client wants a literal address)."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]
    except OSError as e:
        raise ClientError(f"cannot resolve {host}: {e}") from e


# ---------------------------------------------------------------- raw DoQ over aioquic


class Exchange:
    """One stream the client opened: what came back on it."""

    def __init__(self, loop, stream_id):
        self.stream_id = stream_id
        self.data = bytearray()
        self.fin = False
        self.reset = None  # error code of the server's RESET_STREAM
        self.stop_sending = None  # error code of the server's STOP_SENDING
        self.done = loop.create_future()  # FIN, reset, or connection gone
        self.reacted = loop.create_future()  # any of those, or STOP_SENDING

    def finish(self):
        for fut in (self.done, self.reacted):
            if not fut.done():
                fut.set_result(None)


class DoqProtocol(QuicConnectionProtocol):
    def __init__(self, *args, close_wait=0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.close_wait = close_wait
        self.exchanges = {}
        self.terminated = None  # the server's ConnectionTerminated, if it closed first
        self.closed_by_server = self._loop.create_future()
        self.we_closed = False

    def send(self, payload, fin=True, uni=False):
        sid = self._quic.get_next_available_stream_id(is_unidirectional=uni)
        ex = self.exchanges[sid] = Exchange(self._loop, sid)
        if self.terminated is not None:
            ex.finish()
            return ex
        self._quic.send_stream_data(sid, payload, end_stream=fin)
        self.transmit()
        return ex

    def blocked(self, ex):
        """True if the server's stream limit kept the stream from being sent at all."""
        stream = self._quic._streams.get(ex.stream_id)
        return bool(getattr(stream, "is_blocked", False))

    def close(self, *args, **kwargs):
        self.we_closed = True  # the ConnectionTerminated that follows is our own
        waiter = self._connected_waiter  # a handshake cut off by the timeout: fails quietly
        if waiter is not None:
            waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        super().close(*args, **kwargs)

    async def wait_closed(self):
        # Our CONNECTION_CLOSE is sent at once; waiting for aioquic's draining period to end
        # is bounded so that an unresponsive server cannot hold the process.
        try:
            await asyncio.wait_for(super().wait_closed(), self.close_wait)
        except asyncio.TimeoutError:
            pass

    def quic_event_received(self, event):
        ex = self.exchanges.get(getattr(event, "stream_id", None))
        if isinstance(event, StreamDataReceived) and ex is not None:
            ex.data += event.data
            if event.end_stream:
                ex.fin = True
                ex.finish()
        elif isinstance(event, StreamReset) and ex is not None:
            ex.reset = event.error_code
            ex.finish()
        elif isinstance(event, StopSendingReceived) and ex is not None:
            ex.stop_sending = event.error_code
            if not ex.reacted.done():
                ex.reacted.set_result(None)
        elif isinstance(event, ConnectionTerminated):
            if not self.we_closed and self.terminated is None:
                self.terminated = event
                self.closed_by_server.set_result(None)
            for other in self.exchanges.values():
                other.finish()


async def doq_session(args, work):
    """Connects (ALPN "doq", no certificate check), runs work(protocol, deadline) and closes.

    work bounds its own waits by deadline (loop time); the whole session, handshake and close
    included, is cut off in time for the process to end within --timeout. A result work
    produced before the cut-off is still returned."""
    host, port = args.server
    config = QuicConfiguration(is_client=True, alpn_protocols=["doq"], verify_mode=ssl.CERT_NONE)
    loop = asyncio.get_running_loop()
    margin = min(0.5, args.timeout / 4)  # for closing, which DoqProtocol.wait_closed bounds
    deadline = loop.time() + args.timeout - 1.5 * margin
    result = []

    def protocol(*a, **kw):
        return DoqProtocol(*a, close_wait=margin, **kw)

    async def run():
        async with connect(host, port, configuration=config, create_protocol=protocol) as proto:
            result.append(await work(proto, deadline))

    try:
        await asyncio.wait_for(run(), args.timeout - margin)
    except asyncio.TimeoutError as e:
        if not result:
            raise ClientError(f"no DoQ session with {host}:{port} within {args.timeout}s") from e
    except ConnectionError as e:
        if not result:
            raise ClientError(f"DoQ handshake with {host}:{port} failed") from e
    return result[0]


async def wait_until(futures, deadline):
    """Waits for all futures or the deadline, whichever comes first."""
    pending = [f for f in futures if not f.done()]
    timeout = max(deadline - asyncio.get_running_loop().time(), 0)
    if pending:
        await asyncio.wait(pending, timeout=timeout)


# ---------------------------------------------------------------- query


def query_dnspython(args):
    host, port = args.server
    ip = resolve(host, port)
    queries = [make_query(args.name, args.type) for _ in range(args.count)]
    if args.count == 1:
        return queries, [dns.query.quic(queries[0], ip, port=port, verify=False, timeout=args.timeout)]
    # One connection shared by all queries; each dns.query.quic call opens its own stream.
    with dns.quic.SyncQuicManager(verify_mode=False) as manager:
        conn = manager.connect(ip, port)
        with ThreadPoolExecutor(min(args.count, 64)) as pool:
            futs = [pool.submit(dns.query.quic, q, ip, port=port, verify=False, timeout=args.timeout, connection=conn) for q in queries]
            return queries, [f.result() for f in futs]


async def query_aioquic(args):
    queries = [make_query(args.name, args.type) for _ in range(args.count)]

    async def work(proto, deadline):
        exchanges = [proto.send(framed(q.to_wire())) for q in queries]
        await wait_until([ex.done for ex in exchanges], deadline)
        responses = []
        for ex in exchanges:
            t = proto.terminated
            if ex.fin:
                responses.append(dns.message.from_wire(unframe(bytes(ex.data))))
            elif ex.reset is not None:
                raise ClientError(f"server reset stream {ex.stream_id} with code {ex.reset:#x}")
            elif t is not None:
                raise ClientError(f"server closed the connection: code {t.error_code:#x} {t.reason_phrase!r}")
            else:
                raise ClientError(f"no complete response on stream {ex.stream_id} within {args.timeout}s")
        return responses

    return queries, await doq_session(args, work)


def cmd_query(args):
    if args.client == "dnspython":
        queries, responses = query_dnspython(args)
    else:
        queries, responses = asyncio.run(query_aioquic(args))
    return report(queries, responses)


# ---------------------------------------------------------------- probe


def probe_payload(case):
    """(bytes to send, FIN after them?, unidirectional stream?) for a probe case."""
    q0 = make_query(PROBE_NAME, "A").to_wire()  # 32 bytes, no EDNS
    return {
        "nonzero-id": (framed(make_query(PROBE_NAME, "A", 0x1234).to_wire()), True, False),
        # A bare 12-byte header claiming 5 questions and carrying none: not a DNS message.
        "malformed": (framed(struct.pack("!6H", 0, 0x0100, 5, 0, 0, 0)), True, False),
        # Announces 40 bytes, delivers the first 20 of a query, then FIN.
        "truncated": (struct.pack("!H", 40) + q0[:20], True, False),
        # Announces 65535 bytes, sends 1000 and keeps the stream open.
        "oversized": (struct.pack("!H", 0xFFFF) + q0.ljust(1000, b"\0"), False, False),
        # A complete query, then a second length-prefixed query on the same stream.
        "trailing": (framed(q0) + framed(q0), True, False),
        "uni": (framed(q0), True, True),
        "valid": (framed(q0), True, False),
    }[case]


PROBES = ["nonzero-id", "malformed", "truncated", "oversized", "trailing", "uni", "valid"]


async def probe(args):
    payload, fin, uni = probe_payload(args.case)

    async def work(proto, deadline):
        ex = proto.send(payload, fin=fin, uni=uni)
        loop = asyncio.get_running_loop()
        # Wait for the server to react on the stream (or to close); once it has, give it
        # --grace seconds more to close the connection, which may follow a reset or answer.
        await wait_until([ex.reacted], deadline)
        if proto.terminated is None:
            await wait_until([proto.closed_by_server], min(deadline, loop.time() + args.grace))
        t = proto.terminated
        rcode = None
        if ex.fin and ex.data:
            try:
                rcode = dns.rcode.to_text(dns.message.from_wire(unframe(bytes(ex.data))).rcode())
            except (ClientError, dns.exception.DNSException):
                rcode = "UNPARSEABLE"
        return {
            "case": args.case,
            "closed": t is not None,
            "error_code": None if t is None else t.error_code,
            "reason": None if t is None else t.reason_phrase,
            "stream_reset": ex.reset,
            "stop_sending": ex.stop_sending,
            "blocked": proto.blocked(ex),
            "response_rcode": rcode,
        }

    return await doq_session(args, work)


# ---------------------------------------------------------------- flood


async def flood(args):
    wire = framed(make_query(args.name, args.type).to_wire())

    async def work(proto, deadline):
        stats = {"sent": 0, "rcodes": {}, "resets": {}, "unanswered": 0}
        slots = asyncio.Semaphore(args.inflight)

        async def one():
            async with slots:
                if proto.terminated is not None or asyncio.get_running_loop().time() >= deadline:
                    return
                ex = proto.send(wire)
                stats["sent"] += 1
                await wait_until([ex.done], deadline)
            if ex.reset is not None:
                key = str(ex.reset)
                stats["resets"][key] = stats["resets"].get(key, 0) + 1
            elif ex.fin:
                try:
                    key = dns.rcode.to_text(dns.message.from_wire(unframe(bytes(ex.data))).rcode())
                except (ClientError, dns.exception.DNSException):
                    key = "UNPARSEABLE"
                stats["rcodes"][key] = stats["rcodes"].get(key, 0) + 1
            else:
                stats["unanswered"] += 1

        await asyncio.gather(*(one() for _ in range(args.queries)))
        t = proto.terminated
        stats["closed"] = t is not None
        stats["error_code"] = None if t is None else t.error_code
        stats["reason"] = None if t is None else t.reason_phrase
        return stats

    return await doq_session(args, work)


# ---------------------------------------------------------------- doh


def cmd_doh(args):
    url = urllib.parse.urlparse(args.url)
    if url.scheme != "https" or not url.hostname:
        raise ClientError(f"expected an https:// URL, got {args.url!r}")
    # Pass the address ourselves: otherwise dnspython resolves a host name with its own
    # resolver (a DNS query to the system's nameservers).
    bootstrap = resolve(url.hostname, url.port or 443)
    version = {"1": dns.query.HTTPVersion.H1, "2": dns.query.HTTPVersion.H2, "any": dns.query.HTTPVersion.DEFAULT}[args.http]
    q = make_query(args.name, args.type)
    r = dns.query.https(q, args.url, timeout=args.timeout, post=args.method == "POST", verify=False,
                        bootstrap_address=bootstrap, http_version=version)
    return report([q], [r])


# ---------------------------------------------------------------- command line


def main():
    ap = argparse.ArgumentParser(description="DoQ / DoH client for Alknet's DNS tests")
    ap.add_argument("--timeout", type=float, default=10.0, help="bound on every network wait, seconds (default 10)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("query", help="resolve NAME TYPE over DoQ")
    p.add_argument("--server", type=host_port, required=True, metavar="HOST:PORT")
    p.add_argument("--client", choices=["dnspython", "aioquic"], default="aioquic")
    p.add_argument("--count", type=int, default=1, help="concurrent queries on one connection (default 1)")
    p.add_argument("name")
    p.add_argument("type")

    p = sub.add_parser("probe", help="send a crafted DoQ stream, report the server's reaction")
    p.add_argument("--server", type=host_port, required=True, metavar="HOST:PORT")
    p.add_argument("--grace", type=float, default=1.0, help="seconds to wait for a close after a reset or answer")
    p.add_argument("case", choices=PROBES)

    p = sub.add_parser("doh", help="resolve NAME TYPE over DNS-over-HTTPS")
    p.add_argument("--url", required=True, help="https://HOST:PORT/dns-query")
    p.add_argument("--method", choices=["GET", "POST"], default="POST")
    p.add_argument("--http", choices=["1", "2", "any"], default="any", help="HTTP version (default: ALPN picks)")
    p.add_argument("name")
    p.add_argument("type")

    p = sub.add_parser("flood", help="many queries on one connection (rate-limit tests)")
    p.add_argument("--server", type=host_port, required=True, metavar="HOST:PORT")
    p.add_argument("--queries", type=int, required=True)
    p.add_argument("--inflight", type=int, default=64, help="streams in flight at once (default 64)")
    p.add_argument("--name", default=PROBE_NAME)
    p.add_argument("--type", default="A")

    # Options given before or after the subcommand both count (e.g. `probe --timeout 3 ...`).
    for p in sub.choices.values():
        p.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    for n in ("count", "queries", "inflight"):
        if getattr(args, n, 1) < 1:
            ap.error(f"--{n} must be at least 1")

    try:
        if args.cmd == "query":
            out = cmd_query(args)
        elif args.cmd == "probe":
            out = asyncio.run(probe(args))
        elif args.cmd == "doh":
            out = cmd_doh(args)
        else:
            out = asyncio.run(flood(args))
    except Exception as e:  # any failure to get a result is a client error
        print(f"doq_client: {args.cmd}: {type(e).__name__}: {e or 'no details'}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
