/* The compiled tunnel relay of the egress proxy (optional; relay.py holds the pure-Python
 * twin, and tests run the same tunnels through both and compare what they report).
 *
 *   Relay()                 one relay thread with its own epoll; it never takes the GIL
 *   relay.fileno()          an eventfd, readable when tunnels have finished
 *   relay.add(client_fd, upstream_fd, to_upstream, to_client[, expect, sni_optional, ms])
 *       -> handle: relay a tunnel whose CONNECT the caller admitted: the two fds are duplicated
 *       (the caller keeps and later closes its own), the bytes given are sent first. Without
 *       ``expect`` the caller already checked the ClientHello's SNI. With ``expect`` (the CONNECT
 *       host) this thread reads the ClientHello first (at most HELLO_MAX bytes, within ``ms``
 *       milliseconds; ``to_upstream`` is its start) and relays only when its SNI is ``expect``
 *       (or absent, with ``sni_optional``: an IP-literal CONNECT); nothing moves before that.
 *   relay.finished() -> [(handle, bytes_up, bytes_down, reason, verdict, sni, held)]   reason ""
 *       when it ended normally (upstream closed), else what failed; verdict: the ClientHello
 *       check (V_* below; V_NONE without ``expect``), sni: the server name read, or None;
 *       held: (client_fd, upstream_fd) of a tunnel refused before relaying, for the caller to
 *       close once it recorded the refusal (the client hears nothing first), else (-1, -1)
 *   parse_hello(data) -> (state, sni): the ClientHello parser alone (_hello.h), for tests
 *   relay.cancel(handle) -> (bytes_up, bytes_down) or None: end a tunnel now (session end)
 *   relay.close()           end every tunnel, stop the thread (also on dealloc)
 *
 * A tunnel is two directions, client -> upstream ("up") and upstream -> client ("down"). Each
 * read (up to 1 MiB) lands in the thread's one buffer and is sent at once; what the
 * destination cannot take is copied to that direction's own pending buffer and the source is not read again until it
 * is sent (flow control: a slow reader pauses the other side). The client's EOF is passed on
 * as a half-close (shutdown SHUT_WR of upstream); the upstream's EOF ends the tunnel once
 * everything read is delivered. Every access to the tunnel table holds the mutex; epoll events
 * carry (slot, generation), so an event for a tunnel that ended meanwhile is ignored.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "_hello.h" /* parse_hello: the ClientHello's SNI, as tls.py reads it */

#define BUF_SIZE (1024 * 1024) /* one read: 256 KiB cost 0.44 s CPU/GB, 1 MiB 0.37 (RESULTS) */
#define WAKE_TAG UINT64_MAX
#define TIMER_TAG (UINT64_MAX - 1)
/* The tunnel's ClientHello check, reported with its end (connection.py words them) */
enum { V_NONE = 0, V_ADMITTED, V_NOT_TLS, V_NO_SNI, V_SNI_DIFFERS, V_CLOSED, V_TIMEOUT,
       V_ERROR };
#define MAX_READS 8 /* per wake-up and direction: fairness between tunnels */

typedef struct {
    char *pend;  /* bytes read but not yet sent (owned) */
    size_t cap;  /* capacity of pend */
    size_t plen; /* bytes in pend */
    size_t poff; /* bytes of pend already sent */
    int eof;     /* the source said EOF */
    int passed;  /* the EOF was passed on (half-close done) */
} Dir;

static size_t pending(const Dir *dir) { return dir->plen; }

typedef struct {
    int used;
    uint32_t gen;
    int fd[2]; /* 0: client, 1: upstream (our duplicates) */
    Dir dir[2]; /* dir[s] moves fd[s] -> fd[1 - s]: 0 up, 1 down */
    unsigned long long bytes[2];
    uint32_t interest[2];
    int hup[2];     /* epoll said EPOLLHUP on that side (reported even with no interest) */
    int watched[2]; /* the fd is in the epoll set */
    int hello;      /* still reading the ClientHello into dir[0].pend: nothing relayed yet */
    char *expect;   /* the CONNECT host the SNI must equal (owned) */
    int sni_optional;
    char *sni;      /* the SNI read (owned), NULL: none or not read */
    int verdict;
    long long deadline; /* CLOCK_MONOTONIC ms by which the ClientHello must be complete */
    size_t hello_need;  /* parse again once this many bytes are read (parse_hello's *need) */
} Tunnel;

