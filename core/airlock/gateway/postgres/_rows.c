/* The compiled row path of the PostgreSQL gateway (optional; rowpath.py holds the pure-Python
 * twin of every function here, and a property test checks that both give equal results).
 *
 *   split(buf, table, limit) -> (frames, pos)
 *       whole typed messages in buf: [(type, start, end)], and where the unfinished tail starts;
 *       table is 256 bytes, non-zero for an allowed type byte.
 *   join_values(buf, run) -> bytes
 *       the non-empty values of the DataRows in run (a list of frames), joined by NUL.
 *   mask_one_column(buf, run, index, replacement) -> bytes
 *       the DataRows of run with column index replaced by replacement (length prefix included);
 *       NULLs stay NULL.
 *
 * Anything malformed raises ValueError (the caller turns it into a ProtocolError). Every read
 * is bounds-checked against its own message, never only against the buffer. Each check is
 * written as a subtraction of two positions already known to be in order (pos <= end), so it
 * cannot overflow whatever a length field says (int32: -1 is NULL, other negatives are refused
 * or read as NULL like the Python twin does, up to INT32_MAX is only compared, never added
 * before the check). No Python code runs between the two passes of join_values and
 * mask_one_column (no callback, no GC-tracked allocation), so the second pass writes exactly
 * the size the first one counted.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline int32_t be32(const unsigned char *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

static inline void put32(unsigned char *p, int32_t v) {
    uint32_t u = (uint32_t)v;
    p[0] = (unsigned char)(u >> 24);
    p[1] = (unsigned char)(u >> 16);
    p[2] = (unsigned char)(u >> 8);
    p[3] = (unsigned char)u;
}

static PyObject *split(PyObject *self, PyObject *args) {
    Py_buffer buf, table;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "y*y*n", &buf, &table, &limit)) return NULL;
    PyObject *frames = NULL;
    Py_ssize_t pos = 0;
    if (table.len != 256) {
        PyErr_SetString(PyExc_ValueError, "type table must be 256 bytes");
        goto done;
    }
    frames = PyList_New(0);
    if (frames == NULL) goto done;
    const unsigned char *b = buf.buf, *t = table.buf;
    Py_ssize_t size = buf.len;
    while (size - pos >= 5) { /* 0 <= pos <= size: the 5-byte header is inside buf */
        unsigned char kind = b[pos];
        int32_t length = be32(b + pos + 1);
        if (!t[kind] || length < 4 || (Py_ssize_t)length > limit) {
            PyErr_SetString(PyExc_ValueError, "bad message header");
            Py_CLEAR(frames);
            goto done;
        }
        if ((Py_ssize_t)length > size - pos - 1) break; /* unfinished: wait for the rest */
        Py_ssize_t end = pos + 1 + (Py_ssize_t)length;      /* <= size */
        PyObject *frame = PyTuple_New(3);
        if (frame == NULL) { Py_CLEAR(frames); goto done; }
        PyTuple_SET_ITEM(frame, 0, PyLong_FromLong(kind));
        PyTuple_SET_ITEM(frame, 1, PyLong_FromSsize_t(pos));
        PyTuple_SET_ITEM(frame, 2, PyLong_FromSsize_t(end));
        if (PyErr_Occurred() || PyList_Append(frames, frame) < 0) {
            Py_DECREF(frame);
            Py_CLEAR(frames);
            goto done;
        }
        Py_DECREF(frame);
        pos = end;
    }
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&table);
    if (frames == NULL) return NULL;
    return Py_BuildValue("(Nn)", frames, pos);
}

/* start and end of frame i of run (a list of (type, start, end) tuples), checked. */
static int frame_at(PyObject *run, Py_ssize_t i, Py_ssize_t size, Py_ssize_t *start,
                    Py_ssize_t *end) {
    PyObject *frame = PyList_GET_ITEM(run, i);
    if (!PyTuple_Check(frame) || PyTuple_GET_SIZE(frame) != 3) {
        PyErr_SetString(PyExc_TypeError, "a frame is a (type, start, end) tuple");
        return -1;
    }
    *start = PyLong_AsSsize_t(PyTuple_GET_ITEM(frame, 1));
    *end = PyLong_AsSsize_t(PyTuple_GET_ITEM(frame, 2));
    if (PyErr_Occurred()) return -1;
    /* 0 <= start <= end <= size before end - start is computed (frames are the caller's: a
     * forged one must not reach outside buf); a DataRow has a header and a column count. */
    if (*start < 0 || *end > size || *start > *end || *end - *start < 7) {
        PyErr_SetString(PyExc_ValueError, "a DataRow is shorter than its columns say");
        return -1;
    }
    return 0;
}

