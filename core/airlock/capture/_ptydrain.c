/* The compiled pty drain of the runner (optional; without it the runner's loop reads the pty
 * itself, see capture/drain.py, and tests run the same output through both).
 *
 *   Drain(fd, limit)        one thread that reads fd (a non-blocking pty master) into a ring of
 *                           `limit` bytes; it never takes the GIL
 *   drain.fileno()          an eventfd, readable when data, EOF or an error waits to be taken
 *   drain.take(gather) -> (bytes, eof)
 *                           everything read so far, in order; eof: nothing comes after it.
 *                           With gather > 0 and less than GATHER bytes read, first wait for
 *                           more (GIL released) while the command keeps writing, as the loop's
 *                           own read did: until GATHER bytes, or the pty has been empty for
 *                           gather seconds in all, or MAX_GATHER_NS passed. Raises OSError
 *                           when the read failed (not EIO, which is the slave side closing: EOF)
 *   drain.close()           stop the thread (before fd is closed); also on dealloc
 *
 * The thread reads into the free part of the ring without the lock; the taker copies the
 * filled part out without the lock; head and count change only under it, so the two parts
 * never overlap. A full ring stops the reads (the command then waits in write(2), as it did on
 * a full pty), so nothing is ever dropped.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define GATHER (512 * 1024) /* half the ring: the thread reads on while it is copied out */
#define MAX_GATHER_NS 50000000LL
#define MAX_READ (64 * 1024)

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    pthread_cond_t more;  /* the reader added data (or ended) */
    pthread_cond_t space; /* the taker freed room (or close) */
    pthread_t thread;
    int running, stopping, fd, notify, stop_fd;
    int signalled; /* notify was written since the last take */
    int eof, error;
    int idle; /* the thread waits for the pty to be readable (the command is not writing) */
    size_t want; /* a taker waits for this many bytes */
    char *ring;
    size_t cap, head, count;
} Drain;

static void signal_taker(Drain *d) {
    if (d->count >= d->want || d->eof || d->error) pthread_cond_signal(&d->more);
    if (!d->signalled) {
        uint64_t one = 1;
        ssize_t ignored = write(d->notify, &one, sizeof one);
        (void)ignored;
        d->signalled = 1;
    }
}

static void set_idle(Drain *d, int idle) {
    pthread_mutex_lock(&d->mu);
    d->idle = idle;
    if (idle) pthread_cond_signal(&d->more); /* a gathering taker now counts the pause */
    pthread_mutex_unlock(&d->mu);
}

/* Room to read into: (offset, length) of the free part after the filled one, 0 when closing. */
static size_t wait_room(Drain *d, size_t *at) {
    pthread_mutex_lock(&d->mu);
    while (d->count == d->cap && !d->stopping) pthread_cond_wait(&d->space, &d->mu);
    size_t room = 0;
    if (!d->stopping) {
        *at = (d->head + d->count) % d->cap;
        room = d->cap - d->count;
        if (room > d->cap - *at) room = d->cap - *at;
        if (room > MAX_READ) room = MAX_READ;
    }
    pthread_mutex_unlock(&d->mu);
    return room;
}

static void *run(void *arg) {
    Drain *d = arg;
    for (;;) {
        size_t at = 0, room = wait_room(d, &at);
        if (room == 0) return NULL;
        ssize_t n = read(d->fd, d->ring + at, room);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd fds[2] = {{.fd = d->fd, .events = POLLIN}, {.fd = d->stop_fd, .events = POLLIN}};
            set_idle(d, 1);
            poll(fds, 2, -1);
            set_idle(d, 0);
            continue;
        }
        int err = n < 0 ? errno : 0;
        pthread_mutex_lock(&d->mu);
        if (n > 0)
            d->count += (size_t)n;
        else if (n == 0 || err == EIO) /* EIO: the pty's slave side is gone */
            d->eof = 1;
        else
            d->error = err;
        int done = d->eof || d->error;
        signal_taker(d);
        pthread_mutex_unlock(&d->mu);
        if (done) return NULL;
    }
}

static void stop(Drain *d) {
    if (!d->running) return;
    pthread_mutex_lock(&d->mu);
    d->stopping = 1;
    pthread_cond_broadcast(&d->space);
    pthread_mutex_unlock(&d->mu);
    uint64_t one = 1;
    ssize_t ignored = write(d->stop_fd, &one, sizeof one);
    (void)ignored;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(d->thread, NULL);
    Py_END_ALLOW_THREADS
    d->running = 0;
}

/* The thread starts with every signal blocked: signals go to the Python threads (the runner's
 * loop hears them through its wakeup fd), never interrupt a read here. */
static int start(Drain *d) {
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &previous);
    errno = pthread_create(&d->thread, NULL, run, d);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    errno = err;
    return err;
}

