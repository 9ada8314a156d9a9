"""The one thing pyproject.toml cannot say: asm-proxy's C extensions.

- the nghttp2 transport's HTTP/2 session (asm_proxy/transport/nghttp2/_h2.c, linked
  against libnghttp2);
- the trace-header reader (asm_proxy/_trace_headers.c): whether a request carries trace
  context, read off the message's bytes, for tracing's per-exchange decision.

Both are optional: without a C compiler or libnghttp2's headers (Debian: libnghttp2-dev)
the install still succeeds; asm-proxy then serves over grpc.aio (`transport: grpcio`, and
`asm-proxy serve --transport nghttp2` says what is missing), and tracing reads the trace
headers in Python (asm_proxy/trace_headers.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "asm_proxy.transport.nghttp2._h2",
            ["asm_proxy/transport/nghttp2/_h2.c"],
            libraries=["nghttp2"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "asm_proxy._trace_headers",
            ["asm_proxy/_trace_headers.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
    ]
)
