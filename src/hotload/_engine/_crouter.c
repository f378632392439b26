/* hotload._engine._crouter: the compiled router.
 *
 * Four small types, doing in C exactly what the generated Python router in
 * _registry.py does, so a routed call costs about what a raw cffi call costs:
 *
 *   Gate    one per version (and one per sentinel): the in-flight count, the
 *           `retiring` flag, the `served` count, the call `table` (a list,
 *           indexed by export slot), the `owner` (the Version) and the two
 *           events to set when the last call leaves a retiring version.
 *           `append(x)`/`pop()` count a call in and out: the names of the
 *           deque methods, so Python code (the slow path, `pinned()`) uses
 *           either gate unchanged.  len(gate) is the in-flight count.
 *   Route   one per plugin: which gate new calls enter (`route.gate`), or
 *           two gates and the key that splits calls between them (a canary).
 *   Router  one per export: a vectorcall callable, plugin.add(1, 2).
 *   Checked an export's cffi function behind the argument checks cffi does
 *           not make (a float beyond FLT_MAX, a NUL in a C string, a list
 *           the callee writes): only for exports with such a parameter.
 *
 * The memory-ordering argument (why no call can start in an image being
 * closed).  The router's steps, all with the GIL held:
 *     R1  g = route->gate (or a canary's: route_pick); g->inflight += 1
 *     R2  if g->retiring: undo R1, take the Python slow path
 *     R3  call g->table[idx] (cffi releases the GIL inside the C function)
 *     R4  g->inflight -= 1; if g->retiring and g->inflight == 0: wake
 * The retirer (Version.retire, then the host's quiesce or the reaper), in
 * Python, also with the GIL held:
 *     T1  g->retiring = 1                    (the Gate.retiring setter)
 *     T2  wait until g->inflight == 0, then close the image
 * R1-R2 run without releasing the GIL (no Python code, no allocation that
 * could run a GC finaliser, nothing between them that can switch threads),
 * so they are one indivisible step with respect to T1.  The GIL's release
 * and acquire are full barriers, so every thread sees the others' plain
 * stores in the order the GIL hands over.  Hence either R1-R2 ran before T1:
 * then T2 sees inflight >= 1 and waits for R4, which sees retiring (set
 * before T2 began waiting) and wakes it; or after T1: then R2 sees retiring
 * and the call never reaches R3 in this version.  This is the same argument
 * as the Python router's (deque.append is atomic under the GIL), with R1-R2
 * made atomic by running in C.
 *
 * Without the GIL (a free-threaded build) the argument fails in two places:
 * R1/R2 vs T1/T2 is a store-load (Dekker) pattern that would need seq_cst
 * atomics on both sides, and reading route->gate while another thread
 * replaces it (and drops the last reference to the old gate) needs a safe
 * incref (_Py_TryIncref).  Neither is done, so hotload.Host still refuses a
 * free-threaded interpreter with the GIL disabled.
 *
 * A Router holds a strong reference to its gate for the duration of a call
 * (the route may switch, and the version may be dropped, while the C
 * function runs with the GIL released) and to the function it calls (the
 * version's table may be replaced by a later commit).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#ifndef _WIN32
#include <dlfcn.h>
#else
#include <intrin.h>
#include <windows.h>
#endif

/* --------------------------------------------------------------- Metrics
 *
 * Every (version, export) has an ExportStats in its version's gate: exact
 * 64-bit counts (calls, errors by kind) and the calls inside now, always;
 * the latency of every Nth call (the gate's `sample`; 0: metrics off, the
 * benchmark baseline) in a log-linear histogram.  All of it is written with
 * the GIL held, so plain stores are exact (see the memory-ordering argument
 * above); a call's error is classified only when it raised.
 *
 * The histogram (HDR-style): bucket 0 holds [0, 64 ns); then 8 sub-buckets
 * per power of two from 2^6 ns to 2^36 ns (68.7 s), each 1/8 of its power
 * wide (so a value is known to within 12.5 %); the last bucket holds
 * 2^36 ns and above.  _engine/metrics.py has the same arithmetic in Python
 * (the Python router's) and turns the counts into quantiles and Prometheus
 * buckets. */

#define HB_SUB_BITS 3
#define HB_SUB (1 << HB_SUB_BITS)
#define HB_MIN_EXP 6
#define HB_MAX_EXP 36
#define HB_N (2 + (HB_MAX_EXP - HB_MIN_EXP) * HB_SUB)

/* The error kinds, in the order snapshots list them (metrics.ERROR_KINDS). */
enum { ERR_ARGUMENT, ERR_CRASH, ERR_TIMEOUT, ERR_STOPPED, ERR_OTHER, ERR_KINDS };

typedef struct {
    uint64_t calls;     /* the three a call touches, in one cache line */
    uint64_t countdown; /* calls until the next sampled one */
    int64_t inflight;
    uint64_t errors[ERR_KINDS];
    uint64_t sampled;
    uint64_t sum_ns;
    uint64_t hist[HB_N];
} ExportStats;

/* The exception classes of the kinds (set once by lifecycle.py through
 * error_kinds()): SignatureError, PluginTimeoutError, (PluginStoppedError,
 * PluginQuarantinedError), PluginCrashedError; a subclass is tested before
 * its base. */
static PyObject *kind_argument, *kind_timeout, *kind_stopped, *kind_crash;

static int
classify(PyObject *given) /* an exception, or its class */
{
    if (kind_argument == NULL || given == NULL)
        return ERR_OTHER;
    if (PyErr_GivenExceptionMatches(given, kind_argument))
        return ERR_ARGUMENT;
    if (PyErr_GivenExceptionMatches(given, kind_timeout))
        return ERR_TIMEOUT;
    if (PyErr_GivenExceptionMatches(given, kind_stopped))
        return ERR_STOPPED;
    if (PyErr_GivenExceptionMatches(given, kind_crash))
        return ERR_CRASH;
    return ERR_OTHER;
}

