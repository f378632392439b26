/* hotload._process._spin: the shared-memory call channel's hot path in C
 * (issue 24 item 1, "spin, then sleep").
 *
 * One Channel object per end of an isolated worker's shared-memory area
 * (wire.py has the layout): the host's end packs a call of scalars
 * (a `simple` CallPlan, see callplan.py: `CallPlan.spin`) into the mapping,
 * publishes the sequence number and waits for the reply with the GIL
 * released; the worker's end serves such calls in a loop, also without the
 * GIL, by calling the export's resolved address directly.  Anything else
 * (a call with strings, buffers or structs, an error reply, a frame on the
 * socket, a timeout, an argument the Python path must judge) is handed back
 * to the Python code in spawn.py / serving.py, which has every answer for it.
 *
 * Waiting: spin, then sleep.  A waiting side first spins on the sequence
 * word with `pause` (no system call, so a reply from a peer on another core
 * is seen within a cache-line transfer) for an adaptive time, then spins
 * with sched_yield() (a peer on this very core gets to run) up to a fixed
 * window, then sleeps in poll() on its eventfd and the Unix socket (whose
 * EOF is the peer's death, and whose bytes during a call are garbage).  The
 * pure spin adapts to the peer: a reply that arrived during it keeps it at
 * least twice as long as that reply took (up to SPIN_MAX_NS); a reply that
 * needed a yield or a sleep shortens it by a quarter (down to SPIN_MIN_NS),
 * so on a core shared with the peer it soon yields almost at once.
 *
 * No lost wake-up.  A writer writes the peer's eventfd only when the peer
 * published that it sleeps.  The two sides run:
 *
 *     writer                               sleeper
 *     W1 store body, len; store seq        S1 store sleeping = 1
 *     W2 full fence                        S2 full fence
 *     W3 load sleeping; if 1: write efd    S3 drain efd; load seq; if new: serve
 *                                          S4 poll(efd, socket)
 *
 * a store-then-load on each side (Dekker's pattern), with a sequentially
 * consistent fence between (mfence, or a locked instruction, on x86): in
 * any execution at least one side sees the other's store.  Either W3 sees
 * sleeping == 1 and writes the eventfd, which stays readable until drained,
 * so S4 returns whether the write came before or during it; or S3 sees the
 * new seq and does not sleep.  A write that was not needed (the sleeper saw
 * the seq in S3) leaves the counter at 1: the next S3 drains it before it
 * loads the seq, so it costs one spurious turn, never a missed call.  The
 * Python ends (no compiler, HOTLOAD_PURE_PYTHON=1 on the host, or a host of
 * this protocol talking to an older worker) keep to the same protocol with
 * the kernel as their fence: a Python writer writes the eventfd after every
 * request or reply, whatever the word says (the superset: always woken), and
 * a Python sleeper stores its word, then drains its eventfd (a system call
 * that takes the eventfd's spinlock: a locked instruction, a full fence on
 * x86), then loads the sequence.
 *
 * Faults keep their answers because death and garbage are still the
 * socket's: a sleeping side polls the socket too, so a peer that dies
 * mid-spin or mid-call ends the wait with EOF (the Python code reads it and
 * reports the crash), and the host polls the socket once after every reply
 * (bytes there during a call are garbage: the plugin wrote to a descriptor
 * it does not own).  The sequence is written last, with release order, so a
 * side never reads a body, or a length, older than the sequence it saw: a
 * worker that dies half way through a reply (a torn write) never published
 * it, and a reply whose length or status is not the plan's goes to the
 * Python code, which decodes it or calls it garbage.
 *
 * Calling an export without cffi (the worker's end), on x86-64 SysV only.
 * An all-integer/pointer + floating-point signature can be called through
 * one fixed wide prototype, six uint64_t then eight doubles: the ABI assigns
 * integer arguments to rdi, rsi, rdx, rcx, r8, r9 in order and floating ones
 * to xmm0-xmm7 in order, independently of how the two kinds interleave, so
 * a function of at most 6 integer and 8 floating parameters finds each of
 * its arguments where it looks, and ignores the registers it does not read
 * (the caller cleans up, nothing goes on the stack).  Narrow integers are
 * passed sign- or zero-extended to 64 bits (what the ABI asks of a caller,
 * and more than it needs); a float goes in the low 32 bits of its xmm
 * register (built bitwise, never converted); the result is read from rax
 * (then truncated to its type: the callee leaves the upper bits undefined)
 * or from xmm0 (a float from its low 32 bits).  A variadic function, more
 * arguments than the registers hold, or any other architecture is not bound
 * here (serving.py leaves it to cffi).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
#define SPIN_CHANNEL 1
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <float.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#else
#define SPIN_CHANNEL 0
#endif

#if SPIN_CHANNEL
/* The layout (wire.py): header words of 8 bytes, then the request area at
 * SHM_REQ and the reply area at SHM_REP. */
enum {
    REQ_SEQ = 0, REQ_LEN = 1, WORKER_SLEEPS = 2, WORKER_CPU = 3, SVC_OK = 4, REQ_BELL = 5,
    REP_SEQ = 8, REP_LEN = 9, HOST_SLEEPS = 10, HOST_CPU = 11, REP_BELL = 12,
};
/* A service request (worker -> host, inside a call: issue 24 item 2) is published
 * as REP_SEQ = SVC_BIT | k (k counts the worker's requests), its body in the reply
 * area; the answer as REQ_SEQ = the same value, its body in the request area.  The
 * host's waiting loop answers it in place when the call's waiter said it would
 * (SVC_OK, written with each request: the C end's calls). */
#define SVC_BIT ((uint64_t)1 << 63)
#define SHM_REQ 128
#define SHM_CAP (64 << 10)
#define SHM_REP (SHM_REQ + SHM_CAP)
#define SHM_SIZE (SHM_REP + SHM_CAP)
/* Lanes (issue 24 item 3): after lane 0 (the layout above), MAX_LANES - 1 small
 * slot pairs of LANE_SIZE bytes each, the same header words at their start, then
 * a request and a reply area of LANE_CAP bytes.  A lane carries only calls of
 * numbers served in C (and the services of numbers they ask in place), each by a
 * worker thread of its own; its sleeper waits on a futex, a doorbell word that
 * the writer increments after the sequence (REQ_BELL / REP_BELL), not on an
 * eventfd (several lanes sharing one eventfd would lose wake-ups: one sleeper
 * drains what another's peer wrote). */
