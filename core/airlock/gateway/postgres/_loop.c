/* The compiled I/O loop of the PostgreSQL gateway's relay (optional; without it the asyncio
 * transports move the bytes, with the same outcomes: tests run the gateway both ways).
 *
 *   Loop()                  one thread with its own epoll for the relayed connections
 *   loop.add(client_fd, upstream_fd, on_data, on_end) -> handle
 *       relay one logged-in connection: the two fds are duplicated (the caller keeps and later
 *       closes its own); both sides start paused (see pause). From the loop's thread, with the
 *       GIL: on_data(side, bytes) for what side 0 (client) or 1 (upstream) sent; on_end(side,
 *       reason) once, when a side closed or failed (nothing more is read from either side
 *       after it; sends still go out).
 *   loop.send(handle, side, bytes) -> bool
 *       send to side now; what the socket cannot take waits and goes when it can, and the other
 *       side is not read meanwhile (flow control). False: the connection is gone or failed
 *       (its on_end comes, unless it was removed).
 *   loop.pause(handle, side, paused)   stop / resume reading side (the caller's own pause)
 *   loop.remove(handle) -> (to_client, to_upstream) | None
 *       stop relaying: close the duplicates, return the bytes not yet sent each way
 *   loop.close()            remove every connection, stop the thread (also on dealloc)
 *
 * Locking: the thread waits in epoll_wait without the GIL, then takes the GIL and the mutex (in
 * that order, as every Python caller does), reads, and calls on_data / on_end with the mutex
 * released: Python code may call send / pause / remove from inside them.
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
#include <unistd.h>

#define BUF_SIZE (256 * 1024)
#define WAKE_TAG UINT64_MAX
#define MAX_EVENTS 64

typedef struct {
    char *buf;
    size_t cap, len, off; /* bytes buf[off:len] wait to be sent */
} Out;

typedef struct {
    int used;
    uint32_t gen;
    int fd[2];     /* 0: client, 1: upstream (our duplicates) */
    Out out[2];    /* out[s]: waiting to go to side s */
    int paused[2]; /* the caller paused reading side s */
    int ended;     /* a side closed or failed: on_end reported, nothing more is read */
    int hup[2];
    uint32_t interest[2];
    int watched[2];
    PyObject *on_data, *on_end;
} Conn;

typedef struct {
    PyObject *fn; /* owned */
    int side;
    PyObject *data; /* owned: bytes (on_data) or str (on_end) */
} Call;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    pthread_t thread;
    int running, stopping;
    int ep, wake;
    Conn *slots;
    size_t nslots;
    char *buf;
} Loop;

static uint64_t handle_of(size_t slot, uint32_t gen) { return ((uint64_t)gen << 32) | slot; }
static uint64_t tag_of(size_t slot, uint32_t gen, int side) {
    return ((uint64_t)(gen & 0x7fffffffu) << 33) | ((uint64_t)slot << 1) | (uint64_t)side;
}

static Conn *lookup(Loop *L, unsigned long long handle) {
    size_t slot = (size_t)(handle & 0xffffffffu);
    uint32_t gen = (uint32_t)(handle >> 32);
    if (slot >= L->nslots || !L->slots[slot].used || L->slots[slot].gen != gen) return NULL;
    return &L->slots[slot];
}

static int readable(const Conn *c, int s) {
    return !c->ended && !c->paused[s] && c->out[1 - s].len == c->out[1 - s].off;
}

static int update_interest(Loop *L, Conn *c) {
    size_t slot = (size_t)(c - L->slots);
    for (int s = 0; s < 2; s++) {
        uint32_t want = 0;
        if (readable(c, s)) want |= EPOLLIN;
        if (c->out[s].len > c->out[s].off) want |= EPOLLOUT;
        /* A hung-up socket reports EPOLLHUP whatever the interest: with nothing to do on it,
         * it leaves the set (else the thread would spin on that HUP). */
        int watch = want != 0 || !c->hup[s];
        if (want != c->interest[s] || watch != c->watched[s]) {
            struct epoll_event ev = {.events = want, .data.u64 = tag_of(slot, c->gen, s)};
            int op = !watch ? EPOLL_CTL_DEL : c->watched[s] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
            if (epoll_ctl(L->ep, op, c->fd[s], &ev) < 0) return -1;
            c->interest[s] = want;
            c->watched[s] = watch;
        }
    }
    return 0;
}