static inline uint64_t
now_ns(void)
{
#ifdef _WIN32
    static LARGE_INTEGER freq;
    LARGE_INTEGER c;
    if (freq.QuadPart == 0)
        QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&c);
    return (uint64_t)((double)c.QuadPart * 1e9 / (double)freq.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

static inline int
floor_log2(uint64_t v) /* v > 0 */
{
#ifdef _WIN32
    unsigned long i;
    _BitScanReverse64(&i, v);
    return (int)i;
#else
    return 63 - __builtin_clzll(v);
#endif
}

static inline int
hist_bucket(uint64_t ns)
{
    if (ns < ((uint64_t)1 << HB_MIN_EXP))
        return 0;
    int e = floor_log2(ns);
    if (e >= HB_MAX_EXP)
        return HB_N - 1;
    int sub = (int)((ns >> (e - HB_SUB_BITS)) & (HB_SUB - 1));
    return 1 + (e - HB_MIN_EXP) * HB_SUB + sub;
}

static inline void
stats_record(ExportStats *s, uint64_t ns)
{
    s->sampled++;
    s->sum_ns += ns;
    s->hist[hist_bucket(ns)]++;
}

/* ------------------------------------------------------------------ Gate */

typedef struct {
    PyObject_HEAD
    Py_ssize_t inflight;
    int retiring;
    Py_ssize_t served;
    PyObject *table;   /* list, never NULL */
    PyObject *owner;   /* the Version or Sentinel */
    PyObject *drained; /* threading.Event or None */
    PyObject *wake;    /* threading.Event or None */
    uint64_t sample;     /* time every Nth call of an export; 0: no metrics at all */
    ExportStats *stats;  /* one per export slot (grow()), never shrinks; NULL: none yet */
    Py_ssize_t nstats;
} GateObject;

static PyTypeObject GateType;

/* The calls to skip before the next timed one: uniform in [0, 2(N-1)], so a
 * call is timed every N calls on average but at no fixed phase.  A fixed
 * countdown aliased with periodic traffic (two players taking turns, a loop
 * that yields every 64 calls): every sample fell on the same kind of call,
 * and a judge comparing two such samples aborted an A/A canary 8 times of 8
 * and promoted a 3x slower build (found by an attacker).  xorshift64*, its
 * state shared by every gate under the GIL. */
static uint64_t gap_state = 0x9E3779B97F4A7C15ull;

static inline uint64_t
sample_gap(uint64_t n)
{
    if (n <= 1)
        return 0;
    gap_state ^= gap_state >> 12;
    gap_state ^= gap_state << 25;
    gap_state ^= gap_state >> 27;
    return ((gap_state * 0x2545F4914F6CDD1Dull) >> 11) % (2 * (n - 1) + 1);
}

static PyObject *str_set;

/* Set both events when the gate is empty: the Python Version.exited(). */
static int
gate_exited(GateObject *g)
{
    if (g->inflight != 0)
        return 0;
    PyObject *evs[2] = {g->drained, g->wake};
    for (int i = 0; i < 2; i++) {
        if (evs[i] == Py_None)
            continue;
        PyObject *r = PyObject_CallMethodNoArgs(evs[i], str_set);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* gate_exited with an exception possibly pending (the router's exit path). */
static void
gate_exited_keep_error(GateObject *g)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (gate_exited(g) < 0)
        PyErr_WriteUnraisable((PyObject *)g);
    PyErr_Restore(type, value, tb);
}

static int
gate_init(GateObject *self, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"owner", "drained", "wake", "retiring", "sample", NULL};
    PyObject *owner, *drained = Py_None, *wake = Py_None;
    int retiring = 0;
    unsigned long long sample = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OOpK", kw, &owner, &drained, &wake,
                                     &retiring, &sample))
        return -1;
    self->sample = (uint64_t)sample;
    PyObject *table = PyList_New(0);
    if (table == NULL)
        return -1;
    Py_XSETREF(self->table, table);
    Py_XSETREF(self->owner, Py_NewRef(owner));
    Py_XSETREF(self->drained, Py_NewRef(drained));
    Py_XSETREF(self->wake, Py_NewRef(wake));
    self->retiring = retiring;
    return 0;
}

static int
gate_traverse(GateObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->table);
    Py_VISIT(self->owner);
    Py_VISIT(self->drained);
    Py_VISIT(self->wake);
    return 0;
}

static int
gate_clear(GateObject *self)
{
    Py_CLEAR(self->table);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->drained);
    Py_CLEAR(self->wake);
    return 0;
}

static void
gate_dealloc(GateObject *self)
{
    PyObject_GC_UnTrack(self);
    gate_clear(self);
    PyMem_Free(self->stats);
    self->stats = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
gate_append(GateObject *self, PyObject *unused)
{
    self->inflight++;
    Py_RETURN_NONE;
}

static PyObject *
gate_pop(GateObject *self, PyObject *unused)
{
    if (self->inflight <= 0) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty gate");
        return NULL;
    }
    self->inflight--;
    Py_RETURN_NONE;
}

static PyObject *
gate_exited_py(GateObject *self, PyObject *unused)
{
    if (gate_exited(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static Py_ssize_t
gate_len(GateObject *self)
{
    return self->inflight;
}

static PyObject *
gate_get_retiring(GateObject *self, void *c)
{
    return PyBool_FromLong(self->retiring);
}

static int
gate_set_retiring(GateObject *self, PyObject *value, void *c)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "retiring cannot be deleted");
        return -1;
    }
    int t = PyObject_IsTrue(value);
    if (t < 0)
        return -1;
    self->retiring = t;
    return 0;
}

static PyObject *
gate_get_table(GateObject *self, void *c)
{
    return Py_NewRef(self->table);
}

static int
gate_set_table(GateObject *self, PyObject *value, void *c)
{
    if (value == NULL || !PyList_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "a gate's table is a list");
        return -1;
    }
    Py_SETREF(self->table, Py_NewRef(value));
    return 0;
}

/* release(): drop the references that make a gate and its version a cycle
 * (the owner, and the table whose entries hold the gate), once the version
 * left the history: then reference counting frees both at once, where the
 * cycle waited for a full collection (isolated reloads in a row left ~1 MiB
 * of RSS per 1,000 behind, allocated for the garbage).  Its figures stay. */
static PyObject *
gate_release(GateObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *empty = PyList_New(0);
    if (empty == NULL)
        return NULL;
    Py_SETREF(self->table, empty);
    Py_XSETREF(self->owner, Py_NewRef(Py_None));
    Py_RETURN_NONE;
}

/* grow(n): room for the stats of n export slots (kept: a slot's counts
 * never go away while the gate lives).  Called before the table that
 * needs them is set, with the GIL held: a call in flight re-reads its
 * slot's address after the call, never across it. */
static PyObject *
gate_grow(GateObject *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n <= self->nstats || self->sample == 0)
        Py_RETURN_NONE;
    ExportStats *st = PyMem_Realloc(self->stats, (size_t)n * sizeof(ExportStats));
    if (st == NULL)
        return PyErr_NoMemory();
    memset(st + self->nstats, 0, (size_t)(n - self->nstats) * sizeof(ExportStats));
    self->stats = st;
    self->nstats = n;
    Py_RETURN_NONE;
}

static ExportStats *
gate_slot(GateObject *self, PyObject *arg)
{
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i < 0 || i >= self->nstats)
        return NULL;
    return &self->stats[i];
}

/* enter(idx) -> t0: count a call of slot idx in (the Python slow path's);
 * t0 is its start time in ns if it is sampled, else 0. */
static PyObject *
gate_enter(GateObject *self, PyObject *arg)
{
    ExportStats *s = gate_slot(self, arg);
    if (s == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return PyLong_FromLong(0);
    }
    s->calls++;
    s->inflight++;
    if (s->countdown == 0) {
        s->countdown = sample_gap(self->sample);
        return PyLong_FromUnsignedLongLong(now_ns());
    }
    s->countdown--;
    return PyLong_FromLong(0);
}