typedef struct {
    uint64_t handle;
    unsigned long long up, down;
    char reason[96];
    int verdict;
    char *sni; /* owned */
    int fd[2]; /* owned, -1: closed; handed to the caller with the report */
} Done;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    pthread_t thread;
    int running;
    int stopping;
    int ep, notify, wake, timer;
    long long armed; /* when the timer fires (ms), 0: off; set while a ClientHello is awaited */
    Tunnel *slots;
    size_t nslots;
    Done *done;
    size_t ndone, capdone;
    char *buf;
} Relay;

static uint64_t handle_of(size_t slot, uint32_t gen) { return ((uint64_t)gen << 32) | slot; }
static uint64_t tag_of(size_t slot, uint32_t gen, int side) {
    return ((uint64_t)(gen & 0x7fffffffu) << 33) | ((uint64_t)slot << 1) | (uint64_t)side;
}

static void fail_reason(char *out, size_t size, const char *what, int err) {
    snprintf(out, size, "%s: %s", what, strerror(err));
}

/* Free a tunnel's resources; the mutex is held. */
static void release(Relay *r, Tunnel *t) {
    for (int s = 0; s < 2; s++) {
        if (t->fd[s] >= 0) {
            epoll_ctl(r->ep, EPOLL_CTL_DEL, t->fd[s], NULL);
            close(t->fd[s]);
        }
        free(t->dir[s].pend);
        t->dir[s].pend = NULL;
    }
    free(t->expect);
    free(t->sni);
    t->expect = t->sni = NULL;
    t->used = 0;
    t->gen++;
}

/* The tunnel ended: report it and free it; the mutex is held. */
static void finish(Relay *r, Tunnel *t, const char *reason) {
    size_t slot = (size_t)(t - r->slots);
    if (r->ndone == r->capdone) {
        size_t cap = r->capdone ? r->capdone * 2 : 16;
        Done *grown = realloc(r->done, cap * sizeof(Done));
        if (grown != NULL) {
            r->done = grown;
            r->capdone = cap;
        }
    }
    if (r->ndone < r->capdone) {
        Done *d = &r->done[r->ndone++];
        d->handle = handle_of(slot, t->gen);
        d->up = t->bytes[0];
        d->down = t->bytes[1];
        snprintf(d->reason, sizeof d->reason, "%s", reason);
        d->verdict = t->verdict;
        d->sni = t->sni; /* moved: release() must not free it */
        t->sni = NULL;
        d->fd[0] = d->fd[1] = -1;
        if (t->verdict > V_ADMITTED) { /* ended before the ClientHello passed: the caller
                                        * closes the sockets once it recorded the refusal, so
                                        * the client never hears of it before the log does */
            for (int s = 0; s < 2; s++) {
                epoll_ctl(r->ep, EPOLL_CTL_DEL, t->fd[s], NULL);
                d->fd[s] = t->fd[s];
                t->fd[s] = -1;
            }
        }
    }
    release(r, t);
}

static int update_interest(Relay *r, Tunnel *t, size_t slot) {
    for (int s = 0; s < 2; s++) {
        uint32_t want = 0;
        if (t->hello) {
            want = s == 0 ? EPOLLIN : 0; /* only the ClientHello is read; upstream waits */
        } else {
            if (!t->dir[s].eof && pending(&t->dir[s]) == 0) want |= EPOLLIN;
            if (pending(&t->dir[1 - s]) > 0) want |= EPOLLOUT;
        }
        /* A hung-up socket reports EPOLLHUP whatever the interest: while it has nothing to do
         * (its reading paused until the other side drains) it leaves the set, else the thread
         * would spin on that HUP. It comes back when the pending bytes are sent. */
        int watch = want != 0 || !t->hup[s];
        if (want != t->interest[s] || watch != t->watched[s]) {
            struct epoll_event ev = {.events = want, .data.u64 = tag_of(slot, t->gen, s)};
            int op = !watch ? EPOLL_CTL_DEL : t->watched[s] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
            if (epoll_ctl(r->ep, op, t->fd[s], &ev) < 0) return -1;
            t->interest[s] = want;
            t->watched[s] = watch;
        }
    }
    return 0;
}

