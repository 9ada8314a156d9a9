/*
 * asm_proxy._trace_headers: whether a serialized envoy.service.ext_proc.v3.ProcessingRequest
 * carries trace context, and whether that context declines sampling, read without
 * decoding the message (asm_proxy/trace_headers.py says why; its `verdict` in Python is
 * the specification this file is tested against, and the fallback without it).
 *
 * verdict(data) -> 0 NONE      the request headers hold none of traceparent, b3,
 *                              x-b3-traceid, x-b3-spanid, x-b3-sampled, x-b3-flags
 *                  1 DECLINED  they name a valid parent that was not sampled, read as
 *                              the default propagators read it (traceparent first)
 *                  2 OTHER     anything else: a sampled or malformed parent, a trace
 *                              header given twice, a layout this does not read
 *
 * It walks the first field only, request_headers (field 2, which Envoy writes first):
 * HttpHeaders.headers (1) -> HeaderMap.headers (1, repeated) -> HeaderValue key (1),
 * value (2), raw_value (3; wins when not empty, as asm-proxy's decoding does). Values
 * are judged strictly (lower-case hex ids, no surrounding space): a value Python would
 * still accept after stripping or case folding answers OTHER, and Python decides.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum { NONE = 0, DECLINED = 1, OTHER = 2 };

typedef struct {
    const unsigned char *p;
    size_t n;
    int seen; /* 0 absent, 1 once, 2 more than once */
} Field;

enum { TRACEPARENT, B3, B3_TRACEID, B3_SPANID, B3_SAMPLED, B3_FLAGS, NKEYS };
#define KEY(text) {text, sizeof text - 1}
static const struct {
    const char *text;
    size_t n;
} KEYS[NKEYS] = {
    KEY("traceparent"), KEY("b3"),          KEY("x-b3-traceid"),
    KEY("x-b3-spanid"), KEY("x-b3-sampled"), KEY("x-b3-flags"),
};

/* Read a varint at *pos (< end); 0 on a malformed or overlong one. Tags and lengths of
   headers are nearly always one byte: that case is the first test. */