/* leave(idx, t0, exc): count it out; exc: the exception it raised, or None. */
static PyObject *
gate_leave(GateObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "leave(idx, t0, exc)");
        return NULL;
    }
    unsigned long long t0 = PyLong_AsUnsignedLongLong(args[1]);
    if (t0 == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    ExportStats *s = gate_slot(self, args[0]);
    if (s == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    s->inflight--;
    if (t0)
        stats_record(s, now_ns() - t0);
    if (args[2] != Py_None)
        s->errors[classify(args[2])]++;
    Py_RETURN_NONE;
}

/* snapshot() -> [(calls, inflight, (errors by kind), sampled, sum_ns, hist) per slot],
 * hist the non-empty buckets as ((bucket, count), ...): a reader walks a few
 * pairs, not HB_N counts.  Read with the GIL held: every figure of a slot is
 * from the same instant. */
static PyObject *
hist_pairs(const ExportStats *s)
{
    Py_ssize_t n = 0;
    for (int i = 0; i < HB_N; i++)
        n += s->hist[i] != 0;
    PyObject *t = PyTuple_New(n);
    if (t == NULL)
        return NULL;
    Py_ssize_t k = 0;
    for (int i = 0; i < HB_N && k < n; i++) {
        if (s->hist[i] == 0)
            continue;
        PyObject *pair = Py_BuildValue("(iK)", i, (unsigned long long)s->hist[i]);
        if (pair == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, k++, pair);
    }
    return t;
}

static PyObject *
gate_snapshot(GateObject *self, PyObject *unused)
{
    PyObject *out = PyList_New(self->nstats);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->nstats; i++) {
        ExportStats *s = &self->stats[i];
        PyObject *hist = hist_pairs(s);
        PyObject *item = hist == NULL ? NULL
                                      : Py_BuildValue(
                                            "(KL(KKKKK)KKN)", (unsigned long long)s->calls,
                                            (long long)s->inflight, (unsigned long long)s->errors[0],
                                            (unsigned long long)s->errors[1],
                                            (unsigned long long)s->errors[2],
                                            (unsigned long long)s->errors[3],
                                            (unsigned long long)s->errors[4],
                                            (unsigned long long)s->sampled,
                                            (unsigned long long)s->sum_ns, hist);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

static PyMethodDef gate_methods[] = {
    {"grow", (PyCFunction)gate_grow, METH_O, "Room for the stats of n export slots."},
    {"enter", (PyCFunction)gate_enter, METH_O, "Count a call of a slot in; its t0 or 0."},
    {"leave", (PyCFunction)(void (*)(void))gate_leave, METH_FASTCALL,
     "leave(idx, t0, exc): count a call out, with its latency and error."},
    {"snapshot", (PyCFunction)gate_snapshot, METH_NOARGS, "Every slot's figures."},
    {"release", (PyCFunction)gate_release, METH_NOARGS,
     "Drop the owner and the table (the version left the history); the figures stay."},
    {"append", (PyCFunction)gate_append, METH_O, "Count a call in (the argument is ignored)."},
    {"pop", (PyCFunction)gate_pop, METH_NOARGS, "Count a call out."},
    {"exited", (PyCFunction)gate_exited_py, METH_NOARGS,
     "If no call is inside, set the drained and wake events."},
    {NULL},
};

static PyMemberDef gate_members[] = {
    {"served", T_PYSSIZET, offsetof(GateObject, served), 0, "routed calls that entered"},
    {"owner", T_OBJECT_EX, offsetof(GateObject, owner), READONLY, "the version"},
    {"drained", T_OBJECT_EX, offsetof(GateObject, drained), READONLY, NULL},
    {"wake", T_OBJECT_EX, offsetof(GateObject, wake), READONLY, NULL},
    {NULL},
};

static PyObject *
gate_get_sample(GateObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->sample);
}

/* A canary times every call of its candidate while it is judged, then the
 * host's rate again: a gate counting nothing (0) stays so, and one counting
 * cannot be set to 0 (its routers would time every 2**64th call). */
static int
gate_set_sample(GateObject *self, PyObject *value, void *c)
{
    unsigned long long n = value ? PyLong_AsUnsignedLongLong(value) : 0;
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (self->sample == 0 || n == 0) {
        PyErr_SetString(PyExc_ValueError, "sample: a counting gate's rate is >= 1, and a gate "
                                          "counting nothing stays so");
        return -1;
    }
    self->sample = n;
    for (Py_ssize_t i = 0; i < self->nstats; i++)
        if (self->stats[i].countdown > 2 * (n - 1))
            self->stats[i].countdown = sample_gap(n);
    return 0;
}

static PyGetSetDef gate_getset[] = {
    {"sample", (getter)gate_get_sample, (setter)gate_set_sample,
     "latency of every Nth call; 0: metrics off", NULL},
    {"retiring", (getter)gate_get_retiring, (setter)gate_set_retiring, NULL, NULL},
    {"table", (getter)gate_get_table, (setter)gate_set_table, NULL, NULL},
    {NULL},
};

static PySequenceMethods gate_as_sequence = {
    .sq_length = (lenfunc)gate_len,
};

static PyTypeObject GateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hotload._engine._crouter.Gate",
    .tp_basicsize = sizeof(GateObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One version's in-flight count and routing flags.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)gate_init,
    .tp_traverse = (traverseproc)gate_traverse,
    .tp_clear = (inquiry)gate_clear,
    .tp_dealloc = (destructor)gate_dealloc,
    .tp_methods = gate_methods,
    .tp_members = gate_members,
    .tp_getset = gate_getset,
    .tp_as_sequence = &gate_as_sequence,
};

/* ----------------------------------------------------------------- Route */

/* A canary (Host.canary) splits a route: a call whose key hashes below the
 * threshold goes to the canary's gate, every other call to the route's gate.
 * The key is one argument (by index) or keyfn(*args).  The hash is stable for
 * ints (every host of a fleet puts player 42 on the same side), str and bytes
 * (FNV-1a of the bytes, not Python's salted hash), and else Python's hash():
 * stable within a process.  A key that cannot be hashed (or a keyfn that
 * raises) sends the call to the baseline and is counted in key_errors; an
 * export with fewer arguments than the key's index has no key, and its calls
 * are split by a counter.  split_key_hash() in split.py is the same function
 * in Python (the Python router's). */

static inline uint64_t
mix64(uint64_t z) /* splitmix64's finaliser: every input bit moves every output bit */
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t
fnv1a(const unsigned char *p, Py_ssize_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int /* 0, or -1 with an exception set */
key_hash(PyObject *k, uint64_t *out)
{
    if (PyLong_Check(k)) {
        uint64_t v = PyLong_AsUnsignedLongLongMask(k); /* k mod 2^64, for any int */
        if (v == (uint64_t)-1 && PyErr_Occurred())
            return -1;
        *out = mix64(v);
    } else if (PyUnicode_Check(k)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(k, &n);
        if (s == NULL)
            return -1;
        *out = mix64(fnv1a((const unsigned char *)s, n));
    } else if (PyBytes_Check(k)) {
        *out = mix64(fnv1a((const unsigned char *)PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k)));
    } else if (PyByteArray_Check(k)) {
        *out = mix64(fnv1a((const unsigned char *)PyByteArray_AS_STRING(k),
                           PyByteArray_GET_SIZE(k)));
    } else {
        Py_hash_t h = PyObject_Hash(k);
        if (h == -1 && PyErr_Occurred())
            return -1;
        *out = mix64((uint64_t)h);
    }
    return 0;
}

/* -------------------------------------------------------------- Recorder
 *
 * host.record(name): a ring of a plugin's last `cap` calls, for replay.  Each
 * slot keeps the export's index, the arguments (a tuple of the caller's own
 * objects: no copy), whether the call returned, what it returned or raised,
 * and the host-service calls it made (a list, or NULL).  A route with a
 * recorder sends every call through recorder_through (one pointer test per
 * call when none is set).  The service calls are collected in a per-thread
 * list that the service layer appends to (note()) while a recorded call runs
 * on that thread; a recorded call made from inside another saves and
 * restores the outer call's list. */

static _Thread_local PyObject *tl_notes = NULL; /* the current recorded call's service calls */
static _Thread_local int tl_depth = 0;          /* recorded calls running on this thread */

typedef struct {
    PyObject_HEAD
    Py_ssize_t cap;
    Py_ssize_t next; /* the slot the next call goes to */
    unsigned long long total;
    Py_ssize_t *idx;
    PyObject **args;
    PyObject **outs;
    PyObject **notes;
    char *ok;
} RecorderObject;

static PyTypeObject RecorderType;

static PyObject *
recorder_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"capacity", NULL};
    Py_ssize_t cap;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kw, &cap))
        return NULL;
    if (cap < 1 || cap > ((Py_ssize_t)1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "Recorder(capacity): 1 to 2**24 calls");
        return NULL;
    }
    RecorderObject *self = (RecorderObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->cap = cap;
    self->idx = PyMem_Calloc((size_t)cap, sizeof(Py_ssize_t));
    self->args = PyMem_Calloc((size_t)cap, sizeof(PyObject *));
    self->outs = PyMem_Calloc((size_t)cap, sizeof(PyObject *));
    self->notes = PyMem_Calloc((size_t)cap, sizeof(PyObject *));
    self->ok = PyMem_Calloc((size_t)cap, 1);
    if (!self->idx || !self->args || !self->outs || !self->notes || !self->ok) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

/* Keeps one call in the ring; never raises (a call is recorded whole or not
 * at all, and the caller's result or exception is left as it was). */
static void
recorder_add(RecorderObject *rec, Py_ssize_t idx, PyObject *const *args, Py_ssize_t n,
             PyObject *res, PyObject *notes /* stolen */)
{
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    if (res == NULL) {
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL && value != NULL)
            PyException_SetTraceback(value, tb);
    }
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL) {
        PyErr_Clear();
        Py_XDECREF(notes);
    } else {
        for (Py_ssize_t i = 0; i < n; i++)
            PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
        Py_ssize_t k = rec->next;
        PyObject *old_args = rec->args[k], *old_out = rec->outs[k], *old_notes = rec->notes[k];
        rec->idx[k] = idx;
        rec->args[k] = tuple;
        rec->outs[k] = Py_NewRef(res != NULL ? res : (value != NULL ? value : Py_None));
        rec->notes[k] = notes;
        rec->ok[k] = res != NULL;
        rec->next = k + 1 == rec->cap ? 0 : k + 1;
        rec->total++;
        Py_XDECREF(old_args); /* after the stores: a finaliser sees the ring whole */
        Py_XDECREF(old_out);
        Py_XDECREF(old_notes);
    }
    if (res == NULL)
        PyErr_Restore(type, value, tb);
}