/* Send what direction d has pending; 1: all sent, 0: destination full, -1: error (reason). */
static int flush(Tunnel *t, int d, char *reason, size_t rsize) {
    Dir *dir = &t->dir[d];
    while (dir->poff < dir->plen) {
        ssize_t n = send(t->fd[1 - d], dir->pend + dir->poff, dir->plen - dir->poff,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            fail_reason(reason, rsize, d ? "send to client" : "send upstream", errno);
            return -1;
        }
        dir->poff += (size_t)n;
    }
    dir->plen = dir->poff = 0;
    return 1;
}

/* An EOF read in direction d, everything before it delivered: pass it on. 1: tunnel ends. */
static int pass_eof(Tunnel *t, int d) {
    if (t->dir[d].passed) return 0;
    t->dir[d].passed = 1;
    if (d == 1) { /* upstream finished: the tunnel ends; the client hears it now, not once
                   * the loop has closed its socket (that close follows the report) */
        shutdown(t->fd[0], SHUT_WR);
        return 1;
    }
    shutdown(t->fd[1], SHUT_WR); /* client finished sending: the answer may still come */
    return 0;
}

/* Read direction d while there is data and the destination takes it. */
static int pump(Relay *r, Tunnel *t, int d, char *reason, size_t rsize) {
    Dir *dir = &t->dir[d];
    for (int i = 0; i < MAX_READS && !dir->eof && dir->plen == 0; i++) {
        ssize_t n = recv(t->fd[d], r->buf, BUF_SIZE, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            fail_reason(reason, rsize, d ? "read from upstream" : "read from client", errno);
            return -1;
        }
        if (n == 0) {
            dir->eof = 1;
            return pass_eof(t, d);
        }
        t->bytes[d] += (unsigned long long)n;
        size_t sent = 0;
        while (sent < (size_t)n) {
            ssize_t m = send(t->fd[1 - d], r->buf + sent, (size_t)n - sent,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            if (m < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                fail_reason(reason, rsize, d ? "send to client" : "send upstream", errno);
                return -1;
            }
            sent += (size_t)m;
        }
        if (sent < (size_t)n) { /* the destination is full: keep the rest, stop reading */
            size_t rest = (size_t)n - sent;
            if (dir->cap < rest) { /* only what is left: tunnels that wait hold little */
                char *grown = realloc(dir->pend, rest);
                if (grown == NULL) {
                    snprintf(reason, rsize, "out of memory");
                    return -1;
                }
                dir->pend = grown;
                dir->cap = rest;
            }
            memcpy(dir->pend, r->buf + sent, (size_t)n - sent);
            dir->plen = (size_t)n - sent;
            dir->poff = 0;
        }
        if ((size_t)n < BUF_SIZE) break; /* the socket is likely empty: back to epoll */
    }
    return 0;
}


static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Set the timer to fire at `when` (CLOCK_MONOTONIC ms; 0: off); the mutex is held. */
static void arm(Relay *r, long long when) {
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_value.tv_sec = when / 1000;
    its.it_value.tv_nsec = (when % 1000) * 1000000;
    timerfd_settime(r->timer, TFD_TIMER_ABSTIME, &its, NULL);
    r->armed = when;
}

/* The ClientHello read so far decides. 1: read more; 0: admitted, relaying; -1: refused (the
 * verdict says why); -2: admitted, but sending failed (reason). */
static int judge_hello(Tunnel *t, char *reason, size_t rsize) {
    char *sni = NULL;
    int state = parse_hello((const unsigned char *)t->dir[0].pend, t->dir[0].plen, &sni,
                            &t->hello_need);
    if (state == H_MORE) return 1;
    t->sni = sni;
    if (state != H_OK) t->verdict = V_NOT_TLS;
    else if (sni == NULL && !t->sni_optional) t->verdict = V_NO_SNI;
    else if (sni != NULL && strcmp(sni, t->expect) != 0) t->verdict = V_SNI_DIFFERS;
    else t->verdict = V_ADMITTED;
    if (t->verdict != V_ADMITTED) return -1;
    t->hello = 0;
    t->bytes[0] += t->dir[0].plen; /* the ClientHello, and what came with it, goes upstream */
    t->bytes[1] += t->dir[1].plen;
    for (int d = 0; d < 2; d++)
        if (pending(&t->dir[d]) > 0 && flush(t, d, reason, rsize) < 0) return -2;
    return 0;
}

/* Read the client's first bytes until the ClientHello is complete; as judge_hello. */
static int read_hello(Tunnel *t, char *reason, size_t rsize) {
    Dir *dir = &t->dir[0];
    for (;;) {
        if (dir->plen >= dir->cap) { /* unreachable: past HELLO_MAX is a verdict already */
            t->verdict = V_NOT_TLS;
            return -1;
        }
        ssize_t n = recv(t->fd[0], dir->pend + dir->plen, dir->cap - dir->plen, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
            snprintf(reason, rsize, "%s", strerror(errno));
            t->verdict = V_ERROR;
            return -1;
        }
        if (n == 0) {
            t->verdict = V_CLOSED;
            return -1;
        }
        dir->plen += (size_t)n;
        if (dir->plen < t->hello_need && dir->plen <= HELLO_MAX) continue; /* same answer */
        int judged = judge_hello(t, reason, rsize);
        if (judged != 1) return judged;
    }
}

/* Tunnels whose ClientHello is late end (V_TIMEOUT); the timer is set for the next one. */
static void expire(Relay *r) {
    uint64_t ticks;
    ssize_t ignored = read(r->timer, &ticks, sizeof ticks);
    (void)ignored;
    long long now = now_ms(), next = 0;
    for (size_t i = 0; i < r->nslots; i++) {
        Tunnel *t = &r->slots[i];
        if (!t->used || !t->hello) continue;
        if (t->deadline <= now) {
            t->verdict = V_TIMEOUT;
            finish(r, t, "");
        } else if (next == 0 || t->deadline < next) {
            next = t->deadline;
        }
    }
    arm(r, next);
}

/* An epoll event on a tunnel still reading its ClientHello; the mutex is held. */
static void on_hello_event(Relay *r, Tunnel *t, size_t slot, int s, uint32_t events) {
    char reason[96] = "";
    int got = 1;
    if (s == 1) { /* the upstream is not read before the ClientHello passed */
        if (events & (EPOLLHUP | EPOLLERR)) t->hup[1] = 1; /* out of the set until then */
    } else {
        got = read_hello(t, reason, sizeof reason);
    }
    if (got >= 0 && update_interest(r, t, slot) < 0) {
        fail_reason(reason, sizeof reason, "epoll", errno);
        got = -2;
    }
    if (got < 0) finish(r, t, reason);
}

/* An epoll event on side s of a tunnel; the mutex is held. */
static void on_event(Relay *r, Tunnel *t, size_t slot, int s, uint32_t events) {
    char reason[96] = "";
    int end = 0;
    int other = 1 - s;
    if (events & EPOLLHUP) t->hup[s] = 1;
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && t->dir[other].plen > 0) {
        int sent = flush(t, other, reason, sizeof reason);
        if (sent < 0) end = 1;
        else if (sent > 0 && t->dir[other].eof) end = pass_eof(t, other);
        else if (sent > 0 && pump(r, t, other, reason, sizeof reason) != 0)
            end = 1; /* drained: read the source again now, not one epoll round later */
    }
    if (!end && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
        int got = pump(r, t, s, reason, sizeof reason);
        if (got != 0) end = 1;
    }
    if (!end && (events & EPOLLERR)) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(t->fd[s], SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) {
            fail_reason(reason, sizeof reason, s ? "upstream" : "client", err);
            end = 1;
        }
    }
    if (!end && (events & EPOLLHUP) && t->dir[s].eof && t->dir[other].plen == 0) {
        end = 1; /* both ways closed on that side: nothing more can move */
        if (s == 0) snprintf(reason, sizeof reason, "client closed");
    }
    if (!end && update_interest(r, t, slot) < 0) {
        fail_reason(reason, sizeof reason, "epoll", errno);
        end = 1;
    }
    if (end) finish(r, t, reason);
}