#define MAX_LANES 16
#define LANE_SIZE 1024
#define LANE_HEAD 128
#define LANE_CAP ((LANE_SIZE - LANE_HEAD) / 2)
#define LANE_SLICE_HOST_NS 5000000LL   /* a host lane looks at the socket (EOF) this often */
#define LANE_SLICE_WORKER_NS 1000000000LL
#define HOLD_NS 3000 /* a host lane's spin with the GIL held (spin_held) */
#define HOLD_YIELDS 4 /* or its yields, when the worker shares its CPU */
#define HOLD_SHARED_NS 20000 /* and at most this long past HOLD_NS, yields included */
#define OP_CALL 1
#define MAX_ARGS 14
#define SPIN_MIN_NS 500
#define SPIN_MAX_NS 10000
#define SPIN_START_NS 4000
#define FLOOD_WAKES 32 /* eventfd wake-ups without the word, in one wait: a flood */

/* Why call() handed the call back (Channel.why). */
enum { WHY_PACK = 1, WHY_SOCKET = 2, WHY_TIMEOUT = 3, WHY_REPLY = 4, WHY_CLOSED = 5, WHY_SERVICE = 6 };

static PyObject *AGAIN; /* call()'s "the Python code takes it from here" */

typedef struct {
    uint64_t addr;
    uint16_t reqsize;
    uint8_t nargs;
    char result; /* 0: void */
    char codes[MAX_ARGS];
} Entry;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int have_view;
    uint64_t *ctl;
    unsigned char *base;
    unsigned char *req, *rep; /* this lane's request and reply areas */
    Py_ssize_t cap;           /* their size */
    int lane;                 /* 0: the eventfd channel; 1..: a futex lane */
    int peer, own, sock; /* the peer's eventfd (we write it), ours (we sleep on it) */
    int host;
    volatile int closed;
    uint64_t seq;
    uint64_t pending;     /* the host: a call whose wait a signal handler abandoned */
    int inside;           /* callers in call/wait/ask/serve (with the GIL or without) */
    int64_t pure_ns, window_ns;
    int64_t hold_ns;      /* the host's lanes: spin this long holding the GIL first */
    int hold_skip, hold_miss; /* calls left without it after it missed; the last skip */
    int why;
    int in_call;          /* the worker: serving a call now (a service may go in place) */
    uint64_t svc_seen;    /* the host: the service request answered last */
    uint64_t svc_next;    /* the worker: its service requests so far */
    Entry *table;
    Py_ssize_t ntable;
    /* counters, for the benchmark and the tests: how each wait ended */
    uint64_t n_spun, n_yielded, n_slept, n_woke, n_shared, n_held;
} Channel;

static uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void
cpu_relax(void)
{
    __builtin_ia32_pause();
}

static inline uint64_t
load_acq(uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

/* What a wait waits for: mode 0, the word moved off v (the worker's next request);
 * 1, the word is v (a reply, an answer); 2, the word is v or a service request not
 * seen yet (the host's wait for a call that may use services). */
static inline int
ready(const Channel *c, uint64_t x, uint64_t v, int mode)
{
    if (mode == 0) /* a service answer (SVC_BIT) is not a request */
        return x != v && !(x & SVC_BIT);
    if (x == v)
        return 1;
    return mode == 2 && (x & SVC_BIT) && x != c->svc_seen;
}

static void
efd_write(int fd)
{
    uint64_t one = 1;
    if (fd >= 0)
        (void)!write(fd, &one, sizeof one);
}

static long
futex(uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

static inline uint32_t *
bell(Channel *c, const uint64_t *word)
{
    return (uint32_t *)&c->ctl[word == &c->ctl[REQ_SEQ] ? REQ_BELL : REP_BELL];
}

/* W2 and W3 of the protocol, after the writer stored `seqword` (W1): wake the
 * peer if it said it sleeps.  A lane rings its doorbell first (a locked
 * increment: the full fence), then wakes the futex. */
static void
notify(Channel *c, int seqword, int sleepsword)
{
    if (c->lane) {
        uint32_t *b = bell(c, &c->ctl[seqword]);
        __atomic_fetch_add(b, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&c->ctl[sleepsword], __ATOMIC_RELAXED))
            futex(b, FUTEX_WAKE, INT_MAX, NULL);
        return;
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->ctl[sleepsword], __ATOMIC_RELAXED))
        efd_write(c->peer);
}

static void
efd_drain(int fd)
{
    uint64_t v;
    if (fd >= 0)
        (void)!read(fd, &v, sizeof v); /* non-blocking: EAGAIN when empty */
}

static int
code_size(char c)
{
    switch (c) {
    case 'b': case 'B': case '?': return 1;
    case 'h': case 'H': return 2;
    case 'i': case 'I': case 'f': return 4;
    case 'q': case 'Q': case 'd': return 8;
    default: return 0;
    }
}

/* Spin until ready() (see above): 1 when it holds, 0 when the
 * window passed (or the channel was closed).  Adapts the pure spin, and skips
 * it when the peer last ran on this very CPU (each side publishes its CPU as
 * it starts a wait; only a hint: a stale one costs a yield, or a short spin):
 * spinning there only keeps the peer from running. */
static int
spin(Channel *c, uint64_t *word, uint64_t v, int eq /* ready()'s mode */)
{
    uint64_t t0 = now_ns();
    uint64_t pure_end = t0 + (uint64_t)c->pure_ns, end = t0 + (uint64_t)c->window_ns;
    unsigned i = 0;
    int yielded = 0;
    int cpu = sched_getcpu();
    __atomic_store_n(&c->ctl[c->host ? HOST_CPU : WORKER_CPU], (uint64_t)(cpu + 1),
                     __ATOMIC_RELAXED);
    if (cpu >= 0 &&
        __atomic_load_n(&c->ctl[c->host ? WORKER_CPU : HOST_CPU], __ATOMIC_RELAXED) ==
            (uint64_t)(cpu + 1)) {
        c->n_shared++;
        yielded = 1; /* the peer shares this core: let it run at once */
    }
    for (;;) {
        if (ready(c, load_acq(word), v, eq)) {
            if (yielded) {
                c->n_yielded++;
                c->pure_ns -= c->pure_ns / 4;
                if (c->pure_ns < SPIN_MIN_NS)
                    c->pure_ns = SPIN_MIN_NS;
            } else {
                int64_t took = (int64_t)(now_ns() - t0);
                c->n_spun++;
                if (2 * took > c->pure_ns)
                    c->pure_ns = 2 * took < SPIN_MAX_NS ? 2 * took : SPIN_MAX_NS;
            }
            return 1;
        }
        if (c->closed)
            return 0;
        if (!yielded) {
            cpu_relax();
            if (++i & 7)
                continue;
            if (now_ns() < pure_end)
                continue;
            yielded = 1;
        }
        if (now_ns() >= end)
            break;
        sched_yield(); /* the peer may be waiting for this very core */
    }
    c->pure_ns -= c->pure_ns / 4;
    if (c->pure_ns < SPIN_MIN_NS)
        c->pure_ns = SPIN_MIN_NS;
    return 0;
}

