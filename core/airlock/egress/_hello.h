/* The ClientHello's server name (SNI), read as tls.py reads it: the same states, the same
 * bound (HELLO_MAX), the same host_name rules (ASCII letters, digits, "-._"; lowercased, final
 * dots dropped). Pure: bytes in, a state and a malloc'd name out; every read is bounds-checked.
 * Included by _relay.c (the relay thread checks each tunnel's ClientHello with it) and exposed
 * as _relay.parse_hello for the tests that compare it with tls.py. */
#ifndef AIRLOCK_HELLO_H
#define AIRLOCK_HELLO_H

#include <stdlib.h>
#include <string.h>

#define HELLO_MAX (64 * 1024)            /* tls.MAX_HELLO_BYTES */
#define HELLO_CAP (HELLO_MAX + 16 * 1024) /* reads stop here: past HELLO_MAX = malformed */

/* ClientHello parser states (tls.py: None, tls=False, malformed=True, a ClientHello) */
enum { H_MORE = 0, H_NOT_TLS = 1, H_MALFORMED = 2, H_OK = 3 };

static size_t be16(const unsigned char *p) { return ((size_t)p[0] << 8) | p[1]; }

/* A vector of `size` length bytes at `at`: 0 and *next past it, or -1 when it overruns n. */
static int skip_vec(const unsigned char *b, size_t n, size_t at, size_t size, size_t *next) {
    if (at + size > n) return -1;
    size_t len = size == 1 ? b[at] : be16(b + at);
    if (at + size + len > n) return -1;
    *next = at + size + len;
    return 0;
}

/* The server_name extension's body: H_OK with *sni (malloc'd) or none, or H_MALFORMED. */
static int host_name(const unsigned char *d, size_t n, char **sni) {
    size_t end, next, at = 2;
    if (skip_vec(d, n, 0, 2, &end) < 0) return H_MALFORMED;
    while (at < end) {
        int type = d[at];
        if (skip_vec(d, n, at + 1, 2, &next) < 0) return H_MALFORMED;
        if (type == 0) { /* host_name: ASCII letters, digits, "-._"; lowercased, no final dots */
            size_t len = next - (at + 3);
            if (len == 0) return H_MALFORMED;
            char *name = malloc(len + 1);
            if (name == NULL) return H_MALFORMED;
            for (size_t i = 0; i < len; i++) {
                unsigned char c = d[at + 3 + i];
                int ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                         c == '.' || c == '_' || (c >= 'A' && c <= 'Z');
                if (!ok) {
                    free(name);
                    return H_MALFORMED;
                }
                name[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            }
            while (len > 0 && name[len - 1] == '.') len--;
            name[len] = 0;
            *sni = name;
            return H_OK;
        }
        at = next;
    }
    return H_OK;
}

/* The ClientHello body (after the 4-byte handshake header). */
static int hello_body(const unsigned char *b, size_t n, char **sni) {
    size_t end, at = 2 + 32; /* legacy_version, random */
    if (skip_vec(b, n, at, 1, &at) < 0 || skip_vec(b, n, at, 2, &at) < 0 ||
        skip_vec(b, n, at, 1, &at) < 0)
        return H_MALFORMED; /* session id, cipher suites, compression methods */
    if (at == n) return H_OK; /* no extensions at all */
    if (skip_vec(b, n, at, 2, &end) < 0) return H_MALFORMED;
    at += 2;
    while (at < end) {
        if (at + 4 > n) return H_MALFORMED;
        size_t type = be16(b + at), len = be16(b + at + 2);
        if (at + 4 + len > n) return H_MALFORMED;
        if (type == 0) return host_name(b + at + 4, len, sni);
        at += 4 + len;
    }
    return H_OK;
}

/* The first bytes of a tunnel: H_MORE (need more), H_NOT_TLS, H_MALFORMED, or H_OK with *sni
 * (malloc'd, or NULL: no host_name). The handshake may span records; past HELLO_MAX bytes
 * without a complete ClientHello it is malformed. With H_MORE, *need is the length before
 * which nothing can change (the current record's end): the caller need not parse again until
 * it has that many bytes (or HELLO_MAX), so a client trickling bytes costs no re-parse each. */
static int parse_hello(const unsigned char *raw, size_t len, char **sni, size_t *need) {
    *sni = NULL;
    *need = 0;
    unsigned char *hs = malloc(len ? len : 1);
    if (hs == NULL) return H_MALFORMED;
    size_t hlen = 0, pos = 0;
    int state;
    for (;;) {
        if (len - pos < 5) {
            state = len > HELLO_MAX ? H_MALFORMED : H_MORE;
            *need = pos + 5;
            break;
        }
        if (raw[pos] != 22 || raw[pos + 1] != 3) { /* a handshake record, TLS 1.x */
            state = H_NOT_TLS;
            break;
        }
        size_t rlen = be16(raw + pos + 3);
        if (len - pos - 5 < rlen) {
            state = len > HELLO_MAX ? H_MALFORMED : H_MORE;
            *need = pos + 5 + rlen;
            break;
        }
        memcpy(hs + hlen, raw + pos + 5, rlen);
        hlen += rlen;
        pos += 5 + rlen;
        if (hlen >= 4) {
            if (hs[0] != 1) { /* not a ClientHello */
                state = H_NOT_TLS;
                break;
            }
            size_t body = ((size_t)hs[1] << 16) | ((size_t)hs[2] << 8) | hs[3];
            if (hlen >= 4 + body) {
                state = hello_body(hs + 4, body, sni);
                break;
            }
        }
    }
    free(hs);
    return state;
}

#endif