static void *run(void *arg) {
    Relay *r = (Relay *)arg;
    struct epoll_event events[64];
    for (;;) {
        int n = epoll_wait(r->ep, events, 64, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        pthread_mutex_lock(&r->mu);
        if (r->stopping) {
            pthread_mutex_unlock(&r->mu);
            break;
        }
        size_t before = r->ndone;
        for (int i = 0; i < n; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag == WAKE_TAG) continue;
            if (tag == TIMER_TAG) {
                expire(r);
                continue;
            }
            size_t slot = (size_t)((tag >> 1) & 0xffffffffu);
            uint32_t gen = (uint32_t)(tag >> 33);
            if (slot >= r->nslots) continue;
            Tunnel *t = &r->slots[slot];
            if (!t->used || (t->gen & 0x7fffffffu) != gen) continue; /* ended meanwhile */
            if (t->hello)
                on_hello_event(r, t, slot, (int)(tag & 1), events[i].events);
            else
                on_event(r, t, slot, (int)(tag & 1), events[i].events);
        }
        int report = r->ndone != before;
        pthread_mutex_unlock(&r->mu);
        if (report) {
            uint64_t one = 1;
            ssize_t ignored = write(r->notify, &one, sizeof one);
            (void)ignored;
        }
    }
    return NULL;
}