static PyObject *
recorder_calls(RecorderObject *self, PyObject *unused)
{
    Py_ssize_t have = self->total < (unsigned long long)self->cap ? (Py_ssize_t)self->total : self->cap;
    Py_ssize_t first = have < self->cap ? 0 : self->next;
    PyObject *out = PyList_New(have);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < have; i++) {
        Py_ssize_t k = (first + i) % self->cap;
        PyObject *idx = PyLong_FromSsize_t(self->idx[k]);
        PyObject *notes = self->notes[k] ? PyList_GetSlice(self->notes[k], 0, PY_SSIZE_T_MAX)
                                         : PyList_New(0);
        PyObject *t = idx && notes ? PyTuple_Pack(5, idx, self->args[k],
                                                  self->ok[k] ? Py_True : Py_False,
                                                  self->outs[k], notes)
                                   : NULL;
        Py_XDECREF(idx);
        Py_XDECREF(notes);
        if (t == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static int
recorder_traverse(RecorderObject *self, visitproc visit, void *arg)
{
    for (Py_ssize_t k = 0; self->args && self->outs && self->notes && k < self->cap; k++) {
        Py_VISIT(self->args[k]);
        Py_VISIT(self->outs[k]);
        Py_VISIT(self->notes[k]);
    }
    return 0;
}

static int
recorder_clear(RecorderObject *self)
{
    for (Py_ssize_t k = 0; self->args && self->outs && self->notes && k < self->cap; k++) {
        Py_CLEAR(self->args[k]);
        Py_CLEAR(self->outs[k]);
        Py_CLEAR(self->notes[k]);
    }
    self->total = 0;
    self->next = 0;
    return 0;
}

static void
recorder_dealloc(RecorderObject *self)
{
    PyObject_GC_UnTrack(self);
    recorder_clear(self);
    PyMem_Free(self->idx);
    PyMem_Free(self->args);
    PyMem_Free(self->outs);
    PyMem_Free(self->notes);
    PyMem_Free(self->ok);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
recorder_get_total(RecorderObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->total);
}

static PyObject *
recorder_get_capacity(RecorderObject *self, void *c)
{
    return PyLong_FromSsize_t(self->cap);
}

static PyMethodDef recorder_methods[] = {
    {"calls", (PyCFunction)recorder_calls, METH_NOARGS,
     "calls() -> [(idx, args, ok, result_or_exception, service_calls)], oldest first."},
    {NULL},
};

static PyGetSetDef recorder_getset[] = {
    {"total", (getter)recorder_get_total, NULL, "calls recorded since the start", NULL},
    {"capacity", (getter)recorder_get_capacity, NULL, "calls the ring keeps", NULL},
    {NULL},
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hotload._engine._crouter.Recorder",
    .tp_basicsize = sizeof(RecorderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Recorder(capacity): a ring of a plugin's recent calls.",
    .tp_new = recorder_new,
    .tp_traverse = (traverseproc)recorder_traverse,
    .tp_clear = (inquiry)recorder_clear,
    .tp_dealloc = (destructor)recorder_dealloc,
    .tp_methods = recorder_methods,
    .tp_getset = recorder_getset,
};

/* note(entry): keep a host-service call in the current recorded call's list
 * (nothing when no recorded call runs on this thread). */
static PyObject *
note_py(PyObject *mod, PyObject *entry)
{
    if (tl_depth > 0) {
        if (tl_notes == NULL && (tl_notes = PyList_New(0)) == NULL)
            return NULL;
        if (PyList_Append(tl_notes, entry) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
recording_py(PyObject *mod, PyObject *unused)
{
    return PyBool_FromLong(tl_depth > 0);
}

typedef struct {
    PyObject_HEAD
    GateObject *gate;     /* never NULL after __init__ */
    GateObject *canary;   /* NULL: no canary */
    uint64_t threshold;   /* the canary takes a key whose hash's top 32 bits are below it */
    Py_ssize_t key;       /* the argument that is the key (keyfn NULL) */
    PyObject *keyfn;      /* keyfn(*args) -> the key, or NULL */
    uint64_t unkeyed;     /* calls of exports without the key argument: split by count */
    uint64_t key_errors;  /* keys that could not be hashed: those calls went to the baseline */
    RecorderObject *recorder; /* NULL: calls are not recorded */
} RouteObject;

static PyTypeObject RouteType;

static int
route_init(RouteObject *self, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"gate", NULL};
    PyObject *gate;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", kw, &GateType, &gate))
        return -1;
    Py_XSETREF(self->gate, (GateObject *)Py_NewRef(gate));
    return 0;
}

/* The gate a split route sends this call to (borrowed; NULL with an exception
 * set only for a BaseException that is not an Exception, such as
 * KeyboardInterrupt, raised by keyfn).  The key is hashed first (it may run
 * Python code, during which the route may change); the route is read after
 * it, and the caller counts itself into the gate before any Python code runs
 * (R1 in the argument above). */
static GateObject *
route_pick(RouteObject *r, PyObject *const *args, Py_ssize_t n)
{
    uint64_t h = 0;
    int keyed = 1;
    if (r->keyfn != NULL) {
        PyObject *k = PyObject_Vectorcall(r->keyfn, args, n, NULL);
        if (k == NULL || key_hash(k, &h) < 0)
            keyed = 0;
        Py_XDECREF(k);
    } else if (r->key < n) {
        if (key_hash(args[r->key], &h) < 0)
            keyed = 0;
    } else
        h = mix64(r->unkeyed++);
    if (!keyed) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();
        r->key_errors++;
    }
    if (keyed && r->canary != NULL && (h >> 32) < r->threshold)
        return r->canary;
    return r->gate;
}

static PyObject *
route_get_gate(RouteObject *self, void *c)
{
    return Py_NewRef(self->gate);
}

static int
route_set_gate(RouteObject *self, PyObject *value, void *c)
{
    if (value == NULL || !PyObject_TypeCheck(value, &GateType)) {
        PyErr_SetString(PyExc_TypeError, "a route's gate is a Gate");
        return -1;
    }
    Py_SETREF(self->gate, (GateObject *)Py_NewRef(value));
    return 0;
}

static PyObject *
route_get_canary(RouteObject *self, void *c)
{
    return Py_NewRef(self->canary ? (PyObject *)self->canary : Py_None);
}

static PyObject *
route_get_threshold(RouteObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->threshold);
}

static PyObject *
route_get_key_errors(RouteObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->key_errors);
}

static PyObject *
route_get_recorder(RouteObject *self, void *c)
{
    return Py_NewRef(self->recorder ? (PyObject *)self->recorder : Py_None);
}

static int
route_set_recorder(RouteObject *self, PyObject *value, void *c)
{
    if (value != NULL && value != Py_None && !PyObject_TypeCheck(value, &RecorderType)) {
        PyErr_SetString(PyExc_TypeError, "a route's recorder is a Recorder or None");
        return -1;
    }
    RecorderObject *old = self->recorder;
    self->recorder = value == NULL || value == Py_None ? NULL : (RecorderObject *)Py_NewRef(value);
    Py_XDECREF(old);
    return 0;
}

static PyObject *
route_split(RouteObject *self, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"canary", "threshold", "key", "keyfn", NULL};
    PyObject *canary, *keyfn;
    unsigned long long threshold;
    Py_ssize_t key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!KnO", kw, &GateType, &canary, &threshold,
                                     &key, &keyfn))
        return NULL;
    if (threshold > ((uint64_t)1 << 32) || key < 0 || (keyfn != Py_None && !PyCallable_Check(keyfn))) {
        PyErr_SetString(PyExc_ValueError, "split(canary, threshold <= 2**32, key >= 0, keyfn)");
        return NULL;
    }
    /* no Python code runs between these stores (the old references are dropped
     * after them: a finaliser they run sees the route whole) */
    GateObject *old_canary = self->canary;
    PyObject *old_keyfn = self->keyfn;
    self->threshold = threshold;
    self->key = key;
    self->keyfn = keyfn == Py_None ? NULL : Py_NewRef(keyfn);
    self->canary = (GateObject *)Py_NewRef(canary);
    Py_XDECREF(old_canary);
    Py_XDECREF(old_keyfn);
    Py_RETURN_NONE;
}