static inline int varint(const unsigned char *d, size_t end, size_t *pos, uint64_t *out) {
    if (*pos < end && d[*pos] < 0x80) {
        *out = d[(*pos)++];
        return 1;
    }
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *pos < end; shift += 7) {
        unsigned char b = d[(*pos)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* The next field of the message ending at `end`: its number, and for a length-delimited
   one its bytes [*start, *start + *len) (other wire types are skipped: *len is 0 and
   *start is end). 0 at the end of the message or on bytes that are not a field. */
static inline int next_field(const unsigned char *d, size_t end, size_t *pos, uint64_t *number,
                             size_t *start, size_t *len) {
    uint64_t tag, n;
    if (*pos >= end || !varint(d, end, pos, &tag))
        return 0;
    *number = tag >> 3;
    *start = end;
    *len = 0;
    switch (tag & 7) {
    case 0: return varint(d, end, pos, &n);
    case 1: if (end - *pos < 8) return 0; *pos += 8; return 1;
    case 5: if (end - *pos < 4) return 0; *pos += 4; return 1;
    case 2:
        if (!varint(d, end, pos, &n) || n > end - *pos)
            return 0;
        *start = *pos;
        *len = (size_t)n;
        *pos += (size_t)n;
        return 1;
    default: return 0;
    }
}

/* One HeaderValue: note it if its key is a trace header. */
static int header_value(const unsigned char *d, size_t pos, size_t end, Field *fields) {
    const unsigned char *key = NULL, *value = NULL, *raw = NULL;
    size_t key_n = 0, value_n = 0, raw_n = 0, s, n;
    uint64_t number;
    while (pos < end) {
        if (!next_field(d, end, &pos, &number, &s, &n))
            return 0;
        if (number == 1) {
            key = d + s;
            key_n = n;
        } else if (number == 2) {
            value = d + s;
            value_n = n;
        } else if (number == 3) {
            raw = d + s;
            raw_n = n;
        }
    }
    /* Every trace header starts with 't', 'b' or 'x' and is 2 to 12 bytes long: most
       headers are passed over on their first byte. */
    if (key == NULL || key_n < 2 || key_n > 12 || (key[0] != 't' && key[0] != 'b' && key[0] != 'x'))
        return 1;
    for (int k = 0; k < NKEYS; k++) {
        if (KEYS[k].n == key_n && memcmp(KEYS[k].text, key, key_n) == 0) {
            Field *f = &fields[k];
            f->seen += f->seen < 2;
            if (raw_n) {
                f->p = raw;
                f->n = raw_n;
            } else {
                f->p = value;
                f->n = value_n;
            }
            break;
        }
    }
    return 1;
}

/* HttpHeaders [pos, end): its HeaderMap (field 1), and that map's HeaderValues (field 1). */
static int http_headers(const unsigned char *d, size_t pos, size_t end, Field *fields) {
    size_t s, n, map_pos, map_end;
    uint64_t number;
    while (pos < end) {
        if (!next_field(d, end, &pos, &number, &s, &n))
            return 0;
        if (number != 1 || s == end)
            continue;
        for (map_pos = s, map_end = s + n; map_pos < map_end;) {
            size_t hs, hn;
            if (!next_field(d, map_end, &map_pos, &number, &hs, &hn))
                return 0;
            if (number == 1 && hs != map_end && !header_value(d, hs, hs + hn, fields))
                return 0;
        }
    }
    return 1;
}

/* `n` lower-case hex digits, not all zero. */
static int hex_id(const unsigned char *p, size_t n) {
    int nonzero = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
        nonzero |= c != '0';
    }
    return nonzero;
}

static int hex_digit(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* 00-<32 hex>-<16 hex>-<2 hex flags>, sampled bit clear. */
static int traceparent_declined(const Field *f) {
    const unsigned char *p = f->p;
    if (f->n != 55 || p[0] != '0' || p[1] != '0' || p[2] != '-' || p[35] != '-' || p[52] != '-')
        return 0;
    int hi = hex_digit(p[53]), lo = hex_digit(p[54]);
    return hex_id(p + 3, 32) && hex_id(p + 36, 16) && hi >= 0 && lo >= 0 && !(lo & 1);
}

/* b3: <16 or 32 hex>-<16 hex>-0[-<parent span>] */
static int b3_declined(const Field *f) {
    const unsigned char *p = f->p;
    size_t n = f->n, t;
    for (t = 0; t < n && p[t] != '-'; t++)
        ;
    if ((t != 16 && t != 32) || !hex_id(p, t) || n < t + 1 + 16 + 2)
        return 0;
    const unsigned char *rest = p + t + 1;
    if (!hex_id(rest, 16) || rest[16] != '-' || rest[17] != '0')
        return 0;
    size_t after = t + 1 + 18; /* the flag's end */
    if (after == n)
        return 1;
    /* a fourth field, the parent span id: anything without another '-' */
    if (p[after] != '-')
        return 0;
    return memchr(p + after + 1, '-', n - after - 1) == NULL;
}

static int equals(const Field *f, const char *text, size_t n) {
    return f->seen && f->n == n && memcmp(f->p, text, n) == 0;
}
#define EQUALS(field, text) equals(field, text, sizeof text - 1)

static int decide(const Field *fields) {
    int any = 0;
    for (int k = 0; k < NKEYS; k++) {
        if (fields[k].seen > 1)
            return OTHER;
        any |= fields[k].seen;
    }
    if (!any)
        return NONE;
    if (fields[TRACEPARENT].seen)
        return traceparent_declined(&fields[TRACEPARENT]) ? DECLINED : OTHER;
    if (fields[B3].seen)
        return b3_declined(&fields[B3]) ? DECLINED : OTHER;
    const Field *trace_id = &fields[B3_TRACEID], *span_id = &fields[B3_SPANID];
    if (trace_id->seen && (trace_id->n == 16 || trace_id->n == 32) &&
        hex_id(trace_id->p, trace_id->n) && span_id->seen && span_id->n == 16 &&
        hex_id(span_id->p, 16) &&
        (EQUALS(&fields[B3_SAMPLED], "0") || EQUALS(&fields[B3_SAMPLED], "false")) &&
        !EQUALS(&fields[B3_FLAGS], "1"))
        return DECLINED;
    return OTHER;
}

static PyObject *verdict(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "verdict() takes the message as bytes");
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(arg);
    size_t end = (size_t)PyBytes_GET_SIZE(arg), pos = 0;
    int answer = OTHER;
    Field fields[NKEYS];
    memset(fields, 0, sizeof fields);
    /* The first field must be request_headers (2, length-delimited): tag 0x12. */
    if (end > 0 && d[0] == 0x12) {
        pos = 1;
        uint64_t length;
        if (varint(d, end, &pos, &length) && length <= end - pos &&
            http_headers(d, pos, pos + (size_t)length, fields))
            answer = decide(fields);
    }
    return PyLong_FromLong(answer);
}

static PyMethodDef methods[] = {
    {"verdict", verdict, METH_O,
     "0 no trace headers, 1 a parent that declined sampling, 2 anything else."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "asm_proxy._trace_headers",
    "Trace context read off a serialized ProcessingRequest (see asm_proxy/trace_headers.py).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__trace_headers(void) { return PyModule_Create(&module); }