static void stop(Relay *r) {
    if (r->running) {
        pthread_mutex_lock(&r->mu);
        r->stopping = 1;
        pthread_mutex_unlock(&r->mu);
        uint64_t one = 1;
        ssize_t ignored = write(r->wake, &one, sizeof one);
        (void)ignored;
        Py_BEGIN_ALLOW_THREADS
        pthread_join(r->thread, NULL);
        Py_END_ALLOW_THREADS
        r->running = 0;
    }
    for (size_t i = 0; i < r->nslots; i++)
        if (r->slots[i].used) release(r, &r->slots[i]);
    for (size_t i = 0; i < r->ndone; i++) /* reports nobody read: their sockets too */
        for (int s = 0; s < 2; s++)
            if (r->done[i].fd[s] >= 0) {
                close(r->done[i].fd[s]);
                r->done[i].fd[s] = -1;
            }
    if (r->ep >= 0) close(r->ep);
    if (r->notify >= 0) close(r->notify);
    if (r->wake >= 0) close(r->wake);
    if (r->timer >= 0) close(r->timer);
    r->ep = r->notify = r->wake = r->timer = -1;
}

static PyObject *relay_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (!PyArg_ParseTuple(args, ":Relay")) return NULL;
    Relay *r = (Relay *)type->tp_alloc(type, 0);
    if (r == NULL) return NULL;
    r->ep = r->notify = r->wake = r->timer = -1;
    pthread_mutex_init(&r->mu, NULL);
    r->buf = malloc(BUF_SIZE);
    r->ep = epoll_create1(EPOLL_CLOEXEC);
    r->notify = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (r->buf == NULL || r->ep < 0 || r->notify < 0 || r->wake < 0 || r->timer < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(r);
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TIMER_TAG};
    if (epoll_ctl(r->ep, EPOLL_CTL_ADD, r->wake, &ev) < 0 ||
        epoll_ctl(r->ep, EPOLL_CTL_ADD, r->timer, &tev) < 0 ||
        (errno = pthread_create(&r->thread, NULL, run, r)) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(r);
        return NULL;
    }
    r->running = 1;
    return (PyObject *)r;
}

static void relay_dealloc(Relay *r) {
    PyTypeObject *type = Py_TYPE(r);
    stop(r);
    for (size_t i = 0; i < r->ndone; i++) free(r->done[i].sni);
    free(r->slots);
    free(r->done);
    free(r->buf);
    pthread_mutex_destroy(&r->mu);
    type->tp_free((PyObject *)r);
    Py_DECREF(type);
}

static int set_pending(Dir *dir, const char *data, Py_ssize_t len, size_t cap) {
    if (len == 0 && cap == 0) return 0;
    if (cap < (size_t)len) cap = (size_t)len;
    if ((dir->pend = malloc(cap)) == NULL) return -1;
    dir->cap = cap;
    memcpy(dir->pend, data, (size_t)len);
    dir->plen = (size_t)len;
    return 0;
}