/* A host lane's first wait, the GIL held (hold_ns): a reply that comes within
 * it costs no GIL hand-over, which for CPython is a kernel wake-up of the next
 * thread each way (on the shared 2-core machine, more than the call).  Calls that
 * take longer release the GIL after it, and run in the worker side by side.  Not
 * when the peer last ran on this CPU: spinning there only keeps it off. */
static int
spin_held(Channel *c, uint64_t *word, uint64_t v, int eq)
{
    if (c->hold_skip > 0) { /* it missed lately: the replies take longer than it */
        c->hold_skip--;
        return 0;
    }
    int cpu = sched_getcpu();
    __atomic_store_n(&c->ctl[HOST_CPU], (uint64_t)(cpu + 1), __ATOMIC_RELAXED);
    /* the peer last ran on this CPU: yield it the CPU (a few times), still holding
     * the GIL: the other calling threads wait for it asleep, as on a lock */
    int shared = cpu >= 0 &&
        __atomic_load_n(&c->ctl[WORKER_CPU], __ATOMIC_RELAXED) == (uint64_t)(cpu + 1);
    uint64_t end = now_ns() + (uint64_t)c->hold_ns;
    for (unsigned i = 1;; i++) {
        if (ready(c, load_acq(word), v, eq)) {
            c->n_held++;
            c->hold_miss = 0;
            return 1;
        }
        if (shared) { /* bounded in time too: a yield may run another process's slice */
            if (i > HOLD_YIELDS || now_ns() >= end + HOLD_SHARED_NS)
                return 0;
            sched_yield();
            continue;
        }
        cpu_relax();
        if (!(i & 7) && now_ns() >= end) {
            /* skip it for the next 16, 32, ... 1024 calls while it keeps missing */
            c->hold_miss = c->hold_miss ? (c->hold_miss < 1024 ? 2 * c->hold_miss : 1024) : 16;
            c->hold_skip = c->hold_miss;
            return 0;
        }
    }
}

/* Sleep until ready() (mode eq), the socket is readable, or the
 * deadline (0: none) passes.  Returns 1 (the word), 2 (the socket), 3 (the
 * deadline), 4 (closed), or -1 with errno (EINTR: check signals, call again).
 * `sleeps` is our "I sleep" word (the protocol above). */
static int nap_lane(Channel *c, uint64_t *word, uint64_t v, int eq, uint64_t *sleeps,
                    uint64_t deadline);

static int
nap(Channel *c, uint64_t *word, uint64_t v, int eq, uint64_t *sleeps, uint64_t deadline)
{
    if (c->lane)
        return nap_lane(c, word, v, eq, sleeps, deadline);
    int spurious = 0;
    for (;;) {
        __atomic_store_n(sleeps, 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* S2: before the load of the seq */
        efd_drain(c->own);
        if (ready(c, load_acq(word), v, eq)) {
            __atomic_store_n(sleeps, 0, __ATOMIC_RELAXED);
            return 1;
        }
        if (c->closed) {
            __atomic_store_n(sleeps, 0, __ATOMIC_RELAXED);
            return 4;
        }
        int ms = -1;
        if (deadline) {
            uint64_t t = now_ns();
            if (t >= deadline) {
                __atomic_store_n(sleeps, 0, __ATOMIC_RELAXED);
                return 3;
            }
            uint64_t left = (deadline - t + 999999) / 1000000;
            ms = left > 0x7fffffff ? 0x7fffffff : (int)left;
        }
        struct pollfd fds[2] = {{c->own, POLLIN, 0}, {c->sock, POLLIN, 0}};
        if (spurious >= FLOOD_WAKES) {
            /* Many wake-ups and no new word: the peer floods our eventfd (a
             * plugin writing to descriptors it does not own).  Look at the word
             * every millisecond instead of at every write; the socket still
             * ends the wait at once. */
            fds[0].fd = -1;
            if (ms < 0 || ms > 1)
                ms = 1;
        }
        c->n_slept++;
        int r = poll(fds, 2, ms);
        __atomic_store_n(sleeps, 0, __ATOMIC_RELAXED);
        if (r < 0)
            return -1;
        if (ready(c, load_acq(word), v, eq))
            return 1;
        if (fds[1].revents)
            return 2;
        if (fds[0].revents)
            c->n_woke++;
        if (fds[0].revents || spurious >= FLOOD_WAKES)
            spurious++;
    }
}

/* A lane's sleep: on its doorbell, a futex (the protocol at the top, with the
 * bell's increment as W2 and its load before the sequence's as S3: a writer
 * that stored the sequence after our load of the bell has moved the bell, so
 * FUTEX_WAIT returns at once, and one that stored it before is seen by our
 * load of the sequence).  A futex cannot wait on the socket too: the host's
 * end sleeps in slices and looks for the socket's hang-up (the worker's end)
 * between them, never at its bytes (those are lane 0's); a worker's lane
 * thread needs no socket (its main thread ends the process). */
static int
nap_lane(Channel *c, uint64_t *word, uint64_t v, int eq, uint64_t *sleeps, uint64_t deadline)
{
    uint32_t *b = bell(c, word);
    int spurious = 0;
    for (;;) {
        __atomic_store_n(sleeps, 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* S2 */
        uint32_t rung = __atomic_load_n(b, __ATOMIC_ACQUIRE);
        if (ready(c, load_acq(word), v, eq)) {
            __atomic_store_n(sleeps, 0, __ATOMIC_RELAXED);
            return 1;
        }
        if (c->closed) {
            __atomic_store_n(sleeps, 0, __ATOMIC_RELAXED);
            return 4;
        }
        int64_t slice = c->host ? LANE_SLICE_HOST_NS : LANE_SLICE_WORKER_NS;
        if (deadline) {
            uint64_t t = now_ns();
            if (t >= deadline) {
                __atomic_store_n(sleeps, 0, __ATOMIC_RELAXED);
                return 3;
            }
            if ((int64_t)(deadline - t) < slice)
                slice = (int64_t)(deadline - t);
        }
        struct timespec ts = {slice / 1000000000, slice % 1000000000};
        c->n_slept++;
        if (spurious >= FLOOD_WAKES) {
            /* the bell rings without the word: a flood (a plugin scribbling on
             * the lane); look every millisecond instead */
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        } else if (futex(b, FUTEX_WAIT, rung, &ts) < 0 && errno == EINTR) {
            __atomic_store_n(sleeps, 0, __ATOMIC_RELAXED);
            return -1;
        }
        __atomic_store_n(sleeps, 0, __ATOMIC_RELAXED);
        if (ready(c, load_acq(word), v, eq))
            return 1;
        if (c->host && c->sock >= 0) {
            struct pollfd p = {c->sock, POLLRDHUP, 0};
            if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)))
                return 2;
        }
        if (__atomic_load_n(b, __ATOMIC_RELAXED) != rung) {
            c->n_woke++;
            spurious++;
        }
    }
}