static PyObject *join_values(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *run;
    if (!PyArg_ParseTuple(args, "y*O!", &buf, &PyList_Type, &run)) return NULL;
    const unsigned char *b = buf.buf;
    Py_ssize_t count = PyList_GET_SIZE(run), total = 0, values = 0;
    PyObject *out = NULL;
    for (int pass = 0; pass < 2; pass++) {
        unsigned char *w = NULL;
        if (pass == 1) {
            out = PyBytes_FromStringAndSize(NULL, values ? total + values - 1 : 0);
            if (out == NULL) goto done;
            w = (unsigned char *)PyBytes_AS_STRING(out);
        }
        Py_ssize_t written = 0;
        for (Py_ssize_t i = 0; i < count; i++) {
            Py_ssize_t start, end;
            if (frame_at(run, i, buf.len, &start, &end) < 0) goto fail;
            int columns = (b[start + 5] << 8) | b[start + 6];
            Py_ssize_t pos = start + 7;
            for (int c = 0; c < columns; c++) { /* invariant: start + 7 <= pos <= end */
                if (end - pos < 4) goto short_row;
                int32_t size = be32(b + pos);
                if (size > 0) {
                    if ((Py_ssize_t)size > end - pos - 4) goto short_row;
                    if (pass == 0) {
                        total += size;
                        values++;
                    } else {
                        if (written) *w++ = 0;
                        memcpy(w, b + pos + 4, (size_t)size);
                        w += size;
                        written++;
                    }
                    pos += 4 + (Py_ssize_t)size;
                } else {
                    pos += 4;
                }
            }
        }
    }
    goto done;
short_row:
    PyErr_SetString(PyExc_ValueError, "a DataRow is shorter than its columns say");
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&buf);
    return out;
}

static PyObject *mask_one_column(PyObject *self, PyObject *args) {
    Py_buffer buf, rep;
    PyObject *run;
    Py_ssize_t index;
    if (!PyArg_ParseTuple(args, "y*O!ny*", &buf, &PyList_Type, &run, &index, &rep)) return NULL;
    const unsigned char *b = buf.buf;
    Py_ssize_t count = PyList_GET_SIZE(run), width = rep.len, total = 0;
    PyObject *out = NULL;
    if (index < 0) {
        PyErr_SetString(PyExc_ValueError, "negative column index");
        goto done;
    }
    for (int pass = 0; pass < 2; pass++) {
        unsigned char *w = NULL;
        if (pass == 1) {
            out = PyBytes_FromStringAndSize(NULL, total);
            if (out == NULL) goto done;
            w = (unsigned char *)PyBytes_AS_STRING(out);
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            Py_ssize_t start, end;
            if (frame_at(run, i, buf.len, &start, &end) < 0) goto fail;
            Py_ssize_t columns = (b[start + 5] << 8) | b[start + 6];
            if (columns <= index) { /* so index < 65536: the loop below is short */
                PyErr_SetString(PyExc_ValueError,
                                "a DataRow has fewer columns than its RowDescription");
                goto fail;
            }
            Py_ssize_t pos = start + 7;
            for (Py_ssize_t c = 0; c < index; c++) { /* invariant: start + 7 <= pos <= end */
                if (end - pos < 4) goto short_row;
                int32_t size = be32(b + pos);
                if (size > 0 && (Py_ssize_t)size > end - pos - 4) goto short_row;
                pos += size > 0 ? 4 + (Py_ssize_t)size : 4;
            }
            if (end - pos < 4) goto short_row;
            int32_t size = be32(b + pos);
            if (size < 0) { /* NULL stays NULL */
                if (pass == 0) total += end - start;
                else { memcpy(w, b + start, (size_t)(end - start)); w += end - start; }
                continue;
            }
            if ((Py_ssize_t)size > end - pos - 4) goto short_row;
            Py_ssize_t after = pos + 4 + (Py_ssize_t)size; /* <= end */
            Py_ssize_t length = end - start - 1 + width - 4 - size;
            if (length > INT32_MAX) {
                PyErr_SetString(PyExc_ValueError, "a masked DataRow is too long");
                goto fail;
            }
            if (pass == 0) {
                total += 1 + length;
                continue;
            }
            *w++ = 'D';
            put32(w, (int32_t)length);
            w += 4;
            memcpy(w, b + start + 5, (size_t)(pos - start - 5));
            w += pos - start - 5;
            memcpy(w, rep.buf, (size_t)width);
            w += width;
            memcpy(w, b + after, (size_t)(end - after));
            w += end - after;
        }
    }
    goto done;
short_row:
    PyErr_SetString(PyExc_ValueError, "a DataRow is shorter than its columns say");
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&rep);
    return out;
}

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS, "whole typed messages in a buffer"},
    {"join_values", join_values, METH_VARARGS, "the values of DataRows joined by NUL"},
    {"mask_one_column", mask_one_column, METH_VARARGS, "DataRows with one column replaced"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rows", NULL, -1, methods};

/* rowpath.py loads a build only when VERSION is the one it expects (a stale build is ignored). */
PyMODINIT_FUNC PyInit__rows(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "VERSION", 2) < 0) Py_CLEAR(m);
    return m;
}