static PyObject *relay_add(Relay *r, PyObject *args) {
    int cfd, ufd, sni_optional = 0, timeout_ms = 10000;
    const char *expect = NULL;
    Py_buffer up, down;
    if (!PyArg_ParseTuple(args, "iiy*y*|zpi:add", &cfd, &ufd, &up, &down, &expect,
                          &sni_optional, &timeout_ms))
        return NULL;
    PyObject *result = NULL;
    pthread_mutex_lock(&r->mu);
    if (r->stopping || !r->running) {
        PyErr_SetString(PyExc_ValueError, "the relay is closed");
        goto out;
    }
    size_t slot = 0;
    while (slot < r->nslots && r->slots[slot].used) slot++;
    if (slot == r->nslots) {
        size_t n = r->nslots ? r->nslots * 2 : 64;
        Tunnel *grown = realloc(r->slots, n * sizeof(Tunnel));
        if (grown == NULL) {
            PyErr_NoMemory();
            goto out;
        }
        memset(grown + r->nslots, 0, (n - r->nslots) * sizeof(Tunnel));
        r->slots = grown;
        r->nslots = n;
    }
    Tunnel *t = &r->slots[slot];
    uint32_t gen = t->gen;
    memset(t, 0, sizeof *t);
    t->gen = gen;
    t->fd[0] = fcntl(cfd, F_DUPFD_CLOEXEC, 3);
    t->fd[1] = t->fd[0] < 0 ? -1 : fcntl(ufd, F_DUPFD_CLOEXEC, 3);
    if (t->fd[1] < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        if (t->fd[0] >= 0) close(t->fd[0]);
        goto out;
    }
    if (set_pending(&t->dir[0], up.buf, up.len, expect ? HELLO_CAP : 0) < 0 ||
        set_pending(&t->dir[1], down.buf, down.len, 0) < 0 ||
        (expect != NULL && (t->expect = strdup(expect)) == NULL)) {
        PyErr_NoMemory();
        close(t->fd[0]);
        close(t->fd[1]);
        free(t->dir[0].pend);
        free(t->dir[1].pend);
        free(t->expect);
        memset(t, 0, sizeof *t);
        t->gen = gen;
        goto out;
    }
    t->hello = expect != NULL;
    t->sni_optional = sni_optional;
    t->deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    t->used = 1;
    for (int s = 0; s < 2; s++) {
        struct epoll_event ev = {.events = 0, .data.u64 = tag_of(slot, t->gen, s)};
        if (epoll_ctl(r->ep, EPOLL_CTL_ADD, t->fd[s], &ev) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            if (s == 1) epoll_ctl(r->ep, EPOLL_CTL_DEL, t->fd[0], NULL);
            for (int k = 0; k < 2; k++) {
                close(t->fd[k]);
                free(t->dir[k].pend);
                t->dir[k].pend = NULL;
            }
            free(t->expect);
            t->expect = NULL;
            t->used = 0;
            goto out;
        }
        t->watched[s] = 1;
    }
    /* The first bytes (the ClientHello) go out now, from this thread: the relay thread need
     * not wake up for them (one scheduling hop less on each tunnel's way). */
    uint64_t handle = handle_of(slot, t->gen);
    char reason[96] = "";
    int ended = 0;
    if (t->hello) { /* the ClientHello may have come with the CONNECT */
        if (t->dir[0].plen > 0 && judge_hello(t, reason, sizeof reason) < 0) ended = 1;
        if (!ended && t->hello && (!r->armed || t->deadline < r->armed)) arm(r, t->deadline);
    } else {
        for (int d = 0; d < 2 && !ended; d++)
            if (pending(&t->dir[d]) > 0 && flush(t, d, reason, sizeof reason) < 0) ended = 1;
    }
    if (!ended && update_interest(r, t, slot) < 0) {
        fail_reason(reason, sizeof reason, "epoll", errno);
        ended = 1;
    }
    if (ended) { /* reported like any end: the caller hears of it through finished() */
        finish(r, t, reason);
        uint64_t one = 1;
        ssize_t ignored = write(r->notify, &one, sizeof one);
        (void)ignored;
    }
    result = PyLong_FromUnsignedLongLong(handle);
out:
    pthread_mutex_unlock(&r->mu);
    PyBuffer_Release(&up);
    PyBuffer_Release(&down);
    return result;
}