static PyObject *
route_unsplit(RouteObject *self, PyObject *args)
{
    GateObject *canary = self->canary;
    PyObject *keyfn = self->keyfn;
    self->canary = NULL;
    self->keyfn = NULL;
    self->threshold = 0;
    Py_XDECREF(canary); /* after the stores: a finaliser it runs sees the route unsplit */
    Py_XDECREF(keyfn);
    Py_RETURN_NONE;
}

static PyObject *
route_promote(RouteObject *self, PyObject *args)
{
    if (self->canary == NULL) {
        PyErr_SetString(PyExc_ValueError, "promote(): the route has no canary");
        return NULL;
    }
    GateObject *old = self->gate;
    PyObject *keyfn = self->keyfn;
    self->gate = self->canary; /* the canary's reference moves to gate */
    self->canary = NULL;
    self->keyfn = NULL;
    self->threshold = 0;
    Py_DECREF(old);
    Py_XDECREF(keyfn);
    Py_RETURN_NONE;
}

static PyObject *
route_pick_py(RouteObject *self, PyObject *const *args, Py_ssize_t n)
{
    GateObject *g = route_pick(self, args, n);
    return g ? Py_NewRef((PyObject *)g) : NULL;
}

static int
route_traverse(RouteObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->gate);
    Py_VISIT(self->canary);
    Py_VISIT(self->keyfn);
    Py_VISIT(self->recorder);
    return 0;
}

static int
route_clear(RouteObject *self)
{
    Py_CLEAR(self->gate);
    Py_CLEAR(self->canary);
    Py_CLEAR(self->keyfn);
    Py_CLEAR(self->recorder);
    return 0;
}

static void
route_dealloc(RouteObject *self)
{
    PyObject_GC_UnTrack(self);
    route_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef route_methods[] = {
    {"split", (PyCFunction)(void (*)(void))route_split, METH_VARARGS | METH_KEYWORDS,
     "split(canary, threshold, key, keyfn): send the calls whose key hashes below threshold "
     "(of 2**32) to the canary's gate."},
    {"unsplit", (PyCFunction)route_unsplit, METH_NOARGS, "End the split: every call to gate."},
    {"promote", (PyCFunction)route_promote, METH_NOARGS,
     "The canary's gate becomes the gate, in one step; the split ends."},
    {"pick", (PyCFunction)(void (*)(void))route_pick_py, METH_FASTCALL,
     "pick(*args) -> the gate this call goes to."},
    {NULL},
};

static PyGetSetDef route_getset[] = {
    {"gate", (getter)route_get_gate, (setter)route_set_gate, "where new calls go", NULL},
    {"canary", (getter)route_get_canary, NULL, "the canary's gate, or None", NULL},
    {"threshold", (getter)route_get_threshold, NULL, "the canary's share, of 2**32", NULL},
    {"key_errors", (getter)route_get_key_errors, NULL, "keys that could not be hashed", NULL},
    {"recorder", (getter)route_get_recorder, (setter)route_set_recorder,
     "the Recorder of the plugin's calls, or None", NULL},
    {NULL},
};

static PyTypeObject RouteType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hotload._engine._crouter.Route",
    .tp_basicsize = sizeof(RouteObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Where a plugin's calls go now.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)route_init,
    .tp_traverse = (traverseproc)route_traverse,
    .tp_clear = (inquiry)route_clear,
    .tp_dealloc = (destructor)route_dealloc,
    .tp_methods = route_methods,
    .tp_getset = route_getset,
};

static PyObject *
key_hash_py(PyObject *mod, PyObject *k)
{
    uint64_t h;
    if (key_hash(k, &h) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(h);
}

/* ---------------------------------------------------------------- Router */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    RouteObject *route;
    PyObject *fname;
    Py_ssize_t idx;
    Py_ssize_t arity;
    PyObject *slow;     /* slow(fname, args_tuple) */
    PyObject *bad_call; /* bad_call(version, fname, exc, args) -> result, or raises */
    PyObject *name;
    PyObject *qualname;
} RouterObject;

static PyTypeObject RouterType;

static PyObject *
router_slow(RouterObject *self, PyObject *const *args, Py_ssize_t n)
{
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    PyObject *res = PyObject_CallFunctionObjArgs(self->slow, self->fname, tuple, NULL);
    Py_DECREF(tuple);
    return res;
}

/* An argument error from the call (cffi refused an argument: TypeError,
 * OverflowError, ValueError, KeyError or IndexError) goes to bad_call, with
 * the gate still counting the call: it converts the arguments by the one
 * rule (_artifact/arguments.py) and calls again, returning the result, or
 * raises the SignatureError (from None: the Python router's "raise ... from
 * None"). */
static int
is_argument_error(void)
{
    return PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_OverflowError) ||
           PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_LookupError);
}

static PyObject *
router_bad_call(RouterObject *self, GateObject *g, PyObject *const *args, Py_ssize_t n)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *res = NULL;
    PyObject *tuple = PyTuple_New(n);
    if (tuple != NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
        res = PyObject_CallFunctionObjArgs(self->bad_call, g->owner, self->fname,
                                           value ? value : Py_None, tuple, NULL);
        Py_DECREF(tuple);
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return res;
}

