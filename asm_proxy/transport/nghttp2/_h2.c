/*
 * asm_proxy.transport.nghttp2._h2: the server side of HTTP/2 and gRPC's framing, in C.
 *
 * A sans-IO `Session` over libnghttp2 (which does HTTP/2 itself: frames, HPACK, flow
 * control, stream states, SETTINGS, PING, GOAWAY, RST_STREAM and their error handling).
 * Python feeds it the bytes read from a connection (`receive`) and gets back a list of
 * events; it asks for the bytes to write (`pending`). What this file adds is why it exists:
 * everything per header, per frame and per gRPC message happens here, in C, so Python sees
 * one event per request, per whole message and per end, in one list per read.
 *
 * Events (tuples):
 *   (REQUEST, stream_id, path: bytes, xfcc: bytes | None, grpc: bool)
 *                                             the one request header Python reads is
 *                                             x-forwarded-client-cert (the caller's identity
 *                                             behind a trusted proxy); the others are read
 *                                             here (:path, content-type) or not at all
 *   (MESSAGE, stream_id, payload: bytes)      a whole length-prefixed gRPC message
 *   (DATA, stream_id, data: bytes)            a body chunk of a plain HTTP request
 *   (END, stream_id)                          the client ended its side (END_STREAM)
 *   (CLOSED, stream_id, h2_error_code)        the stream is gone (reset, or both ended)
 *   (BAD_MESSAGE, stream_id, grpc_code, why)  the gRPC framing was broken; data ignored
 *   (PING_ACK,)                               an answer to our `ping`
 *   (GOAWAY, last_stream_id, h2_error_code)   the client is going away
 *
 * Answers: `send_message` (a gRPC message, length prefix added; the response headers go
 * first, once), `finish` (grpc-status and grpc-message as trailers, or as a Trailers-Only
 * response when nothing was sent; then RST_STREAM(NO_ERROR) if the client has not ended
 * its side, as gRPC servers do), `respond` (a plain HTTP response with a body).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <nghttp2/nghttp2.h>
#include <string.h>

enum { EV_REQUEST = 0, EV_MESSAGE, EV_DATA, EV_END, EV_CLOSED, EV_BAD_MESSAGE, EV_PING_ACK, EV_GOAWAY };

/* gRPC status codes used here. */
enum { GRPC_RESOURCE_EXHAUSTED = 8, GRPC_INTERNAL = 13, GRPC_UNIMPLEMENTED = 12 };

typedef struct {
    char *data;
    size_t len;
    size_t off; /* bytes already given to nghttp2 */
    size_t cap;
} buffer;

typedef struct stream {
    struct stream *prev, *next; /* every live stream of the session, to free them with it */
    int32_t id;
    int grpc;            /* content-type application/grpc...: messages are length-prefixed */
    int bad;             /* framing broken: further data ignored */
    int headers_sent;    /* response HEADERS submitted (with a data provider) */
    int finishing;       /* trailers to send once the queue is drained */
    int finished;        /* our side is done (trailers or END_STREAM queued) */
    int remote_ended;
    int announced;       /* REQUEST was sent: Python knows of the stream */
    PyObject *xfcc;      /* bytes: the first x-forwarded-client-cert, or NULL */
    PyObject *path;      /* bytes */
    /* gRPC message being received */
    unsigned char prefix[5];
    size_t prefix_have;
    PyObject *message;   /* bytes of the declared length, being filled */
    size_t message_have;
    /* what goes out */
    buffer out;
    nghttp2_nv *trailers;
    size_t ntrailers;
    char *trailer_data;  /* the trailers' values, owned */
} stream;

typedef struct {
    PyObject_HEAD
    nghttp2_session *session;
    stream *streams;     /* the live streams' list */
    PyObject *events;    /* list of events not yet taken (receive() and take() return it) */
    size_t max_message;
    int failed;          /* a Python error was raised inside a callback */
} Session;

static int add_event(Session *self, PyObject *event) {
    if (event == NULL) {
        self->failed = 1;
        return -1;
    }
    int rc = PyList_Append(self->events, event);
    Py_DECREF(event);
    if (rc < 0) self->failed = 1;
    return rc;
}