/* The deadline `timeout` seconds from now (0: none).  A timeout of 1e9 s or more
 * (31 years; inf) is no bound: the float->uint64 cast of a larger one is
 * undefined (inf gave 0, a deadline of now). */
static uint64_t
deadline_in(double timeout)
{
    if (!(timeout >= 0) || timeout >= 1e9)
        return 0;
    return now_ns() + (uint64_t)(timeout * 1e9) + 1;
}

/* Bytes (or EOF) on the socket now: the host's check after a reply. */
static int
sock_ready(Channel *c)
{
    struct pollfd p = {c->sock, POLLIN, 0};
    return poll(&p, 1, 0) > 0;
}

static void
close_fds(Channel *c)
{
    int fds[3] = {c->peer, c->own, c->sock};
    c->peer = c->own = c->sock = -1;
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* Leaving call/wait/ask/serve (the GIL held): the last caller out of a closed
 * channel closes its descriptors. */
static PyObject *
left(Channel *c, PyObject *r)
{
    if (--c->inside == 0 && c->closed)
        close_fds(c);
    return r;
}

static PyObject *
channel_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Channel *c = (Channel *)PyType_GenericNew(type, args, kwds);
    if (c != NULL)
        c->peer = c->own = c->sock = -1; /* none of ours yet (dealloc closes ours) */
    return (PyObject *)c;
}