static PyObject *
router_call(RouterObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n != self->arity || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)
            PyErr_Format(PyExc_TypeError, "%U() takes no keyword arguments", self->qualname);
        else
            PyErr_Format(PyExc_TypeError, "%U() takes %zd positional argument%s but %zd %s given",
                         self->qualname, self->arity, self->arity == 1 ? "" : "s", n,
                         n == 1 ? "was" : "were");
        return NULL;
    }
    RouteObject *r = self->route;
    GateObject *g = r->canary == NULL ? r->gate : route_pick(r, args, n); /* a canary's split */
    if (g == NULL)
        return NULL;
    Py_INCREF(g);
    g->inflight++;                                           /* R1 */
    PyObject *table = g->table;
    if (g->retiring || self->idx >= PyList_GET_SIZE(table)) { /* R2 */
        g->inflight--;
        if (g->retiring && gate_exited(g) < 0) {
            Py_DECREF(g);
            return NULL;
        }
        Py_DECREF(g);
        return router_slow(self, args, n);
    }
    g->served++;
    PyObject *fn = Py_NewRef(PyList_GET_ITEM(table, self->idx));
    uint64_t t0 = 0;
    Py_ssize_t idx = self->idx;
    int counted = idx < g->nstats; /* metrics on (grow() ran before the table was set) */
    if (counted) {
        ExportStats *s = &g->stats[idx];
        s->calls++;
        s->inflight++;
        if (s->countdown == 0) {
            s->countdown = sample_gap(g->sample);
            t0 = now_ns();
        } else
            s->countdown--;
    }
    PyObject *res = PyObject_Vectorcall(fn, args, n, NULL); /* R3 */
    Py_DECREF(fn);
    if (res == NULL && is_argument_error())
        res = router_bad_call(self, g, args, n); /* still counted in: R4 follows */
    if (counted) {
        ExportStats *s = &g->stats[idx]; /* again: grow() may have moved them meanwhile */
        s->inflight--;
        if (t0)
            stats_record(s, now_ns() - t0);
        if (res == NULL)
            s->errors[classify(PyErr_Occurred())]++;
    }
    g->inflight--; /* R4 */
    if (g->retiring && g->inflight == 0)
        gate_exited_keep_error(g);
    Py_DECREF(g);
    return res;
}

/* A recorded call: the route's recorder keeps it, with the service calls it
 * made on this thread (tl_notes, filled by note()). */
static PyObject *
router_recorded(RouterObject *self, RecorderObject *rec, PyObject *const *args, size_t nargsf,
                PyObject *kwnames)
{
    Py_INCREF(rec);
    PyObject *outer = tl_notes;
    tl_notes = NULL;
    tl_depth++;
    PyObject *res = router_call(self, args, nargsf, kwnames);
    PyObject *notes = tl_notes;
    tl_notes = outer;
    tl_depth--;
    recorder_add(rec, self->idx, args, PyVectorcall_NARGS(nargsf), res, notes);
    Py_DECREF(rec);
    return res;
}

static PyObject *
router_vectorcall(RouterObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RecorderObject *rec = self->route->recorder;
    if (rec == NULL)
        return router_call(self, args, nargsf, kwnames);
    return router_recorded(self, rec, args, nargsf, kwnames);
}

static PyObject *
router_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"route", "fname", "idx", "arity", "slow", "bad_call", "qualname", NULL};
    PyObject *route, *fname, *slow, *bad_call, *qualname;
    Py_ssize_t idx, arity;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!UnnOOU", kw, &RouteType, &route, &fname, &idx,
                                     &arity, &slow, &bad_call, &qualname))
        return NULL;
    if (idx < 0 || arity < 0) {
        PyErr_SetString(PyExc_ValueError, "idx and arity are >= 0");
        return NULL;
    }
    RouterObject *self = (RouterObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)router_vectorcall;
    self->route = (RouteObject *)Py_NewRef(route);
    self->fname = Py_NewRef(fname);
    self->idx = idx;
    self->arity = arity;
    self->slow = Py_NewRef(slow);
    self->bad_call = Py_NewRef(bad_call);
    self->name = Py_NewRef(fname);
    self->qualname = Py_NewRef(qualname);
    return (PyObject *)self;
}

static int
router_traverse(RouterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->route);
    Py_VISIT(self->fname);
    Py_VISIT(self->slow);
    Py_VISIT(self->bad_call);
    Py_VISIT(self->name);
    Py_VISIT(self->qualname);
    return 0;
}

static int
router_clear(RouterObject *self)
{
    Py_CLEAR(self->route);
    Py_CLEAR(self->fname);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->bad_call);
    Py_CLEAR(self->name);
    Py_CLEAR(self->qualname);
    return 0;
}

static void
router_dealloc(RouterObject *self)
{
    PyObject_GC_UnTrack(self);
    router_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
router_repr(RouterObject *self)
{
    return PyUnicode_FromFormat("<hotload router %U>", self->qualname);
}

static PyMemberDef router_members[] = {
    {"__name__", T_OBJECT_EX, offsetof(RouterObject, name), 0, NULL},
    {"__qualname__", T_OBJECT_EX, offsetof(RouterObject, qualname), 0, NULL},
    {"arity", T_PYSSIZET, offsetof(RouterObject, arity), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(RouterObject, vectorcall), READONLY, NULL},
    {NULL},
};

static PyTypeObject RouterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hotload._engine._crouter.Router",
    .tp_basicsize = sizeof(RouterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A routed export: calls the current version's function.",
    .tp_new = router_new,
    .tp_vectorcall_offset = offsetof(RouterObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)router_traverse,
    .tp_clear = (inquiry)router_clear,
    .tp_dealloc = (destructor)router_dealloc,
    .tp_repr = (reprfunc)router_repr,
    .tp_members = router_members,
};

/* --------------------------------------------------------------- Checked */

/* Checked(fn, checks): calls fn(*args) after looking at the arguments cffi
 * would take without complaint but the one rule refuses or treats otherwise
 * (_artifact/arguments.py), one byte of `checks` per parameter:
 *   'f'  a float: a finite number beyond FLT_MAX -> OverflowError (C would
 *        make it infinity)
 *   's'  a const char *: bytes holding a NUL -> ValueError (C would see its start)
 *   'o'  a buffer the callee writes: a list -> TypeError, so the router's
 *        bad-call path passes a copy and copies the writes back into the list;
 *        bytes -> TypeError, so it passes a copy (cffi would pass the bytes
 *        object's own memory for a char-sized T, and C would write into it)
 *   '-'  nothing
 * Only exports with such a parameter get one in their version's call table;
 * the others are called as the cffi function itself. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fn;
    PyObject *checks; /* bytes */
} CheckedObject;

static PyTypeObject CheckedType;

static int
check_float(PyObject *a, Py_ssize_t i)
{
    double d;
    if (PyFloat_Check(a))
        d = PyFloat_AS_DOUBLE(a);
    else if (PyLong_Check(a)) {
        d = PyLong_AsDouble(a);
        if (d == -1.0 && PyErr_Occurred())
            return -1; /* OverflowError, as cffi's */
    } else {
        d = PyFloat_AsDouble(a);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear(); /* not a number: cffi refuses it */
            return 0;
        }
    }
    if (isfinite(d) && isinf((float)d)) {
        PyErr_Format(PyExc_OverflowError,
                     "argument %zd: %R is beyond the range of a float (FLT_MAX 3.4028234663852886e+38)",
                     i + 1, a);
        return -1;
    }
    return 0;
}