/* Send what waits for side s; 1: all sent, 0: the socket is full, -1: error (errno). */
static int flush(Conn *c, int s) {
    Out *o = &c->out[s];
    while (o->off < o->len) {
        ssize_t n = send(c->fd[s], o->buf + o->off, o->len - o->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            int err = errno;
            o->len = o->off = 0; /* they can never go: dropped, so nothing waits on them */
            errno = err;
            return -1;
        }
        o->off += (size_t)n;
    }
    o->len = o->off = 0;
    return 1;
}

static int keep(Out *o, const char *data, size_t len) {
    if (o->off > 0 && o->off == o->len) o->len = o->off = 0;
    if (o->len + len > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + len) cap *= 2;
        char *grown = realloc(o->buf, cap);
        if (grown == NULL) return -1;
        o->buf = grown;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, data, len);
    o->len += len;
    return 0;
}

/* Free a connection's slot; the mutex is held. Its callbacks go to drop[0..1], released by
 * the caller once the mutex is not held (a release may run Python code, which may let another
 * thread take the GIL and then wait for the mutex: nothing Python runs under the mutex). */
static void release(Loop *L, Conn *c, PyObject **drop) {
    for (int s = 0; s < 2; s++) {
        if (c->watched[s]) epoll_ctl(L->ep, EPOLL_CTL_DEL, c->fd[s], NULL);
        close(c->fd[s]);
        free(c->out[s].buf);
        c->out[s].buf = NULL;
    }
    drop[0] = c->on_data;
    drop[1] = c->on_end;
    c->on_data = c->on_end = NULL;
    c->used = 0;
    c->gen++;
}

/* A side closed or failed: report it once (queued in calls). */
static void end(Conn *c, int s, const char *what, int err, Call *calls, size_t *ncalls) {
    if (c->ended) return;
    c->ended = 1;
    char reason[128];
    if (err) snprintf(reason, sizeof reason, "%s: %s", what, strerror(err));
    else snprintf(reason, sizeof reason, "%s", what);
    PyObject *text = PyUnicode_FromString(reason);
    if (text == NULL) {
        PyErr_Clear();
        return;
    }
    Py_INCREF(c->on_end);
    calls[*ncalls] = (Call){c->on_end, s, text};
    (*ncalls)++;
}

/* An epoll event on side s of c; the GIL and the mutex are held. At most two calls queued. */
static void on_event(Loop *L, Conn *c, int s, uint32_t events, Call *calls, size_t *ncalls) {
    if (events & (EPOLLHUP | EPOLLERR)) c->hup[s] = 1;
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && c->out[s].len > c->out[s].off) {
        if (flush(c, s) < 0) end(c, s, s ? "send upstream" : "send to client", errno, calls, ncalls);
    }
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && readable(c, s)) {
        ssize_t n;
        do {
            n = recv(c->fd[s], L->buf, BUF_SIZE, MSG_DONTWAIT);
        } while (n < 0 && errno == EINTR);
        if (n > 0) {
            PyObject *data = PyBytes_FromStringAndSize(L->buf, n);
            if (data == NULL) {
                PyErr_Clear();
                end(c, s, "out of memory", 0, calls, ncalls);
            } else {
                Py_INCREF(c->on_data);
                calls[*ncalls] = (Call){c->on_data, s, data};
                (*ncalls)++;
            }
        } else if (n == 0) {
            end(c, s, s ? "upstream closed" : "client closed", 0, calls, ncalls);
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            end(c, s, s ? "read from upstream" : "read from client", errno, calls, ncalls);
        }
    }
    if (update_interest(L, c) < 0) end(c, s, "epoll", errno, calls, ncalls);
}

