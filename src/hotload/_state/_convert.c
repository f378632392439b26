/*
 * hotload._state._convert: one loop for an integer array whose type changed.
 *
 * A typed state whose int32_t[25M] became int64_t[25M] is widened element by
 * element; CPython's strided memoryview copy does that at ~15 ns an element
 * (apply.py's fallback), this loop at memory speed.  Optional, like the
 * compiled router: without a compiler the package installs with the fallback.
 *
 * convert(dst, dst_off, dst_stride, dst_width, dst_signed,
 *         src, src_off, src_stride, src_width, src_signed, count, check) -> int
 *
 * Widths are 1, 2, 4 or 8 bytes, in the machine's byte order.  With check, a
 * value that does not fit the destination type stops the loop before it is
 * written: the result is its index; else -1 (every value written).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int64_t load_signed(const unsigned char *p, int w)
{
    switch (w) {
    case 1: { int8_t v; memcpy(&v, p, 1); return v; }
    case 2: { int16_t v; memcpy(&v, p, 2); return v; }
    case 4: { int32_t v; memcpy(&v, p, 4); return v; }
    default: { int64_t v; memcpy(&v, p, 8); return v; }
    }
}

static uint64_t load_unsigned(const unsigned char *p, int w)
{
    switch (w) {
    case 1: { uint8_t v; memcpy(&v, p, 1); return v; }
    case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
    default: { uint64_t v; memcpy(&v, p, 8); return v; }
    }
}

static void store(unsigned char *p, int w, uint64_t bits)
{
    switch (w) {
    case 1: { uint8_t v = (uint8_t)bits; memcpy(p, &v, 1); break; }
    case 2: { uint16_t v = (uint16_t)bits; memcpy(p, &v, 2); break; }
    case 4: { uint32_t v = (uint32_t)bits; memcpy(p, &v, 4); break; }
    default: memcpy(p, &bits, 8); break;
    }
}

/* Whether the value (negative, or its magnitude) fits w bytes, signed or not. */
static int fits(int negative, int64_t sv, uint64_t uv, int w, int is_signed)
{
    if (w == 8)
        return is_signed ? (negative || uv <= (uint64_t)INT64_MAX) : !negative;
    if (is_signed) {
        int64_t lo = -((int64_t)1 << (8 * w - 1)), hi = ((int64_t)1 << (8 * w - 1)) - 1;
        return negative ? sv >= lo : uv <= (uint64_t)hi;
    }
    return !negative && uv <= (((uint64_t)1 << (8 * w)) - 1);
}

static int width_ok(Py_ssize_t w) { return w == 1 || w == 2 || w == 4 || w == 8; }

static PyObject *convert(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer dst, src;
    Py_ssize_t doff, dstride, dw, soff, sstride, sw, count;
    int dsigned, ssigned, check;
    if (!PyArg_ParseTuple(args, "w*nnnpy*nnnpnp", &dst, &doff, &dstride, &dw, &dsigned, &src,
                          &soff, &sstride, &sw, &ssigned, &count, &check))
        return NULL;
    Py_ssize_t bad = -1;
    const char *why = NULL;
    if (!width_ok(dw) || !width_ok(sw))
        why = "widths must be 1, 2, 4 or 8 bytes";
    else if (count < 0 || doff < 0 || soff < 0 || dstride < 0 || sstride < 0)
        why = "negative offset, stride or count";
    else if (count > 0 && (doff + (count - 1) * dstride + dw > dst.len
                           || soff + (count - 1) * sstride + sw > src.len))
        why = "the elements run past a buffer";
    if (why == NULL) {
        unsigned char *d = (unsigned char *)dst.buf + doff;
        const unsigned char *s = (const unsigned char *)src.buf + soff;
        int iw = (int)sw, ow = (int)dw;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < count; i++, d += dstride, s += sstride) {
            int64_t sv = 0;
            uint64_t uv;
            int negative = 0;
            if (ssigned) {
                sv = load_signed(s, iw);
                negative = sv < 0;
                uv = (uint64_t)sv;
            } else {
                uv = load_unsigned(s, iw);
            }
            if (check && !fits(negative, sv, uv, ow, dsigned)) {
                bad = i;
                break;
            }
            store(d, ow, uv);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    if (why != NULL) {
        PyErr_SetString(PyExc_ValueError, why);
        return NULL;
    }
    return PyLong_FromSsize_t(bad);
}

static PyMethodDef methods[] = {
    {"convert", convert, METH_VARARGS,
     "Integers from src to dst, element by element; the first that does not fit, or -1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_convert", "Integer arrays between two widths.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__convert(void) { return PyModule_Create(&module); }