static int buffer_append(buffer *b, const char *data, size_t len) {
    if (b->off > 0 && b->off == b->len) { /* drained: start over */
        b->off = b->len = 0;
    }
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len) cap *= 2;
        char *grown = PyMem_Realloc(b->data, cap);
        if (grown == NULL) return -1;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

static void stream_free(stream *s) {
    Py_XDECREF(s->xfcc);
    Py_XDECREF(s->path);
    Py_XDECREF(s->message);
    PyMem_Free(s->out.data);
    PyMem_Free(s->trailers);
    PyMem_Free(s->trailer_data);
    PyMem_Free(s);
}

static void unlink_stream(Session *self, stream *s) {
    if (s->prev != NULL) s->prev->next = s->next;
    else self->streams = s->next;
    if (s->next != NULL) s->next->prev = s->prev;
}

/* ---- receiving ------------------------------------------------------------------------ */

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    Session *self = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    stream *s = PyMem_Calloc(1, sizeof(stream));
    if (s == NULL) goto fail;
    s->id = frame->hd.stream_id;
    s->next = self->streams;
    if (s->next != NULL) s->next->prev = s;
    self->streams = s;
    nghttp2_session_set_stream_user_data(session, s->id, s);
    return 0;
fail:
    self->failed = 1;
    PyErr_NoMemory();
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
    Session *self = user_data;
    (void)flags;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0; /* trailers of a request: nothing asm-proxy reads */
    }
    stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s == NULL || s->announced) return 0;
    if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
        Py_XDECREF(s->path);
        s->path = PyBytes_FromStringAndSize((const char *)value, valuelen);
        if (s->path == NULL) goto fail;
    } else if (namelen == 12 && memcmp(name, "content-type", 12) == 0) {
        s->grpc = valuelen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
                  (valuelen == 16 || value[16] == '+' || value[16] == ';');
    } else if (namelen == 23 && s->xfcc == NULL &&
               memcmp(name, "x-forwarded-client-cert", 23) == 0) {
        s->xfcc = PyBytes_FromStringAndSize((const char *)value, valuelen);
        if (s->xfcc == NULL) goto fail;
    }
    return 0;
fail:
    self->failed = 1;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static void bad_message(Session *self, stream *s, int code, const char *why) {
    s->bad = 1;
    Py_CLEAR(s->message);
    add_event(self, Py_BuildValue("(iiis)", EV_BAD_MESSAGE, s->id, code, why));
}

/* Cut the DATA payload into gRPC messages: a 5-byte prefix (compressed flag, length),
 * then the message; each whole message is one event, copied once. */