static void *run(void *arg) {
    Loop *L = (Loop *)arg;
    struct epoll_event events[MAX_EVENTS];
    Call calls[2 * MAX_EVENTS];
    pthread_setname_np(pthread_self(), "airlock-pg-io");
    /* One thread state for the thread's life: taking the GIL per wake-up is then cheap. */
    PyGILState_STATE gil = PyGILState_Ensure();
    PyThreadState *state = PyEval_SaveThread();
    for (;;) {
        int n = epoll_wait(L->ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        PyEval_RestoreThread(state);
        pthread_mutex_lock(&L->mu);
        if (L->stopping) {
            pthread_mutex_unlock(&L->mu);
            state = PyEval_SaveThread();
            break;
        }
        size_t ncalls = 0;
        for (int i = 0; i < n; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag == WAKE_TAG) continue;
            size_t slot = (size_t)((tag >> 1) & 0xffffffffu);
            uint32_t gen = (uint32_t)(tag >> 33);
            if (slot >= L->nslots) continue;
            Conn *c = &L->slots[slot];
            if (!c->used || (c->gen & 0x7fffffffu) != gen) continue; /* removed meanwhile */
            on_event(L, c, (int)(tag & 1), events[i].events, calls, &ncalls);
        }
        pthread_mutex_unlock(&L->mu);
        Py_INCREF(L); /* the callbacks may drop the last other reference */
        for (size_t i = 0; i < ncalls; i++) {
            PyObject *args[2] = {PyLong_FromLong(calls[i].side), calls[i].data};
            PyObject *result =
                args[0] == NULL ? NULL : PyObject_Vectorcall(calls[i].fn, args, 2, NULL);
            Py_XDECREF(args[0]);
            if (result == NULL) PyErr_WriteUnraisable(calls[i].fn);
            Py_XDECREF(result);
            Py_DECREF(calls[i].fn);
            Py_DECREF(calls[i].data);
        }
        if (Py_REFCNT(L) == 1) { /* ours is the last: dealloc here (stop() detaches), then out */
            Py_DECREF(L);
            PyGILState_Release(gil);
            return NULL;
        }
        Py_DECREF(L);
        state = PyEval_SaveThread();
    }
    PyEval_RestoreThread(state);
    PyGILState_Release(gil);
    return NULL;
}

static void stop(Loop *L) {
    if (L->running) {
        pthread_mutex_lock(&L->mu);
        L->stopping = 1;
        pthread_mutex_unlock(&L->mu);
        uint64_t one = 1;
        ssize_t ignored = write(L->wake, &one, sizeof one);
        (void)ignored;
        if (pthread_equal(pthread_self(), L->thread)) {
            pthread_detach(L->thread); /* the dealloc runs on the loop's own thread */
        } else {
            Py_BEGIN_ALLOW_THREADS
            pthread_join(L->thread, NULL);
            Py_END_ALLOW_THREADS
        }
        L->running = 0;
    }
    for (size_t i = 0; i < L->nslots; i++) {
        PyObject *drop[2] = {NULL, NULL};
        pthread_mutex_lock(&L->mu);
        if (L->slots[i].used) release(L, &L->slots[i], drop);
        pthread_mutex_unlock(&L->mu);
        Py_XDECREF(drop[0]);
        Py_XDECREF(drop[1]);
    }
    if (L->ep >= 0) close(L->ep);
    if (L->wake >= 0) close(L->wake);
    L->ep = L->wake = -1;
}

static PyObject *loop_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (!PyArg_ParseTuple(args, ":Loop")) return NULL;
    Loop *L = (Loop *)type->tp_alloc(type, 0);
    if (L == NULL) return NULL;
    L->ep = L->wake = -1;
    pthread_mutex_init(&L->mu, NULL);
    L->buf = malloc(BUF_SIZE);
    L->ep = epoll_create1(EPOLL_CLOEXEC);
    L->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (L->buf == NULL || L->ep < 0 || L->wake < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(L);
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
    if (epoll_ctl(L->ep, EPOLL_CTL_ADD, L->wake, &ev) < 0 ||
        (errno = pthread_create(&L->thread, NULL, run, L)) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(L);
        return NULL;
    }
    L->running = 1;
    return (PyObject *)L;
}