static PyObject *drain_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    int fd;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "in:Drain", &fd, &limit)) return NULL;
    if (limit <= 0) {
        PyErr_SetString(PyExc_ValueError, "limit must be positive");
        return NULL;
    }
    Drain *d = (Drain *)type->tp_alloc(type, 0);
    if (d == NULL) return NULL;
    d->fd = fd;
    d->notify = d->stop_fd = -1;
    d->cap = (size_t)limit;
    pthread_mutex_init(&d->mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&d->more, &attr);
    pthread_condattr_destroy(&attr);
    pthread_cond_init(&d->space, NULL);
    d->ring = malloc(d->cap);
    d->notify = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    d->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (d->ring == NULL || d->notify < 0 || d->stop_fd < 0 || start(d) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(d);
        return NULL;
    }
    d->running = 1;
    return (PyObject *)d;
}

static void drain_dealloc(Drain *d) {
    PyTypeObject *type = Py_TYPE(d);
    stop(d);
    if (d->notify >= 0) close(d->notify);
    if (d->stop_fd >= 0) close(d->stop_fd);
    free(d->ring);
    pthread_cond_destroy(&d->more);
    pthread_cond_destroy(&d->space);
    pthread_mutex_destroy(&d->mu);
    type->tp_free((PyObject *)d);
    Py_DECREF(type);
}

static struct timespec after(long long ns) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    ns += t.tv_nsec;
    t.tv_sec += (time_t)(ns / 1000000000LL);
    t.tv_nsec = (long)(ns % 1000000000LL);
    return t;
}

static int before(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* Called with the lock held: wait for GATHER bytes while the command keeps the pty busy. A
 * pause of the command (the thread idle) ends the wait once `gather` seconds have passed since
 * the call; nothing makes it longer than MAX_GATHER_NS. */
static void wait_gather(Drain *d, double gather) {
    struct timespec pause_end = after((long long)(gather * 1e9));
    struct timespec cap = after(MAX_GATHER_NS);
    d->want = GATHER;
    while (d->count < GATHER && !d->eof && !d->error && d->running) {
        const struct timespec *until = d->idle && before(&pause_end, &cap) ? &pause_end : &cap;
        struct timespec now = after(0);
        if (!before(&now, until)) break;
        pthread_cond_timedwait(&d->more, &d->mu, until);
    }
    d->want = 0;
}

static PyObject *drain_take(Drain *d, PyObject *args) {
    double gather = 0.0;
    if (!PyArg_ParseTuple(args, "|d:take", &gather)) return NULL;
    size_t head, count;
    int eof, error;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&d->mu);
    if (gather > 0 && d->count < GATHER && !d->eof && !d->error) wait_gather(d, gather);
    uint64_t ignored;
    if (read(d->notify, &ignored, sizeof ignored) < 0) ignored = 0; /* empty: nothing to clear */
    d->signalled = 0;
    head = d->head;
    count = d->count;
    eof = d->eof;
    error = d->error;
    pthread_mutex_unlock(&d->mu);
    Py_END_ALLOW_THREADS
    if (error && count == 0) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)count);
    if (data == NULL) return NULL;
    char *out = PyBytes_AS_STRING(data);
    size_t first = count < d->cap - head ? count : d->cap - head;
    memcpy(out, d->ring + head, first);
    memcpy(out + first, d->ring, count - first);
    pthread_mutex_lock(&d->mu);
    d->head = (head + count) % d->cap;
    d->count -= count;
    pthread_cond_signal(&d->space);
    pthread_mutex_unlock(&d->mu);
    return Py_BuildValue("(NO)", data, eof ? Py_True : Py_False);
}

static PyObject *drain_fileno(Drain *d, PyObject *unused) { return PyLong_FromLong(d->notify); }

static PyObject *drain_close(Drain *d, PyObject *unused) {
    stop(d);
    Py_RETURN_NONE;
}

static PyMethodDef drain_methods[] = {
    {"take", (PyCFunction)drain_take, METH_VARARGS, "take([gather]) -> (data, eof)"},
    {"fileno", (PyCFunction)drain_fileno, METH_NOARGS, "readable when data or EOF waits"},
    {"close", (PyCFunction)drain_close, METH_NOARGS, "stop the thread"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot drain_slots[] = {
    {Py_tp_new, drain_new},
    {Py_tp_dealloc, drain_dealloc},
    {Py_tp_methods, drain_methods},
    {Py_tp_doc, "One thread that keeps a pty master drained into a bounded ring."},
    {0, NULL},
};

static PyType_Spec drain_spec = {"_ptydrain.Drain", sizeof(Drain), 0, Py_TPFLAGS_DEFAULT,
                                 drain_slots};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ptydrain", NULL, -1, NULL};

/* drain.py loads a build only when VERSION is the one it expects (a stale build is ignored). */
PyMODINIT_FUNC PyInit__ptydrain(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *type = PyType_FromSpec(&drain_spec);
    if (type == NULL || PyModule_AddObject(m, "Drain", type) < 0 ||
        PyModule_AddIntConstant(m, "VERSION", 1) < 0 ||
        PyModule_AddIntConstant(m, "GATHER", GATHER) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