static int grpc_data(Session *self, stream *s, const uint8_t *data, size_t len) {
    while (len > 0 && !s->bad) {
        if (s->message == NULL) {
            size_t take = 5 - s->prefix_have;
            if (take > len) take = len;
            memcpy(s->prefix + s->prefix_have, data, take);
            s->prefix_have += take;
            data += take;
            len -= take;
            if (s->prefix_have < 5) return 0;
            s->prefix_have = 0;
            size_t size = ((size_t)s->prefix[1] << 24) | ((size_t)s->prefix[2] << 16) |
                          ((size_t)s->prefix[3] << 8) | (size_t)s->prefix[4];
            if (s->prefix[0] != 0) {
                bad_message(self, s, GRPC_UNIMPLEMENTED,
                            "compressed gRPC messages are not supported (no grpc-encoding)");
                return self->failed ? -1 : 0;
            }
            if (size > self->max_message) {
                char why[128];
                snprintf(why, sizeof why, "gRPC message of %zu bytes is larger than the limit of %zu",
                         size, self->max_message);
                bad_message(self, s, GRPC_RESOURCE_EXHAUSTED, why);
                return self->failed ? -1 : 0;
            }
            if (size <= len) { /* the whole message is here: one copy, straight out */
                if (add_event(self, Py_BuildValue("(iiy#)", EV_MESSAGE, s->id, data, (Py_ssize_t)size)) < 0)
                    return -1;
                data += size;
                len -= size;
                continue;
            }
            s->message = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
            if (s->message == NULL) {
                self->failed = 1;
                return -1;
            }
            s->message_have = 0;
        }
        size_t want = (size_t)PyBytes_GET_SIZE(s->message) - s->message_have;
        size_t take = want < len ? want : len;
        memcpy(PyBytes_AS_STRING(s->message) + s->message_have, data, take);
        s->message_have += take;
        data += take;
        len -= take;
        if (s->message_have == (size_t)PyBytes_GET_SIZE(s->message)) {
            PyObject *message = s->message;
            s->message = NULL;
            if (add_event(self, Py_BuildValue("(iiN)", EV_MESSAGE, s->id, message)) < 0) return -1;
        }
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
    Session *self = user_data;
    (void)flags;
    stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s == NULL || s->bad || s->finished) return 0;
    if (s->grpc) {
        return grpc_data(self, s, data, len) < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
    }
    if (add_event(self, Py_BuildValue("(iiy#)", EV_DATA, stream_id, data, (Py_ssize_t)len)) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    Session *self = user_data;
    int32_t id = frame->hd.stream_id;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
        stream *s = nghttp2_session_get_stream_user_data(session, id);
        if (s == NULL) return 0;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST && !s->announced) {
            s->announced = 1;
            PyObject *path = s->path ? s->path : Py_None;
            PyObject *xfcc = s->xfcc ? s->xfcc : Py_None;
            Py_INCREF(path);
            Py_INCREF(xfcc);
            Py_CLEAR(s->path);
            Py_CLEAR(s->xfcc);
            if (add_event(self, Py_BuildValue("(iiNNO)", EV_REQUEST, id, path, xfcc,
                                              s->grpc ? Py_True : Py_False)) < 0)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        break;
    }
    case NGHTTP2_DATA:
        break;
    case NGHTTP2_PING:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK) {
            if (add_event(self, Py_BuildValue("(i)", EV_PING_ACK)) < 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        return 0;
    case NGHTTP2_GOAWAY:
        if (add_event(self, Py_BuildValue("(iiI)", EV_GOAWAY, frame->goaway.last_stream_id,
                                          frame->goaway.error_code)) < 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        return 0;
    default:
        return 0;
    }
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        stream *s = nghttp2_session_get_stream_user_data(session, id);
        if (s == NULL) return 0;
        s->remote_ended = 1;
        if (s->grpc && !s->bad && (s->message != NULL || s->prefix_have)) {
            bad_message(self, s, GRPC_INTERNAL, "the stream ended inside a gRPC message");
            if (self->failed) return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        if (add_event(self, Py_BuildValue("(ii)", EV_END, id)) < 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
    Session *self = user_data;
    stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s == NULL) return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    int announced = s->announced; /* Python heard of it (REQUEST was sent) */
    unlink_stream(self, s);
    stream_free(s);
    if (announced && add_event(self, Py_BuildValue("(iiI)", EV_CLOSED, stream_id, error_code)) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

/* Once our END_STREAM is on the wire, a client that has not ended its side is told to stop
 * sending (RST_STREAM NO_ERROR, RFC 9113 8.1; gRPC servers do the same). Not earlier:
 * nghttp2 sends RST_STREAM ahead of queued DATA, which would cut the answer. */
static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
    (void)user_data;
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s != NULL && !s->remote_ended) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    }
    return 0;
}

/* ---- sending -------------------------------------------------------------------------- */

static ssize_t read_out(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
    (void)source;
    (void)user_data;
    stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s == NULL) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t have = s->out.len - s->out.off;
    size_t n = have < length ? have : length;
    memcpy(buf, s->out.data + s->out.off, n);
    s->out.off += n;
    if (s->out.off < s->out.len) return (ssize_t)n;
    if (!s->finishing) {
        if (n == 0) return NGHTTP2_ERR_DEFERRED;
        return (ssize_t)n;
    }
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    if (s->ntrailers) {
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        int rv = nghttp2_submit_trailer(session, stream_id, s->trailers, s->ntrailers);
        if (rv != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    s->finishing = 0;
    return (ssize_t)n;
}

#define NV(NAME, VALUE)                                                                          \
    {                                                                                            \
        (uint8_t *)NAME, (uint8_t *)VALUE, sizeof(NAME) - 1, sizeof(VALUE) - 1,                  \
            NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE                         \
    }

static const nghttp2_nv GRPC_HEADERS[] = {NV(":status", "200"), NV("content-type", "application/grpc")};

static PyObject *h2_error(int rv) {
    PyErr_Format(PyExc_RuntimeError, "nghttp2: %s", nghttp2_strerror(rv));
    return NULL;
}

static stream *live_stream(Session *self, int32_t id) {
    stream *s = nghttp2_session_get_stream_user_data(self->session, id);
    if (s == NULL || s->finished) return NULL;
    return s;
}

static int submit_headers(Session *self, stream *s, const nghttp2_nv *nva, size_t nvlen) {
    nghttp2_data_provider provider;
    provider.source.ptr = NULL;
    provider.read_callback = read_out;
    int rv = nghttp2_submit_response(self->session, s->id, nva, nvlen, &provider);
    if (rv == 0) s->headers_sent = 1;
    return rv;
}

/* send_message(stream_id, payload) -> bool: False if the stream is gone or finished. */
static PyObject *Session_send_message(Session *self, PyObject *args) {
    int32_t id;
    Py_buffer payload;
    if (!PyArg_ParseTuple(args, "iy*", &id, &payload)) return NULL;
    stream *s = live_stream(self, id);
    if (s == NULL) {
        PyBuffer_Release(&payload);
        Py_RETURN_FALSE;
    }
    unsigned char prefix[5] = {0, (unsigned char)(payload.len >> 24), (unsigned char)(payload.len >> 16),
                               (unsigned char)(payload.len >> 8), (unsigned char)payload.len};
    int failed = buffer_append(&s->out, (const char *)prefix, 5) < 0 ||
                 buffer_append(&s->out, payload.buf, (size_t)payload.len) < 0;
    PyBuffer_Release(&payload);
    if (failed) return PyErr_NoMemory();
    int rv = s->headers_sent ? nghttp2_session_resume_data(self->session, id)
                             : submit_headers(self, s, GRPC_HEADERS, 2);
    if (rv != 0 && rv != NGHTTP2_ERR_INVALID_ARGUMENT) return h2_error(rv);
    Py_RETURN_TRUE;
}

static int set_trailers(stream *s, int code, const char *message, Py_ssize_t message_len) {
    char status[12];
    int status_len = snprintf(status, sizeof status, "%d", code);
    size_t size = (size_t)status_len + (size_t)message_len;
    s->trailer_data = PyMem_Malloc(size ? size : 1);
    s->trailers = PyMem_Calloc(4, sizeof(nghttp2_nv));
    if (s->trailer_data == NULL || s->trailers == NULL) return -1;
    memcpy(s->trailer_data, status, (size_t)status_len);
    memcpy(s->trailer_data + status_len, message, (size_t)message_len);
    size_t n = 0;
    if (!s->headers_sent) { /* Trailers-Only: one HEADERS frame with everything */
        s->trailers[n++] = GRPC_HEADERS[0];
        s->trailers[n++] = GRPC_HEADERS[1];
    }
    nghttp2_nv st = {(uint8_t *)"grpc-status", (uint8_t *)s->trailer_data, 11, (size_t)status_len,
                     NGHTTP2_NV_FLAG_NO_COPY_NAME};
    s->trailers[n++] = st;
    if (message_len > 0) {
        nghttp2_nv msg = {(uint8_t *)"grpc-message", (uint8_t *)s->trailer_data + status_len, 12,
                          (size_t)message_len, NGHTTP2_NV_FLAG_NO_COPY_NAME};
        s->trailers[n++] = msg;
    }
    s->ntrailers = n;
    return 0;
}

/* finish(stream_id, grpc_status, message: bytes) -> bool */
static PyObject *Session_finish(Session *self, PyObject *args) {
    int32_t id;
    int code;
    const char *message;
    Py_ssize_t message_len;
    if (!PyArg_ParseTuple(args, "iiy#", &id, &code, &message, &message_len)) return NULL;
    stream *s = live_stream(self, id);
    if (s == NULL) Py_RETURN_FALSE;
    if (set_trailers(s, code, message, message_len) < 0) return PyErr_NoMemory();
    s->finished = 1;
    int rv;
    if (!s->headers_sent) {
        rv = nghttp2_submit_response(self->session, id, s->trailers, s->ntrailers, NULL);
        s->headers_sent = 1;
    } else {
        s->finishing = 1;
        rv = nghttp2_session_resume_data(self->session, id);
        if (rv == NGHTTP2_ERR_INVALID_ARGUMENT) rv = 0; /* not deferred: it is being sent */
    }
    if (rv != 0) return h2_error(rv);
    Py_RETURN_TRUE;
}

/* respond(stream_id, status, headers: list[(bytes, bytes)], body: bytes) -> bool: a plain
 * HTTP response, all at once. */
static PyObject *Session_respond(Session *self, PyObject *args) {
    int32_t id;
    int status;
    PyObject *headers;
    Py_buffer body;
    if (!PyArg_ParseTuple(args, "iiO!y*", &id, &status, &PyList_Type, &headers, &body)) return NULL;
    stream *s = live_stream(self, id);
    PyObject *result = NULL;
    nghttp2_nv *nva = NULL;
    if (s == NULL) {
        result = Py_False;
        Py_INCREF(result);
        goto done;
    }
    Py_ssize_t n = PyList_GET_SIZE(headers);
    nva = PyMem_Calloc((size_t)n + 1, sizeof(nghttp2_nv));
    if (nva == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    char code[4];
    snprintf(code, sizeof code, "%03d", status % 1000);
    nghttp2_nv first = {(uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NO_COPY_NAME};
    nva[0] = first;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        char *name, *value;
        Py_ssize_t namelen, valuelen;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            PyBytes_AsStringAndSize(PyTuple_GET_ITEM(pair, 0), &name, &namelen) < 0 ||
            PyBytes_AsStringAndSize(PyTuple_GET_ITEM(pair, 1), &value, &valuelen) < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "headers: (bytes, bytes) pairs");
            goto done;
        }
        nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, (size_t)namelen, (size_t)valuelen, 0};
        nva[i + 1] = nv;
    }
    if (buffer_append(&s->out, body.buf, (size_t)body.len) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    s->finishing = 1;
    s->finished = 1;
    int rv = submit_headers(self, s, nva, (size_t)n + 1); /* nghttp2 copies the headers */
    if (rv != 0) {
        h2_error(rv);
        goto done;
    }
    result = Py_True;
    Py_INCREF(result);
done:
    PyMem_Free(nva);
    PyBuffer_Release(&body);
    return result;
}

/* ---- the connection ------------------------------------------------------------------- */

/* The events so far, and a fresh list for the next ones. */
static PyObject *take_events(Session *self) {
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return NULL;
    PyObject *events = self->events;
    self->events = fresh;
    return events;
}

static PyObject *Session_receive(Session *self, PyObject *arg) {
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    self->failed = 0;
    ssize_t rv = nghttp2_session_mem_recv(self->session, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    if (self->failed || rv < 0) {
        if (!PyErr_Occurred()) {
            /* A protocol error: nghttp2 has queued its GOAWAY; the caller sends it and closes. */
            PyErr_Format(PyExc_ConnectionError, "HTTP/2: %s", nghttp2_strerror((int)rv));
        }
        return NULL;
    }
    return take_events(self);
}

/* take() -> list | None: events that came while sending (streams closed by our own
 * END_STREAM), None when there are none. */
static PyObject *Session_take(Session *self, PyObject *unused) {
    (void)unused;
    if (PyList_GET_SIZE(self->events) == 0) Py_RETURN_NONE;
    return take_events(self);
}

/* pending() -> bytes: everything nghttp2 wants written now (b"" for nothing). */
static PyObject *Session_pending(Session *self, PyObject *unused) {
    (void)unused;
    const uint8_t *chunk;
    ssize_t n = nghttp2_session_mem_send(self->session, &chunk);
    if (n < 0) return h2_error((int)n);
    if (n == 0) return PyBytes_FromStringAndSize(NULL, 0);
    const uint8_t *next;
    ssize_t m = 0;
    PyObject *first = PyBytes_FromStringAndSize((const char *)chunk, n);
    if (first == NULL) return NULL;
    /* chunk is only valid until the next call: keep what we have, then gather the rest. */
    m = nghttp2_session_mem_send(self->session, &next);
    if (m <= 0) {
        if (m < 0) {
            Py_DECREF(first);
            return h2_error((int)m);
        }
        return first;
    }
    buffer all = {0};
    if (buffer_append(&all, PyBytes_AS_STRING(first), (size_t)n) < 0) goto nomem;
    Py_CLEAR(first);
    while (m > 0) {
        if (buffer_append(&all, (const char *)next, (size_t)m) < 0) goto nomem;
        m = nghttp2_session_mem_send(self->session, &next);
    }
    if (m < 0) {
        PyMem_Free(all.data);
        return h2_error((int)m);
    }
    PyObject *out = PyBytes_FromStringAndSize(all.data, (Py_ssize_t)all.len);
    PyMem_Free(all.data);
    return out;
nomem:
    Py_XDECREF(first);
    PyMem_Free(all.data);
    return PyErr_NoMemory();
}

static PyObject *Session_ping(Session *self, PyObject *unused) {
    (void)unused;
    int rv = nghttp2_submit_ping(self->session, NGHTTP2_FLAG_NONE, NULL);
    if (rv != 0) return h2_error(rv);
    Py_RETURN_NONE;
}

/* shutdown_notice(): GOAWAY with the largest stream id, "going away soon" (then `goaway`
 * once the client had time to see it, as nghttp2 and gRPC recommend). */
static PyObject *Session_shutdown_notice(Session *self, PyObject *unused) {
    (void)unused;
    int rv = nghttp2_submit_shutdown_notice(self->session);
    if (rv != 0 && rv != NGHTTP2_ERR_INVALID_STATE) return h2_error(rv);
    Py_RETURN_NONE;
}

/* goaway(h2_error_code=0): the last GOAWAY; streams the client opened after the last one we
 * processed are refused (the client may retry them elsewhere). */
static PyObject *Session_goaway(Session *self, PyObject *args) {
    unsigned int error_code = NGHTTP2_NO_ERROR;
    if (!PyArg_ParseTuple(args, "|I", &error_code)) return NULL;
    int32_t last = nghttp2_session_get_last_proc_stream_id(self->session);
    int rv = nghttp2_submit_goaway(self->session, NGHTTP2_FLAG_NONE, last, error_code, NULL, 0);
    if (rv != 0 && rv != NGHTTP2_ERR_INVALID_STATE) return h2_error(rv);
    Py_RETURN_NONE;
}

static PyObject *Session_want_read(Session *self, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(nghttp2_session_want_read(self->session));
}

static PyObject *Session_want_write(Session *self, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(nghttp2_session_want_write(self->session));
}

static int Session_init(Session *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_concurrent_streams", "max_message_bytes", "window", NULL};
    unsigned int max_streams = 1000;
    Py_ssize_t max_message = 4 * 1024 * 1024;
    unsigned int window = 1 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|InI", kwlist, &max_streams, &max_message, &window))
        return -1;
    if (self->session != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Session already initialised");
        return -1;
    }
    if (window > 0x7fffffff) window = 0x7fffffff;
    self->max_message = (size_t)max_message;
    self->events = PyList_New(0);
    if (self->events == NULL) return -1;
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cbs);
        PyErr_NoMemory();
        return -1;
    }
    /* Envoy resets a gRPC stream whenever it is done with an exchange before the stream
     * ended (ext_proc does, once per HTTP request): nghttp2's rapid-reset guard (1000 at
     * once, 33/s after) would tear busy connections down. The peer is Envoy; the guard
     * stays, scaled to one reset per request at well above the rates a worker serves. */
    nghttp2_option_set_stream_reset_rate_limit(opt, 100000, 100000);
    /* Closed streams are not kept for the RFC 7540 priority tree (nobody uses it). */
    nghttp2_option_set_no_closed_streams(opt, 1);
    int rv = nghttp2_session_server_new2(&self->session, cbs, self, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0) {
        self->session = NULL;
        h2_error(rv);
        return -1;
    }
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window},
    };
    rv = nghttp2_submit_settings(self->session, NGHTTP2_FLAG_NONE, settings, 2);
    if (rv == 0) {
        /* The connection's window: room for many streams' bodies at once. */
        rv = nghttp2_session_set_local_window_size(self->session, NGHTTP2_FLAG_NONE, 0,
                                                   (int32_t)(window > (1 << 24) ? window : (1 << 24)));
    }
    if (rv != 0) {
        h2_error(rv);
        return -1;
    }
    return 0;
}