static int
channel_init(Channel *self, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"mapping", "peer", "own", "sock", "host", "lane", NULL};
    PyObject *mm;
    int peer, own, sock, host, lane = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oiiip|i", kw, &mm, &peer, &own, &sock, &host,
                                     &lane))
        return -1;
    if (lane < 0 || lane >= MAX_LANES) {
        PyErr_Format(PyExc_ValueError, "lane %d: there are lanes 0 to %d", lane, MAX_LANES - 1);
        return -1;
    }
    if (self->have_view) {
        PyErr_SetString(PyExc_RuntimeError, "Channel initialised twice");
        return -1;
    }
    if (PyObject_GetBuffer(mm, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    self->have_view = 1; /* kept: the mapping cannot be closed under a waiting call */
    if (self->view.len < SHM_SIZE + (Py_ssize_t)lane * LANE_SIZE ||
        ((uintptr_t)self->view.buf & 7)) {
        PyErr_SetString(PyExc_ValueError, "the mapping is smaller than the channel's layout");
        return -1;
    }
    self->base = self->view.buf;
    self->lane = lane;
    if (lane == 0) {
        self->ctl = (uint64_t *)self->view.buf;
        self->req = self->base + SHM_REQ;
        self->rep = self->base + SHM_REP;
        self->cap = SHM_CAP;
    } else {
        unsigned char *at = self->base + SHM_SIZE + (size_t)(lane - 1) * LANE_SIZE;
        self->ctl = (uint64_t *)at;
        self->req = at + LANE_HEAD;
        self->rep = at + LANE_HEAD + LANE_CAP;
        self->cap = LANE_CAP;
    }
    /* Our own copies of the descriptors, closed when the channel is closed and no
     * caller is inside it (or freed): a number the Worker closed under a waiter
     * could be reused by another file, which the waiter would then read. */
    self->peer = self->own = self->sock = -1;
    if ((lane == 0 || peer >= 0) && (self->peer = fcntl(peer, F_DUPFD_CLOEXEC, 0)) < 0)
        goto failed;
    if ((lane == 0 || own >= 0) && (self->own = fcntl(own, F_DUPFD_CLOEXEC, 0)) < 0)
        goto failed;
    if ((lane == 0 || sock >= 0) && (self->sock = fcntl(sock, F_DUPFD_CLOEXEC, 0)) < 0) {
    failed:
        PyErr_SetFromErrno(PyExc_OSError);
        close_fds(self);
        return -1;
    }
    self->host = host;
    self->pure_ns = SPIN_START_NS;
    self->window_ns = host ? 30000 : 50000;
    self->hold_ns = host && lane ? HOLD_NS : 0;
    return 0;
}

static void
channel_dealloc(Channel *self)
{
    if (self->have_view)
        PyBuffer_Release(&self->view);
    close_fds(self);
    PyMem_Free(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
channel_close(Channel *self, PyObject *Py_UNUSED(ignored))
{
    /* A waiting call returns (WHY_CLOSED): the flag, and a write of its own eventfd
     * to end its poll().  Our copies of the descriptors close now if no caller is
     * inside, else as the last one leaves (left()): a number closed under a waiter
     * could be reused by another file, which the waiter would then read. */
    self->closed = 1;
    efd_write(self->own);
    if (self->lane) { /* our own sleeper, on either bell */
        futex((uint32_t *)&self->ctl[REQ_BELL], FUTEX_WAKE, INT_MAX, NULL);
        futex((uint32_t *)&self->ctl[REP_BELL], FUTEX_WAKE, INT_MAX, NULL);
    }
    if (self->inside == 0)
        close_fds(self);
    Py_RETURN_NONE;
}

/* ---- the host's end ------------------------------------------------------ */

/* Pack one argument; 0 when the Python path must judge it (nothing sent). */
static int
pack_arg(unsigned char *at, char code, PyObject *o)
{
    if (code == 'f' || code == 'd') {
        double d;
        if (PyFloat_Check(o))
            d = PyFloat_AS_DOUBLE(o);
        else if (PyLong_Check(o)) {
            d = PyLong_AsDouble(o);
            if (d == -1.0 && PyErr_Occurred())
                return 0;
        } else
            return 0;
        if (code == 'd') {
            memcpy(at, &d, 8);
            return 1;
        }
        float f = (float)d;
        if (isinf(f) && !isinf(d))
            return 0; /* struct's OverflowError, and the rule's, in Python */
        memcpy(at, &f, 4);
        return 1;
    }
    if (!PyLong_Check(o))
        return 0;
    if (code == '?') {
        if (o != Py_True && o != Py_False && !PyLong_CheckExact(o))
            return 0;
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow || (v != 0 && v != 1))
            return 0;
        at[0] = (unsigned char)v;
        return 1;
    }
    if (code == 'Q') {
        if (Py_SIZE(o) < 0)
            return 0;
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (u == (unsigned long long)-1 && PyErr_Occurred())
            return 0;
        memcpy(at, &u, 8);
        return 1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred()))
        return 0;
    switch (code) {
    case 'b': if (v < INT8_MIN || v > INT8_MAX) return 0; *(int8_t *)at = (int8_t)v; return 1;
    case 'B': if (v < 0 || v > UINT8_MAX) return 0; *at = (uint8_t)v; return 1;
    case 'h': if (v < INT16_MIN || v > INT16_MAX) return 0; { int16_t x = (int16_t)v; memcpy(at, &x, 2); } return 1;
    case 'H': if (v < 0 || v > UINT16_MAX) return 0; { uint16_t x = (uint16_t)v; memcpy(at, &x, 2); } return 1;
    case 'i': if (v < INT32_MIN || v > INT32_MAX) return 0; { int32_t x = (int32_t)v; memcpy(at, &x, 4); } return 1;
    case 'I': if (v < 0 || v > UINT32_MAX) return 0; { uint32_t x = (uint32_t)v; memcpy(at, &x, 4); } return 1;
    case 'q': memcpy(at, &v, 8); return 1;
    default: return 0;
    }
}

static PyObject *
unpack_result(const unsigned char *at, char code)
{
    switch (code) {
    case 0: Py_RETURN_NONE;
    case 'b': return PyLong_FromLong(*(const int8_t *)at);
    case 'B': return PyLong_FromLong(*at);
    case '?': return PyBool_FromLong(*at != 0);
    case 'h': { int16_t x; memcpy(&x, at, 2); return PyLong_FromLong(x); }
    case 'H': { uint16_t x; memcpy(&x, at, 2); return PyLong_FromLong(x); }
    case 'i': { int32_t x; memcpy(&x, at, 4); return PyLong_FromLong(x); }
    case 'I': { uint32_t x; memcpy(&x, at, 4); return PyLong_FromUnsignedLong(x); }
    case 'q': { int64_t x; memcpy(&x, at, 8); return PyLong_FromLongLong(x); }
    case 'Q': { uint64_t x; memcpy(&x, at, 8); return PyLong_FromUnsignedLongLong(x); }
    case 'f': { float x; memcpy(&x, at, 4); return PyFloat_FromDouble(x); }
    case 'd': { double x; memcpy(&x, at, 8); return PyFloat_FromDouble(x); }
    default: PyErr_Format(PyExc_ValueError, "result code %c", code); return NULL;
    }
}

static PyObject *finish(Channel *c, uint64_t seq, char rcode, double timeout);

/* Before a call: the reply to the call whose wait a signal handler abandoned
 * (`pending`: the worker may still run it, and reads the request area until it
 * starts), bounded by this call's timeout.  0 when it came (or none was pending),
 * a WHY_ to hand the call back (nothing sent), -1 with an exception (a signal). */
static int
settle(Channel *c, double timeout)
{
    uint64_t *ctl = c->ctl, p = c->pending;
    uint64_t deadline = deadline_in(timeout);
    while (p && load_acq(&ctl[REP_SEQ]) != p) {
        int got;
        Py_BEGIN_ALLOW_THREADS
        got = nap(c, &ctl[REP_SEQ], p, 1, &ctl[HOST_SLEEPS], deadline);
        Py_END_ALLOW_THREADS
        if (got == 1)
            break;
        if (got == 2)
            return WHY_SOCKET;
        if (got == 3)
            return WHY_TIMEOUT;
        if (got == 4)
            return WHY_CLOSED;
        if (errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
    c->pending = 0;
    return 0;
}

static PyObject *
hand_back(Channel *c, int why)
{
    c->why = why;
    return Py_NewRef(AGAIN);
}

/* call(spec, args, timeout): one call of scalars.  spec (CallPlan.spin):
 * the export's index (2 bytes, little-endian), its result code (0: void),
 * then one code per argument.  Returns the result, or AGAIN with `why` set:
 * WHY_PACK (nothing was sent: the Python path makes the call, or raises its
 * error), WHY_SOCKET (a frame or EOF waits on the socket: the Python path
 * reads it), WHY_TIMEOUT, WHY_REPLY (the reply is in shared memory but is not
 * the plan's, or bytes came on the socket: the Python path reads and judges
 * it) or WHY_CLOSED (the worker was released). */
static PyObject *
do_call(Channel *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "call(spec: bytes, args: tuple, timeout)");
        return NULL;
    }
    if (c->closed || !c->host)
        return hand_back(c, WHY_CLOSED);
    const unsigned char *spec = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t ns = PyBytes_GET_SIZE(args[0]);
    PyObject *tuple = args[1];
    Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    if (ns < 3 || ns - 3 != n || n > MAX_ARGS)
        return hand_back(c, WHY_PACK);
    double timeout = -1.0;
    if (args[2] != Py_None) {
        timeout = PyFloat_AsDouble(args[2]);
        if (timeout == -1.0 && PyErr_Occurred())
            return NULL;
    }
    char rcode = (char)spec[2];
    unsigned char req[3 + 8 * MAX_ARGS];
    req[0] = OP_CALL;
    req[1] = spec[0];
    req[2] = spec[1];
    size_t len = 3;
    for (Py_ssize_t i = 0; i < n; i++) {
        char code = (char)spec[3 + i];
        if (!pack_arg(req + len, code, PyTuple_GET_ITEM(tuple, i))) {
            PyErr_Clear();
            return hand_back(c, WHY_PACK);
        }
        len += (size_t)code_size(code);
    }
    if (c->pending) {
        int why = settle(c, timeout);
        if (why < 0)
            return NULL;
        if (why)
            return hand_back(c, why);
    }
    uint64_t *ctl = c->ctl;
    uint64_t seq = ++c->seq;
    memcpy(c->req, req, len);
    ctl[REQ_LEN] = len;
    ctl[SVC_OK] = 1; /* this waiter answers service requests in place */
    __atomic_store_n(&ctl[REQ_SEQ], seq, __ATOMIC_RELEASE); /* W1: the seq last */
    notify(c, REQ_SEQ, WORKER_SLEEPS);                       /* W2, W3 */
    return finish(c, seq, rcode, timeout);
}

static PyObject *
channel_call(Channel *c, PyObject *const *args, Py_ssize_t nargs)
{
    c->inside++;
    return left(c, do_call(c, args, nargs));
}

/* Wait for the reply to call `seq` and unpack it (see call()); a service
 * request the worker makes meanwhile hands the call back (WHY_SERVICE): the
 * Python code serves it, answer() publishes the answer, wait() comes back here. */
static PyObject *
finish(Channel *c, uint64_t seq, char rcode, double timeout)
{
    uint64_t *ctl = c->ctl;
    int got, strays = 0;
    uint64_t deadline = 0, x = 0;
    if (c->hold_ns > 0 && spin_held(c, &ctl[REP_SEQ], seq, 2)) {
        got = 1;
        x = load_acq(&ctl[REP_SEQ]);
    } else {
        Py_BEGIN_ALLOW_THREADS
        got = spin(c, &ctl[REP_SEQ], seq, 2);
        if (got && (x = load_acq(&ctl[REP_SEQ])) == seq && !c->lane)
            strays = sock_ready(c); /* a lane leaves the socket's bytes to lane 0 */
        Py_END_ALLOW_THREADS
    }
    if (c->closed)
        return hand_back(c, WHY_CLOSED);
    if (!got) {
        deadline = deadline_in(timeout);
        for (;;) {
            Py_BEGIN_ALLOW_THREADS
            got = nap(c, &ctl[REP_SEQ], seq, 2, &ctl[HOST_SLEEPS], deadline);
            Py_END_ALLOW_THREADS
            if (got >= 0 || errno != EINTR)
                break;
            if (PyErr_CheckSignals() < 0) {
                c->pending = seq; /* the worker still runs it: the next call waits for it */
                return NULL;
            }
        }
        if (got == 2)
            return hand_back(c, WHY_SOCKET);
        if (got == 3)
            return hand_back(c, WHY_TIMEOUT);
        if (got == 4)
            return hand_back(c, WHY_CLOSED);
        if (got < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (c->closed)
            return hand_back(c, WHY_CLOSED);
        if ((x = load_acq(&ctl[REP_SEQ])) == seq && !c->lane)
            strays = sock_ready(c);
    }
    if (x != seq) { /* a service request (ready()'s mode 2) */
        c->svc_seen = x;
        return hand_back(c, WHY_SERVICE);
    }
    if (strays)
        return hand_back(c, WHY_REPLY);
    uint64_t rlen = ctl[REP_LEN];
    const unsigned char *rep = c->rep;
    if (rlen != (uint64_t)(1 + (rcode ? code_size(rcode) : 0)) || rep[0] != 0)
        return hand_back(c, WHY_REPLY);
    return unpack_result(rep + 1, rcode);
}

/* wait(spec, timeout): after answer(), wait on for the reply to the call in
 * flight, as call() does. */
static PyObject *
do_wait(Channel *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) < 3) {
        PyErr_SetString(PyExc_TypeError, "wait(spec: bytes, timeout)");
        return NULL;
    }
    if (c->closed || !c->host)
        return hand_back(c, WHY_CLOSED);
    double timeout = -1.0;
    if (args[1] != Py_None) {
        timeout = PyFloat_AsDouble(args[1]);
        if (timeout == -1.0 && PyErr_Occurred())
            return NULL;
    }
    return finish(c, c->seq, PyBytes_AS_STRING(args[0])[2], timeout);
}