static PyObject *relay_cancel(Relay *r, PyObject *arg) {
    unsigned long long handle = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    size_t slot = (size_t)(handle & 0xffffffffu);
    uint32_t gen = (uint32_t)(handle >> 32);
    PyObject *result = Py_None;
    unsigned long long up = 0, down = 0;
    int found = 0;
    pthread_mutex_lock(&r->mu);
    if (slot < r->nslots && r->slots[slot].used && r->slots[slot].gen == gen) {
        Tunnel *t = &r->slots[slot];
        up = t->bytes[0];
        down = t->bytes[1];
        release(r, t);
        found = 1;
    }
    pthread_mutex_unlock(&r->mu);
    if (found) return Py_BuildValue("(KK)", up, down);
    Py_INCREF(result);
    return result;
}

static PyObject *relay_finished(Relay *r, PyObject *unused) {
    uint64_t count;
    ssize_t ignored = read(r->notify, &count, sizeof count);
    (void)ignored;
    pthread_mutex_lock(&r->mu);
    PyObject *list = PyList_New((Py_ssize_t)r->ndone);
    if (list != NULL) {
        for (size_t i = 0; i < r->ndone; i++) {
            Done *d = &r->done[i];
            PyObject *item = Py_BuildValue("(KKKsiz(ii))", (unsigned long long)d->handle, d->up,
                                           d->down, d->reason, d->verdict, d->sni, d->fd[0],
                                           d->fd[1]);
            if (item == NULL) {
                Py_CLEAR(list);
                break;
            }
            free(d->sni);
            d->sni = NULL;
            d->fd[0] = d->fd[1] = -1; /* the caller's now */
            PyList_SET_ITEM(list, (Py_ssize_t)i, item);
        }
        if (list != NULL) r->ndone = 0;
    }
    pthread_mutex_unlock(&r->mu);
    return list;
}

static PyObject *relay_fileno(Relay *r, PyObject *unused) { return PyLong_FromLong(r->notify); }

static PyObject *relay_count(Relay *r, PyObject *unused) {
    size_t n = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->nslots; i++) n += r->slots[i].used != 0;
    pthread_mutex_unlock(&r->mu);
    return PyLong_FromSize_t(n);
}

static PyObject *relay_close(Relay *r, PyObject *unused) {
    stop(r);
    Py_RETURN_NONE;
}

static PyObject *py_parse_hello(PyObject *unused, PyObject *arg) {
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    char *sni = NULL;
    size_t need;
    int state = parse_hello((const unsigned char *)data.buf, (size_t)data.len, &sni, &need);
    PyBuffer_Release(&data);
    PyObject *result = Py_BuildValue("(iz)", state, sni);
    free(sni);
    return result;
}

static PyMethodDef module_methods[] = {
    {"parse_hello", (PyCFunction)py_parse_hello, METH_O, "(state, sni) of a ClientHello"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef relay_methods[] = {
    {"add", (PyCFunction)relay_add, METH_VARARGS, "relay an admitted tunnel; its handle"},
    {"cancel", (PyCFunction)relay_cancel, METH_O, "end a tunnel now; (up, down) or None"},
    {"finished", (PyCFunction)relay_finished, METH_NOARGS, "[(handle, up, down, reason)]"},
    {"fileno", (PyCFunction)relay_fileno, METH_NOARGS, "readable when tunnels finished"},
    {"open_tunnels", (PyCFunction)relay_count, METH_NOARGS, "tunnels being relayed"},
    {"close", (PyCFunction)relay_close, METH_NOARGS, "end every tunnel, stop the thread"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot relay_slots[] = {
    {Py_tp_new, relay_new},
    {Py_tp_dealloc, relay_dealloc},
    {Py_tp_methods, relay_methods},
    {Py_tp_doc, "One relay thread with its own epoll for the admitted tunnels of a proxy."},
    {0, NULL},
};

static PyType_Spec relay_spec = {"_relay.Relay", sizeof(Relay), 0, Py_TPFLAGS_DEFAULT,
                                 relay_slots};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_relay", NULL, -1, module_methods};

/* native.py loads a build only when VERSION is the one it expects (a stale build is ignored). */
PyMODINIT_FUNC PyInit__relay(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *type = PyType_FromSpec(&relay_spec);
    if (type == NULL || PyModule_AddObject(m, "Relay", type) < 0 ||
        PyModule_AddIntConstant(m, "VERSION", 2) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