static void Session_dealloc(Session *self) {
    if (self->session != NULL) {
        nghttp2_session_del(self->session); /* no callbacks: our streams are freed below */
        self->session = NULL;
    }
    while (self->streams != NULL) {
        stream *s = self->streams;
        self->streams = s->next;
        stream_free(s);
    }
    Py_CLEAR(self->events);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Session_methods[] = {
    {"receive", (PyCFunction)Session_receive, METH_O, "Feed bytes read; returns the events."},
    {"pending", (PyCFunction)Session_pending, METH_NOARGS, "Bytes to write now."},
    {"take", (PyCFunction)Session_take, METH_NOARGS, "Events that came while sending, or None."},
    {"send_message", (PyCFunction)Session_send_message, METH_VARARGS, "Queue a gRPC message."},
    {"finish", (PyCFunction)Session_finish, METH_VARARGS, "End a gRPC call with its status."},
    {"respond", (PyCFunction)Session_respond, METH_VARARGS, "A whole plain HTTP response."},
    {"ping", (PyCFunction)Session_ping, METH_NOARGS, "Send a PING."},
    {"shutdown_notice", (PyCFunction)Session_shutdown_notice, METH_NOARGS, "First GOAWAY."},
    {"goaway", (PyCFunction)Session_goaway, METH_VARARGS, "Last GOAWAY."},
    {"want_read", (PyCFunction)Session_want_read, METH_NOARGS, "nghttp2_session_want_read."},
    {"want_write", (PyCFunction)Session_want_write, METH_NOARGS, "nghttp2_session_want_write."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "asm_proxy.transport.nghttp2._h2.Session",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The server side of one HTTP/2 connection (sans-IO), with gRPC message framing.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Session_init,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_h2", "HTTP/2 server sessions over libnghttp2, with gRPC framing.", -1, NULL,
};

PyMODINIT_FUNC PyInit__h2(void) {
    if (PyType_Ready(&SessionType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&SessionType);
    if (PyModule_AddObject(m, "Session", (PyObject *)&SessionType) < 0) {
        Py_DECREF(&SessionType);
        Py_DECREF(m);
        return NULL;
    }
    nghttp2_info *info = nghttp2_version(0);
    PyModule_AddStringConstant(m, "NGHTTP2_VERSION", info->version_str);
    PyModule_AddIntConstant(m, "REQUEST", EV_REQUEST);
    PyModule_AddIntConstant(m, "MESSAGE", EV_MESSAGE);
    PyModule_AddIntConstant(m, "DATA", EV_DATA);
    PyModule_AddIntConstant(m, "END", EV_END);
    PyModule_AddIntConstant(m, "CLOSED", EV_CLOSED);
    PyModule_AddIntConstant(m, "BAD_MESSAGE", EV_BAD_MESSAGE);
    PyModule_AddIntConstant(m, "PING_ACK", EV_PING_ACK);
    PyModule_AddIntConstant(m, "GOAWAY", EV_GOAWAY);
    return m;
}