static PyObject *
channel_wait(Channel *c, PyObject *const *args, Py_ssize_t nargs)
{
    c->inside++;
    return left(c, do_wait(c, args, nargs));
}

/* Publish `body` in `area`, its length, then `marker` as `seqword` (last),
 * and wake the peer if it said it sleeps (the protocol at the top). */
static void
publish(Channel *c, unsigned char *area, int lenword, int seqword, const char *body, size_t n,
        uint64_t marker, int peer_sleeps)
{
    uint64_t *ctl = c->ctl;
    memcpy(area, body, n);
    ctl[lenword] = n;
    __atomic_store_n(&ctl[seqword], marker, __ATOMIC_RELEASE);
    notify(c, seqword, peer_sleeps);
}

/* answer(body): the host's answer to the service request seen last. */
static PyObject *
channel_answer(Channel *c, PyObject *body)
{
    if (!PyBytes_Check(body) || PyBytes_GET_SIZE(body) > c->cap || !c->host || c->closed) {
        PyErr_SetString(PyExc_ValueError, "answer(bytes of at most the area's size), on the host's end");
        return NULL;
    }
    publish(c, c->req, REQ_LEN, REQ_SEQ, PyBytes_AS_STRING(body),
            (size_t)PyBytes_GET_SIZE(body), c->svc_seen, WORKER_SLEEPS);
    Py_RETURN_NONE;
}

/* ask(body): the worker's service request, inside a call whose waiter answers
 * in place (SVC_OK); the answer's body, or None when the socket ended the wait
 * (the host is gone). */
static PyObject *
do_ask(Channel *c, PyObject *body)
{
    if (!PyBytes_Check(body) || PyBytes_GET_SIZE(body) > c->cap || c->host || c->closed) {
        PyErr_SetString(PyExc_ValueError, "ask(bytes of at most the area's size), on the worker's end");
        return NULL;
    }
    uint64_t *ctl = c->ctl;
    uint64_t marker = SVC_BIT | ++c->svc_next;
    publish(c, c->rep, REP_LEN, REP_SEQ, PyBytes_AS_STRING(body),
            (size_t)PyBytes_GET_SIZE(body), marker, HOST_SLEEPS);
    int got;
    Py_BEGIN_ALLOW_THREADS
    got = spin(c, &ctl[REQ_SEQ], marker, 1);
    Py_END_ALLOW_THREADS
    while (!got) {
        Py_BEGIN_ALLOW_THREADS
        got = nap(c, &ctl[REQ_SEQ], marker, 1, &ctl[WORKER_SLEEPS], 0);
        Py_END_ALLOW_THREADS
        if (got == 2 || got == 4)
            Py_RETURN_NONE;
        if (got < 0) {
            if (errno != EINTR)
                return PyErr_SetFromErrno(PyExc_OSError);
            if (PyErr_CheckSignals() < 0)
                return NULL;
            got = 0;
        }
    }
    uint64_t n = ctl[REQ_LEN];
    if (n > (uint64_t)c->cap)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)c->req, (Py_ssize_t)n);
}

static PyObject *
channel_ask(Channel *c, PyObject *body)
{
    c->inside++;
    return left(c, do_ask(c, body));
}