static void loop_dealloc(Loop *L) {
    PyTypeObject *type = Py_TYPE(L);
    stop(L);
    free(L->slots);
    free(L->buf);
    pthread_mutex_destroy(&L->mu);
    type->tp_free((PyObject *)L);
    Py_DECREF(type);
}

static PyObject *loop_add(Loop *L, PyObject *args) {
    int cfd, ufd;
    PyObject *on_data, *on_end;
    if (!PyArg_ParseTuple(args, "iiOO:add", &cfd, &ufd, &on_data, &on_end)) return NULL;
    if (!PyCallable_Check(on_data) || !PyCallable_Check(on_end)) {
        PyErr_SetString(PyExc_TypeError, "on_data and on_end must be callable");
        return NULL;
    }
    /* No Python object is made under the mutex (see release): errors are raised after it. */
    int closed = 0, err = 0;
    uint64_t handle = 0;
    pthread_mutex_lock(&L->mu);
    if (L->stopping || !L->running) {
        closed = 1;
        goto out;
    }
    size_t slot = 0;
    while (slot < L->nslots && L->slots[slot].used) slot++;
    if (slot == L->nslots) {
        size_t n = L->nslots ? L->nslots * 2 : 64;
        Conn *grown = realloc(L->slots, n * sizeof(Conn));
        if (grown == NULL) {
            err = ENOMEM;
            goto out;
        }
        memset(grown + L->nslots, 0, (n - L->nslots) * sizeof(Conn));
        L->slots = grown;
        L->nslots = n;
    }
    Conn *c = &L->slots[slot];
    uint32_t gen = c->gen;
    memset(c, 0, sizeof *c);
    c->gen = gen;
    c->fd[0] = fcntl(cfd, F_DUPFD_CLOEXEC, 3);
    c->fd[1] = c->fd[0] < 0 ? -1 : fcntl(ufd, F_DUPFD_CLOEXEC, 3);
    if (c->fd[1] < 0) {
        err = errno;
        if (c->fd[0] >= 0) close(c->fd[0]);
        goto out;
    }
    c->paused[0] = c->paused[1] = 1;
    for (int s = 0; s < 2; s++) {
        struct epoll_event ev = {.events = 0, .data.u64 = tag_of(slot, c->gen, s)};
        if (epoll_ctl(L->ep, EPOLL_CTL_ADD, c->fd[s], &ev) < 0) {
            err = errno;
            if (s == 1) epoll_ctl(L->ep, EPOLL_CTL_DEL, c->fd[0], NULL);
            close(c->fd[0]);
            close(c->fd[1]);
            goto out;
        }
        c->watched[s] = 1;
    }
    Py_INCREF(on_data); /* an incref runs no Python code */
    Py_INCREF(on_end);
    c->on_data = on_data;
    c->on_end = on_end;
    c->used = 1;
    handle = handle_of(slot, c->gen);
out:
    pthread_mutex_unlock(&L->mu);
    if (closed) {
        PyErr_SetString(PyExc_ValueError, "the loop is closed");
        return NULL;
    }
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromUnsignedLongLong(handle);
}

static int side_of(int side) {
    if (side == 0 || side == 1) return 0;
    PyErr_SetString(PyExc_ValueError, "side is 0 (client) or 1 (upstream)");
    return -1;
}

static PyObject *loop_send(Loop *L, PyObject *args) {
    unsigned long long handle;
    int side;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "Kiy*:send", &handle, &side, &data)) return NULL;
    if (side_of(side) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    int ok = 0;
    pthread_mutex_lock(&L->mu);
    Conn *c = lookup(L, handle);
    if (c != NULL) {
        Out *o = &c->out[side];
        int was_waiting = o->len > o->off;
        ok = keep(o, data.buf, (size_t)data.len) == 0;
        if (ok && !was_waiting) ok = flush(c, side) >= 0;
        if (ok && o->len > o->off) ok = update_interest(L, c) == 0;
    }
    pthread_mutex_unlock(&L->mu);
    PyBuffer_Release(&data);
    return PyBool_FromLong(ok);
}

