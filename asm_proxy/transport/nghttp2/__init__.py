"""asm-proxy's own transport: asyncio (uvloop in workers) over libnghttp2.

grpc.aio spends most of a worker's time in its own per-stream machinery (a completion
queue, a poller thread waking the loop, tasks and batches per call: docs/PERFORMANCE.md).
Here one C call per read (`_h2.Session.receive`) does the HTTP/2 work and cuts gRPC
messages, the loop sees one event per request, whole message and end, and one write per
loop iteration carries the answers of every stream of a connection.

- server.py: listening (own or inherited sockets), graceful stop;
- connection.py: one HTTP/2 connection (asyncio protocol) and its calls' dispatch;
- calls.py: the gRPC calls (`Services`' view of a stream);
- tls.py: mTLS with `ssl`, rotated at the handshake like grpc's dynamic credentials;
- _h2.c: the C extension (setup.py builds it against libnghttp2).

It can accept on a listening socket someone else made (`sock`): the supervisor can then
own the sockets, so a worker's restart leaves no moment with nothing listening.
"""