/* ---- the worker's end ---------------------------------------------------- */
#if defined(__x86_64__)
typedef uint64_t (*wide_i)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, double,
                           double, double, double, double, double, double, double);
typedef double (*wide_d)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, double,
                         double, double, double, double, double, double, double);

static int
bindable(const char *codes, Py_ssize_t n, char result)
{
    int ints = 0, flts = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!code_size(codes[i]))
            return 0;
        if (codes[i] == 'f' || codes[i] == 'd')
            flts++;
        else
            ints++;
    }
    return ints <= 6 && flts <= 8 && (result == 0 || code_size(result));
}

/* Serve one call of a bound export; the reply's length (0: not ours). */
static size_t
serve_one(Channel *c, const Entry *e)
{
    uint64_t iv[6] = {0};
    double dv[8] = {0};
    int ni = 0, nd = 0;
    const unsigned char *at = c->req + 3;
    for (int i = 0; i < e->nargs; i++) {
        char code = e->codes[i];
        switch (code) {
        case 'b': iv[ni++] = (uint64_t)(int64_t) * (const int8_t *)at; break;
        case 'B': case '?': iv[ni++] = *at; break;
        case 'h': { int16_t x; memcpy(&x, at, 2); iv[ni++] = (uint64_t)(int64_t)x; } break;
        case 'H': { uint16_t x; memcpy(&x, at, 2); iv[ni++] = x; } break;
        case 'i': { int32_t x; memcpy(&x, at, 4); iv[ni++] = (uint64_t)(int64_t)x; } break;
        case 'I': { uint32_t x; memcpy(&x, at, 4); iv[ni++] = x; } break;
        case 'q': case 'Q': memcpy(&iv[ni++], at, 8); break;
        case 'd': memcpy(&dv[nd++], at, 8); break;
        case 'f': { uint64_t bits = 0; memcpy(&bits, at, 4); memcpy(&dv[nd++], &bits, 8); } break;
        }
        at += code_size(code);
    }
    unsigned char *rep = c->rep;
    char r = e->result;
    if (r == 'f' || r == 'd') {
        double d = ((wide_d)(uintptr_t)e->addr)(iv[0], iv[1], iv[2], iv[3], iv[4], iv[5], dv[0],
                                                 dv[1], dv[2], dv[3], dv[4], dv[5], dv[6], dv[7]);
        memcpy(rep + 1, &d, r == 'd' ? 8 : 4); /* a float: the low 32 bits of xmm0 */
    } else {
        uint64_t v = ((wide_i)(uintptr_t)e->addr)(iv[0], iv[1], iv[2], iv[3], iv[4], iv[5],
                                                  dv[0], dv[1], dv[2], dv[3], dv[4], dv[5], dv[6],
                                                  dv[7]);
        if (r == '?')
            v = (uint8_t)v != 0;
        memcpy(rep + 1, &v, (size_t)code_size(r)); /* little-endian: the low bytes */
    }
    rep[0] = 0; /* after the call: a service asked in place used the reply area */
    return 1 + (size_t)(r ? code_size(r) : 0);
}
#else
static int
bindable(const char *codes, Py_ssize_t n, char result)
{
    (void)codes, (void)n, (void)result;
    return 0;
}
#endif

/* bind(table): per export index, (spec, address) or None (served in Python).
 * Returns the indices bound (served in C: the calls a lane may carry). */
static PyObject *
channel_bind(Channel *c, PyObject *table)
{
    if (!PyList_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "bind(list)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(table);
    PyObject *bound = PyList_New(0);
    if (bound == NULL)
        return NULL;
    Entry *t = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Entry));
    if (t == NULL) {
        Py_DECREF(bound);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(table, i);
        const char *spec;
        Py_ssize_t ns;
        unsigned long long addr;
        if (item == Py_None)
            continue;
        if (!PyArg_ParseTuple(item, "y#K", &spec, &ns, &addr)) {
            PyMem_Free(t);
            Py_DECREF(bound);
            return NULL;
        }
        if (ns < 3 || ns - 3 > MAX_ARGS || !addr || !bindable(spec + 3, ns - 3, spec[2]))
            continue;
        Entry *e = &t[i];
        e->addr = addr;
        e->nargs = (uint8_t)(ns - 3);
        e->result = spec[2];
        memcpy(e->codes, spec + 3, (size_t)(ns - 3));
        size_t size = 3;
        for (int k = 0; k < e->nargs; k++)
            size += (size_t)code_size(e->codes[k]);
        e->reqsize = (uint16_t)size;
        PyObject *k = PyLong_FromSsize_t(i);
        if (k == NULL || PyList_Append(bound, k) < 0) {
            Py_XDECREF(k);
            PyMem_Free(t);
            Py_DECREF(bound);
            return NULL;
        }
        Py_DECREF(k);
    }
    PyMem_Free(c->table);
    c->table = t;
    c->ntable = n;
    return bound;
}

/* The worker's loop, without the GIL: serve bound calls until a request it
 * does not serve is published (0), a frame or EOF waits on the socket (1), or
 * poll() failed (-1, errno). */
static int
serve_loop(Channel *c)
{
    uint64_t *ctl = c->ctl;
    for (;;) {
        int got = spin(c, &ctl[REQ_SEQ], c->seq, 0);
        if (!got) {
            got = nap(c, &ctl[REQ_SEQ], c->seq, 0, &ctl[WORKER_SLEEPS], 0);
            if (got == 2 || got == 4)
                return 1;
            if (got < 0)
                return -1;
        }
        uint64_t seq = load_acq(&ctl[REQ_SEQ]);
        uint64_t len = ctl[REQ_LEN];
        const unsigned char *req = c->req;
        unsigned idx = (unsigned)req[1] | (unsigned)req[2] << 8;
        const Entry *e = idx < (unsigned)c->ntable ? &c->table[idx] : NULL;
        if (e == NULL || !e->addr || req[0] != OP_CALL || len != e->reqsize) {
            if (!c->lane)
                return 0;
            /* A lane serves nothing else (the host sends it only calls bound
             * here): a status the host's plan never expects, which it takes
             * for garbage (the plugin scribbled on the lane). */
            c->rep[0] = 1;
            ctl[REP_LEN] = 1;
            c->seq = seq;
            __atomic_store_n(&ctl[REP_SEQ], seq, __ATOMIC_RELEASE);
            notify(c, REP_SEQ, HOST_SLEEPS);
            continue;
        }
#if defined(__x86_64__)
        c->in_call = 1;
        ctl[REP_LEN] = serve_one(c, e); /* may ask() services: the GIL is taken for them */
        c->in_call = 0;
        /* The call served, never the word now: a request published meanwhile (its
         * caller's wait was abandoned, a signal) is the next one to serve, and a
         * service answer's marker (SVC_BIT) is not a request (ready()). */
        c->seq = seq;
        __atomic_store_n(&ctl[REP_SEQ], seq, __ATOMIC_RELEASE); /* W1: the seq last */
        notify(c, REP_SEQ, HOST_SLEEPS);                         /* W2, W3 */
#else
        return 0;
#endif
    }
}