static PyObject *loop_pause(Loop *L, PyObject *args) {
    unsigned long long handle;
    int side, paused;
    if (!PyArg_ParseTuple(args, "Kip:pause", &handle, &side, &paused)) return NULL;
    if (side_of(side) < 0) return NULL;
    int ok = 0;
    pthread_mutex_lock(&L->mu);
    Conn *c = lookup(L, handle);
    if (c != NULL) {
        c->paused[side] = paused;
        ok = update_interest(L, c) == 0;
    }
    pthread_mutex_unlock(&L->mu);
    return PyBool_FromLong(ok);
}

static PyObject *loop_remove(Loop *L, PyObject *arg) {
    unsigned long long handle = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    Out left[2] = {{0}, {0}};
    PyObject *drop[2] = {NULL, NULL};
    pthread_mutex_lock(&L->mu);
    Conn *c = lookup(L, handle);
    int found = c != NULL;
    if (found) {
        for (int s = 0; s < 2; s++) { /* taken over: release frees nothing of them */
            left[s] = c->out[s];
            c->out[s].buf = NULL;
        }
        release(L, c, drop);
    }
    pthread_mutex_unlock(&L->mu);
    Py_XDECREF(drop[0]);
    Py_XDECREF(drop[1]);
    if (!found) Py_RETURN_NONE;
    PyObject *result = Py_BuildValue(
        "(y#y#)", left[0].buf ? left[0].buf + left[0].off : "",
        (Py_ssize_t)(left[0].len - left[0].off), left[1].buf ? left[1].buf + left[1].off : "",
        (Py_ssize_t)(left[1].len - left[1].off));
    free(left[0].buf);
    free(left[1].buf);
    return result;
}

static PyObject *loop_count(Loop *L, PyObject *unused) {
    size_t n = 0;
    pthread_mutex_lock(&L->mu);
    for (size_t i = 0; i < L->nslots; i++) n += L->slots[i].used != 0;
    pthread_mutex_unlock(&L->mu);
    return PyLong_FromSize_t(n);
}

static PyObject *loop_close(Loop *L, PyObject *unused) {
    stop(L);
    Py_RETURN_NONE;
}

static PyMethodDef loop_methods[] = {
    {"add", (PyCFunction)loop_add, METH_VARARGS, "relay a connection; its handle"},
    {"send", (PyCFunction)loop_send, METH_VARARGS, "send bytes to a side; False: gone"},
    {"pause", (PyCFunction)loop_pause, METH_VARARGS, "stop or resume reading a side"},
    {"remove", (PyCFunction)loop_remove, METH_O, "stop relaying; the bytes not sent"},
    {"connections", (PyCFunction)loop_count, METH_NOARGS, "connections being relayed"},
    {"close", (PyCFunction)loop_close, METH_NOARGS, "remove every connection, stop the thread"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot loop_slots[] = {
    {Py_tp_new, loop_new},
    {Py_tp_dealloc, loop_dealloc},
    {Py_tp_methods, loop_methods},
    {Py_tp_doc, "One I/O thread with its own epoll for the relayed connections of a gateway."},
    {0, NULL},
};

static PyType_Spec loop_spec = {"_loop.Loop", sizeof(Loop), 0, Py_TPFLAGS_DEFAULT, loop_slots};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_loop", NULL, -1, NULL};

/* native.py loads a build only when VERSION is the one it expects (a stale build is ignored). */
PyMODINIT_FUNC PyInit__loop(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *type = PyType_FromSpec(&loop_spec);
    if (type == NULL || PyModule_AddObject(m, "Loop", type) < 0 ||
        PyModule_AddIntConstant(m, "VERSION", 1) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
