"""The one thing pyproject.toml cannot say: asm-proxy's C extension, the nghttp2 transport's
HTTP/2 session (asm_proxy/transport/nghttp2/_h2.c, linked against libnghttp2).

It is optional: without a C compiler or libnghttp2's headers (Debian: libnghttp2-dev) the
install still succeeds, and asm-proxy serves over grpc.aio (`transport: grpcio`);
`asm-proxy serve --transport nghttp2` then says what is missing.
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
        )
    ]
)
