/* SegmentIndex.locate as a CPython extension: one global sample index -> (stream id, cursor, is_anchor, phase).
 *
 * The per-item lookup is called once per sample by the data loader, so its cost is mostly the call itself;
 * a ctypes call costs ~1 us, a Python closure a few hundred ns, this a few tens. `locator(...)` returns a
 * builtin function (METH_O, bound to a Locator object that holds buffer views of the index arrays, so they
 * stay alive and are never copied). Same arithmetic as the Python closure in mixture.py, which is the
 * fallback where this does not compile (no Python headers); tests check that both agree.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include <string.h>

/* cur: packed 6-byte records (int16 local stream id, uint32 cursor), mixture.CUR_RECORD */
enum { B_SLOT, B_PHASE, B_ASID, B_ASTEP, B_ABASE, B_SIDS, B_CUR, NBUF };
static const Py_ssize_t ITEMSIZE[NBUF] = {4, 4, 4, 4, 4, 2, 6};

typedef struct {
    PyObject_HEAD
    long long segment, start, end, gb, apb, cpb, period;
    Py_ssize_t nbatch, nsids, ncur;
    Py_buffer buf[NBUF];
    int nheld;
} Locator;

static void locator_dealloc(Locator *self) {
    for (int k = 0; k < self->nheld; ++k) PyBuffer_Release(&self->buf[k]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject LocatorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_hebatron_locate.Locator",
    .tp_basicsize = sizeof(Locator),
    .tp_dealloc = (destructor)locator_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "index arrays of one segment (see locator)",
};

static PyObject *outside(Locator *self, PyObject *g) {
    PyErr_Format(PyExc_IndexError, "sample index %S is outside segment %lld [%lld, %lld)", g, self->segment,
                 self->start, self->end);
    return NULL;
}

static PyObject *locate(PyObject *obj, PyObject *arg) {
    Locator *self = (Locator *)obj;
    PyObject *g = arg;
    int overflow = 0;
    long long v;
    if (PyLong_CheckExact(arg)) {
        v = PyLong_AsLongLongAndOverflow(arg, &overflow);
    } else {  /* like int(g) in the Python version: numpy integers, 0-d tensors */
        g = PyNumber_Long(arg);
        if (g == NULL) return NULL;
        v = PyLong_AsLongLongAndOverflow(g, &overflow);
    }
    if (v == -1 && PyErr_Occurred()) goto fail;
    if (overflow || v < self->start || v >= self->end) {
        outside(self, g);
        goto fail;
    }
    if (g != arg) Py_DECREF(g);
    const long long x = v - self->start, batch = x / self->gb, pos = x - batch * self->gb;
    const long long s = ((const int32_t *)self->buf[B_SLOT].buf)[pos];
    const long long ph = ((const int32_t *)self->buf[B_PHASE].buf)[batch];
    long long sid, cursor;
    if (s >= 0) {
        const long long j = batch * self->apb + s, q = j / self->period, r = j - q * self->period;
        sid = ((const int32_t *)self->buf[B_ASID].buf)[r];
        cursor = q * ((const int32_t *)self->buf[B_ASTEP].buf)[r] + ((const int32_t *)self->buf[B_ABASE].buf)[r];
    } else {
        const char *rec = (const char *)self->buf[B_CUR].buf + 6 * (size_t)(batch * self->cpb - s - 1);
        int16_t src;
        uint32_t cur;
        memcpy(&src, rec, 2);
        memcpy(&cur, rec + 2, 4);
        sid = ((const int16_t *)self->buf[B_SIDS].buf)[src];
        cursor = cur;
    }
    PyObject *t = PyTuple_New(4);
    if (t == NULL) return NULL;
    PyObject *a = PyLong_FromLongLong(sid), *b = PyLong_FromLongLong(cursor), *d = PyLong_FromLongLong(ph);
    if (a == NULL || b == NULL || d == NULL) {
        Py_XDECREF(a); Py_XDECREF(b); Py_XDECREF(d); Py_DECREF(t);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    PyTuple_SET_ITEM(t, 2, Py_NewRef(s >= 0 ? Py_True : Py_False));
    PyTuple_SET_ITEM(t, 3, d);
    return t;
fail:
    if (g != arg) Py_DECREF(g);
    return NULL;
}

static PyMethodDef LOCATE_DEF = {"locate", locate, METH_O,
                                 "locate(g) -> (stream id, cursor, is_anchor, phase order index) of global sample g"};

/* locator(segment, start, end, global_batch, anchor_per_batch, curriculum_per_batch, period,
 *         slot, batch_phase, a_sid, a_step, a_base, stream_ids, cur) -> locate function.
 * Checks every table's item size and length against the segment's shape, so a lookup never reads outside
 * them (record stream ids are local ids below len(stream_ids), as the chairman kernel writes them). */
static PyObject *locator(PyObject *mod, PyObject *args) {
    long long segment, start, end, gb, apb, cpb, period;
    PyObject *objs[NBUF];
    if (!PyArg_ParseTuple(args, "LLLLLLLOOOOOOO", &segment, &start, &end, &gb, &apb, &cpb, &period, &objs[0],
                          &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &objs[6]))
        return NULL;
    if (gb <= 0 || apb < 0 || cpb < 0 || apb + cpb != gb || period <= 0 || end < start || (end - start) % gb) {
        PyErr_SetString(PyExc_ValueError, "locator: inconsistent segment shape");
        return NULL;
    }
    Locator *self = PyObject_New(Locator, &LocatorType);
    if (self == NULL) return NULL;
    self->nheld = 0;
    self->segment = segment; self->start = start; self->end = end;
    self->gb = gb; self->apb = apb; self->cpb = cpb; self->period = period;
    for (int k = 0; k < NBUF; ++k) {
        if (PyObject_GetBuffer(objs[k], &self->buf[k], PyBUF_C_CONTIGUOUS) < 0) {
            Py_DECREF(self);
            return NULL;
        }
        self->nheld = k + 1;
        if (self->buf[k].itemsize != ITEMSIZE[k] && self->buf[k].len > 0) {
            PyErr_Format(PyExc_ValueError, "locator: table %d has item size %zd, expected %zd", k,
                         self->buf[k].itemsize, ITEMSIZE[k]);
            Py_DECREF(self);
            return NULL;
        }
    }
    const long long nbatch = (end - start) / gb;
    const Py_ssize_t n[NBUF] = {gb, nbatch, apb ? period : 0, apb ? period : 0, apb ? period : 0, 1,
                                nbatch * cpb};
    for (int k = 0; k < NBUF; ++k) {
        if (self->buf[k].len / ITEMSIZE[k] < n[k] && !(k == B_SIDS && nbatch * cpb == 0)) {
            PyErr_Format(PyExc_ValueError, "locator: table %d has %zd items, expected at least %zd", k,
                         self->buf[k].len / ITEMSIZE[k], n[k]);
            Py_DECREF(self);
            return NULL;
        }
    }
    PyObject *f = PyCFunction_New(&LOCATE_DEF, (PyObject *)self);
    Py_DECREF(self);
    return f;
}

static PyMethodDef METHODS[] = {
    {"locator", locator, METH_VARARGS, "a fast SegmentIndex.locate over the given index arrays"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_hebatron_locate", NULL, -1, METHODS};

PyMODINIT_FUNC PyInit__hebatron_locate(void) {
    if (PyType_Ready(&LocatorType) < 0) return NULL;
    return PyModule_Create(&MODULE);
}