static PyObject *
checked_vectorcall(CheckedObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    const char *k = PyBytes_AS_STRING(self->checks);
    Py_ssize_t m = PyBytes_GET_SIZE(self->checks);
    for (Py_ssize_t i = 0; i < n && i < m; i++) {
        PyObject *a = args[i];
        switch (k[i]) {
        case 'f':
            if (check_float(a, i) < 0)
                return NULL;
            break;
        case 's':
            if (PyBytes_Check(a) &&
                memchr(PyBytes_AS_STRING(a), 0, (size_t)PyBytes_GET_SIZE(a)) != NULL) {
                PyErr_Format(PyExc_ValueError,
                             "argument %zd: a C string cannot hold a NUL byte", i + 1);
                return NULL;
            }
            break;
        case 'o':
            if (PyList_Check(a) || PyBytes_Check(a)) {
                PyErr_Format(PyExc_TypeError,
                             "argument %zd: a %s for a buffer the callee writes", i + 1,
                             PyList_Check(a) ? "list" : "bytes");
                return NULL;
            }
            break;
        case 'v': /* an initializer for a struct by value: the router's bad_call zeroes it */
            if (PyDict_Check(a) || PyList_Check(a) || PyTuple_Check(a)) {
                PyErr_Format(PyExc_TypeError,
                             "argument %zd: an initializer for a struct by value", i + 1);
                return NULL;
            }
            break;
        default:
            break;
        }
    }
    return PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
}

static PyObject *
checked_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"fn", "checks", NULL};
    PyObject *fn, *checks;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OS", kw, &fn, &checks))
        return NULL;
    CheckedObject *self = (CheckedObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)checked_vectorcall;
    self->fn = Py_NewRef(fn);
    self->checks = Py_NewRef(checks);
    return (PyObject *)self;
}

static int
checked_traverse(CheckedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fn);
    Py_VISIT(self->checks);
    return 0;
}

static int
checked_clear(CheckedObject *self)
{
    Py_CLEAR(self->fn);
    Py_CLEAR(self->checks);
    return 0;
}

static void
checked_dealloc(CheckedObject *self)
{
    PyObject_GC_UnTrack(self);
    checked_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef checked_members[] = {
    {"fn", T_OBJECT_EX, offsetof(CheckedObject, fn), READONLY, NULL},
    {"checks", T_OBJECT_EX, offsetof(CheckedObject, checks), READONLY, NULL},
    {NULL},
};

static PyTypeObject CheckedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hotload._engine._crouter.Checked",
    .tp_basicsize = sizeof(CheckedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "An export whose arguments are checked by the one rule before cffi's call.",
    .tp_new = checked_new,
    .tp_vectorcall_offset = offsetof(CheckedObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)checked_traverse,
    .tp_clear = (inquiry)checked_clear,
    .tp_dealloc = (destructor)checked_dealloc,
    .tp_members = checked_members,
};

/* ------------------------------------------------------- module functions */

/* call_each(callables, args[, skip]): [f(*args) for f in callables], in one C
 * loop, stopping at the first exception, except one matching `skip` (an
 * exception class or a tuple of them): that call is left out of the results
 * and the loop goes on.  For a host that calls the same event handler export
 * of many plugins (host.emit: a plugin unloaded during the emit is skipped). */
static PyObject *
call_each(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "call_each(callables, args: tuple[, skip])");
        return NULL;
    }
    PyObject *skip = nargs == 3 && args[2] != Py_None ? args[2] : NULL;
    if (skip != NULL && !PyExceptionClass_Check(skip) && !PyTuple_Check(skip)) {
        PyErr_SetString(PyExc_TypeError,
                        "call_each: skip must be an exception class or a tuple of them");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[0], "call_each: callables must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    PyObject *const *cargs = &PyTuple_GET_ITEM(args[1], 0);
    Py_ssize_t ncargs = PyTuple_GET_SIZE(args[1]);
    Py_ssize_t k = 0; /* results so far */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
        PyObject *r = PyObject_Vectorcall(f, cargs, ncargs, NULL);
        Py_DECREF(f);
        if (r == NULL) {
            if (skip != NULL && PyErr_ExceptionMatches(skip)) {
                PyErr_Clear();
                continue;
            }
            Py_DECREF(out);
            Py_DECREF(seq);
            return NULL;
        }
        PyList_SET_ITEM(out, k++, r);
    }
    Py_DECREF(seq);
    if (k < n && PyList_SetSlice(out, k, n, NULL) < 0) { /* the unused tail is NULLs */
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* error_kinds(argument, timeout, stopped, crash): the exception classes (or
 * tuples of them) a failed call is counted by (lifecycle.py, once at import). */
static PyObject *
error_kinds(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "error_kinds(argument, timeout, stopped, crash)");
        return NULL;
    }
    for (int i = 0; i < 4; i++)
        if (!PyExceptionClass_Check(args[i]) && !PyTuple_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "error_kinds: exception classes (or tuples)");
            return NULL;
        }
    Py_XSETREF(kind_argument, Py_NewRef(args[0]));
    Py_XSETREF(kind_timeout, Py_NewRef(args[1]));
    Py_XSETREF(kind_stopped, Py_NewRef(args[2]));
    Py_XSETREF(kind_crash, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

/* hist_bucket(ns) -> the histogram bucket of a latency (for the tests). */
static PyObject *
hist_bucket_py(PyObject *mod, PyObject *arg)
{
    unsigned long long ns = PyLong_AsUnsignedLongLong(arg);
    if (ns == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(hist_bucket(ns));
}

/* The METH_FASTCALL floor for the benchmarks: a C function doing nothing. */
static PyObject *
noop(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    Py_RETURN_NONE;
}

#ifndef _WIN32
/* symbols(handle, names) -> [address or None for each name]: the POSIX
 * platform layer's dl.symbols in one C call (a reload resolves every export,
 * hook and import slot of a plugin at once, and a ctypes call per name costs
 * more than the lookup).  The names are encoded with the GIL held; the
 * lookups run without it, as a ctypes call does: dlsym takes the loader's
 * lock, which another thread's dlopen holds while a constructor waits for
 * the GIL to call a host service.  A name not found leaves a dlerror()
 * message behind on this thread: it is cleared once at the end. */
static PyObject *
symbols(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "symbols(handle: int, names: list[str])");
        return NULL;
    }
    void *handle = PyLong_AsVoidPtr(args[0]);
    if (handle == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "symbols: handle is NULL");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[1], "symbols: names must be a sequence of str");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = NULL;
    const char **cnames = PyMem_Calloc(n ? n : 1, sizeof(char *));
    void **addrs = PyMem_Calloc(n ? n : 1, sizeof(void *));
    if (cnames == NULL || addrs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t len;
        if (!PyUnicode_Check(name)) {
            PyErr_Format(PyExc_TypeError, "symbols: names must be str, not %.100s",
                         Py_TYPE(name)->tp_name);
            goto done;
        }
        /* UTF-8 kept alive by the str itself, which seq holds */
        cnames[i] = PyUnicode_AsUTF8AndSize(name, &len);
        if (cnames[i] == NULL)
            goto done;
        if ((size_t)len != strlen(cnames[i])) {
            PyErr_SetString(PyExc_ValueError, "symbols: a name contains a NUL character");
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        addrs[i] = dlsym(handle, cnames[i]);
    (void)dlerror();
    Py_END_ALLOW_THREADS
    out = PyList_New(n);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = addrs[i] ? PyLong_FromVoidPtr(addrs[i]) : Py_NewRef(Py_None);
        if (v == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, v);
    }
done:
    PyMem_Free(cnames);
    PyMem_Free(addrs);
    Py_DECREF(seq);
    return out;
}
#endif

/* ----------------------------------------------------------------- Meter */
/* Meter(fn, gate): a host service as a plugin calls it, counted.  The cffi
 * callback of an imported service calls this instead of the service itself:
 * it counts the call in slot 0 of ``gate`` (the stats of one service in one
 * image: a Gate used only for its figures) and times every ``gate.sample``-th
 * one.  The GIL is held (a cffi callback into Python takes it), so the plain
 * increments are exact.  ``gate`` is settable: a callback of an image that
 * left serves a later image's counts (services.ImportBinding). */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fn;
    GateObject *gate;
} MeterObject;

static PyTypeObject MeterType;