/* serve(): serve bound calls; 0 when a request waits that the Python code
 * serves (the seq it last served is `seq`), 1 when a frame (or EOF) waits on
 * the socket. */
static PyObject *
do_serve(Channel *c)
{
    if (c->host) {
        PyErr_SetString(PyExc_RuntimeError, "serve() is the worker's end");
        return NULL;
    }
    for (;;) {
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = serve_loop(c);
        Py_END_ALLOW_THREADS
        if (r >= 0)
            return PyLong_FromLong(r);
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
}

static PyObject *
channel_serve(Channel *c, PyObject *Py_UNUSED(ignored))
{
    c->inside++;
    return left(c, do_serve(c));
}

/* asked(): the host's end, after WHY_SERVICE: the service request's body in
 * this lane's reply area, or None when its length does not fit (garbage). */
static PyObject *
channel_asked(Channel *c, PyObject *Py_UNUSED(ignored))
{
    uint64_t n = c->ctl[REP_LEN];
    if (!c->host || n > (uint64_t)c->cap)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)c->rep, (Py_ssize_t)n);
}

/* can_ask(): the worker's end: a service may be asked in place now (inside a
 * call whose waiter answers in place). */
static PyObject *
channel_can_ask(Channel *c, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(!c->host && c->in_call && c->ctl[SVC_OK] == 1);
}

static PyObject *
channel_stats(Channel *c, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:L}", "spun", c->n_spun, "yielded",
                         c->n_yielded, "slept", c->n_slept, "woken", c->n_woke, "shared",
                         c->n_shared, "held", c->n_held, "pure_ns", (long long)c->pure_ns);
}

static PyMethodDef channel_methods[] = {
    {"call", (PyCFunction)(void (*)(void))channel_call, METH_FASTCALL,
     "call(spec, args, timeout): one call of scalars (the host's end)"},
    {"bind", (PyCFunction)channel_bind, METH_O, "bind(table): the exports served in C"},
    {"serve", (PyCFunction)channel_serve, METH_NOARGS,
     "serve(): serve bound calls; 0: one waits for Python, 1: the socket"},
    {"close", (PyCFunction)channel_close, METH_NOARGS, "close(): the worker was released"},
    {"stats", (PyCFunction)channel_stats, METH_NOARGS, "how the waits ended"},
    {"wait", (PyCFunction)(void (*)(void))channel_wait, METH_FASTCALL,
     "wait(spec, timeout): after answer(), the reply to the call in flight"},
    {"answer", (PyCFunction)channel_answer, METH_O, "answer(body): a service request's answer"},
    {"ask", (PyCFunction)channel_ask, METH_O, "ask(body): a service request, in place"},
    {"asked", (PyCFunction)channel_asked, METH_NOARGS, "asked(): the service request's body"},
    {"can_ask", (PyCFunction)channel_can_ask, METH_NOARGS, "can_ask(): a service may go in place"},
    {NULL},
};

static PyMemberDef channel_members[] = {
    {"seq", T_ULONGLONG, offsetof(Channel, seq), 0, "the last sequence sent or served"},
    {"pending", T_ULONGLONG, offsetof(Channel, pending), 0,
     "the host: a call whose wait was abandoned (0: none)"},
    {"why", T_INT, offsetof(Channel, why), READONLY, "why call() returned AGAIN"},
    {"window_ns", T_LONGLONG, offsetof(Channel, window_ns), 0, "spin window before sleeping"},
    {"hold_ns", T_LONGLONG, offsetof(Channel, hold_ns), 0,
     "the host's first spin, the GIL held (0: none)"},
    {"in_call", T_INT, offsetof(Channel, in_call), 0, "the worker serves a call now"},
    {"lane", T_INT, offsetof(Channel, lane), READONLY, "0: the eventfd channel; 1..: a lane"},
    {"cap", T_PYSSIZET, offsetof(Channel, cap), READONLY, "the request and reply areas' size"},
    {NULL},
};

static PyTypeObject ChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hotload._process._spin.Channel",
    .tp_basicsize = sizeof(Channel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One end of an isolated worker's shared-memory call channel.",
    .tp_new = channel_new,
    .tp_init = (initproc)channel_init,
    .tp_dealloc = (destructor)channel_dealloc,
    .tp_methods = channel_methods,
    .tp_members = channel_members,
};
#endif /* SPIN_CHANNEL */

static struct PyModuleDef spin_module = {
    PyModuleDef_HEAD_INIT,
    "hotload._process._spin",
    "The shared-memory call channel's hot path (Linux x86).",
    -1,
    NULL,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__spin(void)
{
    PyObject *m = PyModule_Create(&spin_module);
    if (m == NULL)
        return NULL;
#if SPIN_CHANNEL
    if (PyType_Ready(&ChannelType) < 0)
        goto fail;
    AGAIN = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (AGAIN == NULL || PyModule_AddObjectRef(m, "AGAIN", AGAIN) < 0 ||
        PyModule_AddObjectRef(m, "Channel", (PyObject *)&ChannelType) < 0)
        goto fail;
    if (PyModule_AddIntConstant(m, "WHY_PACK", WHY_PACK) < 0 ||
        PyModule_AddIntConstant(m, "WHY_SOCKET", WHY_SOCKET) < 0 ||
        PyModule_AddIntConstant(m, "WHY_TIMEOUT", WHY_TIMEOUT) < 0 ||
        PyModule_AddIntConstant(m, "WHY_REPLY", WHY_REPLY) < 0 ||
        PyModule_AddIntConstant(m, "WHY_CLOSED", WHY_CLOSED) < 0 ||
        PyModule_AddIntConstant(m, "WHY_SERVICE", WHY_SERVICE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_LANES", MAX_LANES) < 0 ||
        PyModule_AddIntConstant(m, "LANE_SIZE", LANE_SIZE) < 0 ||
#if defined(__x86_64__)
        PyModule_AddIntConstant(m, "SERVES", 1) < 0)
#else
        PyModule_AddIntConstant(m, "SERVES", 0) < 0)
#endif
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
#else
    return m; /* no Channel: the Python ends serve every call */
#endif
}