static PyObject *
meter_vectorcall(MeterObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    GateObject *g = self->gate;
    if (g->nstats < 1 || g->sample == 0)
        return PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    ExportStats *s = &g->stats[0];
    s->calls++;
    if (s->countdown) {
        s->countdown--;
        return PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    }
    s->countdown = sample_gap(g->sample);
    Py_INCREF(g); /* the service may rebind this meter meanwhile */
    uint64_t t0 = now_ns();
    PyObject *r = PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    stats_record(&g->stats[0], now_ns() - t0);
    Py_DECREF(g);
    return r;
}

static PyObject *
meter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"fn", "gate", NULL};
    PyObject *fn;
    GateObject *gate;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!", kw, &fn, &GateType, &gate))
        return NULL;
    MeterObject *self = (MeterObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)meter_vectorcall;
    self->fn = Py_NewRef(fn);
    self->gate = (GateObject *)Py_NewRef(gate);
    return (PyObject *)self;
}

static PyObject *
meter_get_gate(MeterObject *self, void *closure)
{
    return Py_NewRef((PyObject *)self->gate);
}

static int
meter_set_gate(MeterObject *self, PyObject *value, void *closure)
{
    if (value == NULL || !PyObject_TypeCheck(value, &GateType)) {
        PyErr_SetString(PyExc_TypeError, "gate must be a Gate");
        return -1;
    }
    Py_SETREF(self->gate, (GateObject *)Py_NewRef(value));
    return 0;
}

static int
meter_traverse(MeterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fn);
    Py_VISIT(self->gate);
    return 0;
}

static int
meter_clear(MeterObject *self)
{
    Py_CLEAR(self->fn);
    Py_CLEAR(self->gate);
    return 0;
}

static void
meter_dealloc(MeterObject *self)
{
    PyObject_GC_UnTrack(self);
    meter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef meter_members[] = {
    {"fn", T_OBJECT_EX, offsetof(MeterObject, fn), READONLY, NULL},
    {NULL},
};

static PyGetSetDef meter_getset[] = {
    {"gate", (getter)meter_get_gate, (setter)meter_set_gate, "where the calls are counted",
     NULL},
    {NULL},
};

static PyTypeObject MeterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hotload._engine._crouter.Meter",
    .tp_basicsize = sizeof(MeterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A host service, its calls counted and sampled in slot 0 of a Gate.",
    .tp_new = meter_new,
    .tp_vectorcall_offset = offsetof(MeterObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)meter_traverse,
    .tp_clear = (inquiry)meter_clear,
    .tp_dealloc = (destructor)meter_dealloc,
    .tp_members = meter_members,
    .tp_getset = meter_getset,
};

/* ----------------------------------------------------------------- Noted
 *
 * Noted(name, fn): a host service while some plugin is recorded: calls fn,
 * then, if a recorded call runs on this thread, keeps (name, args, ok,
 * answer) in its list (note()).  Never changes what the call returns or
 * raises. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *name;
    PyObject *fn;
} NotedObject;

static void
noted_keep(NotedObject *self, PyObject *const *args, Py_ssize_t n, PyObject *ok, PyObject *answer)
{
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL)
        return;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    PyObject *entry = PyTuple_Pack(4, self->name, tuple, ok, answer);
    Py_DECREF(tuple);
    if (entry == NULL)
        return;
    if (tl_notes == NULL)
        tl_notes = PyList_New(0);
    if (tl_notes != NULL)
        PyList_Append(tl_notes, entry);
    Py_DECREF(entry);
}

static PyObject *
noted_vectorcall(NotedObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *res = PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    if (tl_depth == 0)
        return res;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (res != NULL) {
        noted_keep(self, args, n, Py_True, res);
        PyErr_Clear(); /* a note that could not be kept costs the recording, not the call */
        return res;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    noted_keep(self, args, n, Py_False, value ? value : Py_None);
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
    return NULL;
}

static PyObject *
noted_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"name", "fn", NULL};
    PyObject *name, *fn;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UO", kw, &name, &fn))
        return NULL;
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "Noted(name, fn): fn is called");
        return NULL;
    }
    NotedObject *self = (NotedObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)noted_vectorcall;
    self->name = Py_NewRef(name);
    self->fn = Py_NewRef(fn);
    return (PyObject *)self;
}

static int
noted_traverse(NotedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->name);
    Py_VISIT(self->fn);
    return 0;
}

static int
noted_clear(NotedObject *self)
{
    Py_CLEAR(self->name);
    Py_CLEAR(self->fn);
    return 0;
}

static void
noted_dealloc(NotedObject *self)
{
    PyObject_GC_UnTrack(self);
    noted_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject NotedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hotload._engine._crouter.Noted",
    .tp_basicsize = sizeof(NotedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Noted(name, fn): a host service whose calls a recorded call keeps.",
    .tp_new = noted_new,
    .tp_vectorcall_offset = offsetof(NotedObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)noted_traverse,
    .tp_clear = (inquiry)noted_clear,
    .tp_dealloc = (destructor)noted_dealloc,
};

static PyMethodDef module_methods[] = {
    {"note", (PyCFunction)note_py, METH_O,
     "note(entry): keep a host-service call in the recorded call running on this thread."},
    {"recording", (PyCFunction)recording_py, METH_NOARGS,
     "recording() -> whether a recorded call runs on this thread."},
    {"call_each", (PyCFunction)(void (*)(void))call_each, METH_FASTCALL,
     "call_each(callables, args[, skip]) -> [f(*args) for f in callables], in C;\n"
     "a call raising an exception that matches skip is left out."},
    {"error_kinds", (PyCFunction)(void (*)(void))error_kinds, METH_FASTCALL,
     "error_kinds(argument, timeout, stopped, crash): how a failed call is counted."},
    {"key_hash", (PyCFunction)key_hash_py, METH_O,
     "key_hash(key) -> the 64-bit hash a canary's split uses for key."},
    {"hist_bucket", (PyCFunction)hist_bucket_py, METH_O,
     "hist_bucket(ns) -> the latency histogram's bucket for ns."},
    {"noop", (PyCFunction)(void (*)(void))noop, METH_FASTCALL,
     "Do nothing: the cost of calling a METH_FASTCALL builtin."},
#ifndef _WIN32
    {"symbols", (PyCFunction)(void (*)(void))symbols, METH_FASTCALL,
     "symbols(handle, names) -> [dlsym(handle, name) or None for each name]."},
#endif
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "hotload._engine._crouter",
    .m_doc = "The compiled router (see _crouter.c for the memory-ordering argument).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__crouter(void)
{
    gap_state ^= (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)&gap_state;
    if (PyType_Ready(&GateType) < 0 || PyType_Ready(&RouteType) < 0 ||
        PyType_Ready(&RouterType) < 0 || PyType_Ready(&CheckedType) < 0 ||
        PyType_Ready(&MeterType) < 0 || PyType_Ready(&RecorderType) < 0 ||
        PyType_Ready(&NotedType) < 0)
        return NULL;
    str_set = PyUnicode_InternFromString("set");
    if (str_set == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "HIST_BUCKETS", HB_N) < 0 ||
        PyModule_AddObjectRef(m, "Gate", (PyObject *)&GateType) < 0 ||
        PyModule_AddObjectRef(m, "Route", (PyObject *)&RouteType) < 0 ||
        PyModule_AddObjectRef(m, "Router", (PyObject *)&RouterType) < 0 ||
        PyModule_AddObjectRef(m, "Checked", (PyObject *)&CheckedType) < 0 ||
        PyModule_AddObjectRef(m, "Meter", (PyObject *)&MeterType) < 0 ||
        PyModule_AddObjectRef(m, "Recorder", (PyObject *)&RecorderType) < 0 ||
        PyModule_AddObjectRef(m, "Noted", (PyObject *)&NotedType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
