/*
 * hotload.h - the plugin SDK for hotload (https://example.invalid/hotload).
 *
 * A plugin is an ordinary C shared library that describes itself with a few
 * macros.  The host reads that description from the binary alone (a section
 * named ".hotload" holding NUL-terminated text records), before the library
 * is ever opened, so a broken or foreign build is refused without running any
 * of its code.
 *
 *     #include <hotload.h>
 *
 *     HOTLOAD_PLUGIN("double_xp", "1.0.0");
 *
 *     HOTLOAD_API int64_t reward(int64_t base, int32_t level) { return base * 2; }
 *     HOTLOAD_EXPORT(reward, "int64_t(int64_t, int32_t)");
 *
 * Build:  cc -std=c11 -fPIC -shared -Wall -Wextra -I<sdk>/include plugin.c -o plugin.so
 *
 * This header is a public ABI.  HOTLOAD_ABI_VERSION changes whenever the
 * record format or a hook's C type changes; a host refuses a plugin built for
 * another ABI version and says both numbers.
 */
#ifndef HOTLOAD_H
#define HOTLOAD_H

#include <stddef.h>
#include <stdint.h>

#define HOTLOAD_ABI_VERSION 1

/* ---- exporting functions ------------------------------------------------
 * Put HOTLOAD_API in front of every exported function's definition: it makes
 * the symbol visible (dllexport on Windows) and unmangled (extern "C" in C++). */

#ifdef __cplusplus
#  define HOTLOAD__EXTERN_C extern "C"
#else
#  define HOTLOAD__EXTERN_C
#endif

#if defined(_WIN32) || defined(__CYGWIN__)
#  define HOTLOAD_API HOTLOAD__EXTERN_C __declspec(dllexport)
#elif defined(__GNUC__)
#  define HOTLOAD_API HOTLOAD__EXTERN_C __attribute__((visibility("default")))
#else
#  define HOTLOAD_API HOTLOAD__EXTERN_C
#endif

/* ---- state hooks --------------------------------------------------------
 *
 * HOTLOAD_ON_UNLOAD(fn): `int fn(const void **state, size_t *size)`
 *   Called on the old version when a newer one is about to take over, once
 *   the old version is quiet (no call in flight, or after the host's
 *   quiesce timeout).  Point *state at the bytes to hand over and set *size;
 *   the host copies them before it returns, the memory stays yours.  Return
 *   0.  This is a snapshot, not a destructor: if the new version refuses
 *   the state, the old one keeps serving, so do not free what serving needs.
 *   Release resources in a destructor (__attribute__((destructor))) instead.
 *   The host may also call it while the version keeps serving (to give the
 *   preflight a realistic state blob): make it safe to call more than once
 *   and concurrently with your exported functions.
 *
 * HOTLOAD_ON_LOAD(fn): `int fn(const char *prev_version, const void *state, size_t size)`
 *   Called once on a new version before its first call.  prev_version is the
 *   version string of the version it replaces (NULL on a first load), state
 *   and size are what that version handed over (NULL and 0 when none); the
 *   bytes are valid only during the call, so copy what you keep.  Return 0
 *   to start serving; any other value refuses the load and the previous
 *   version keeps serving, untouched.  Check a state layout version in the
 *   blob: a newer build must not trust an older layout blindly.
 *
 * HOTLOAD_SELF_TEST(fn): `int fn(void)`
 *   Optional; run by the host's preflight in a separate process.  Return 0
 *   when the plugin works.
 *
 * HOTLOAD_UNLOAD_SAFE()
 *   Declares that nothing of the plugin runs after it is closed: it starts
 *   no threads that outlive a call, and its destructor (or on_unload) removes
 *   any thread-key destructor, atexit or signal handler it installed.  Without
 *   it, a plugin whose binary uses such things is kept loaded ("retained")
 *   instead of being closed, because unloading it could crash the process.
 */
typedef int (*hotload_on_unload_fn)(const void **state, size_t *size);
typedef int (*hotload_on_load_fn)(const char *prev_version, const void *state, size_t size);
typedef int (*hotload_self_test_fn)(void);
typedef void (*hotload__any_fn)(void);

/* ---- the descriptor records (implementation detail, read by the host) --- */

#define HOTLOAD__STR2(x) #x
#define HOTLOAD__STR(x) HOTLOAD__STR2(x)
#define HOTLOAD__CAT2(a, b) a##b
#define HOTLOAD__CAT(a, b) HOTLOAD__CAT2(a, b)
/* "hotload" US abi US kind US field US field NUL  (US = 0x1f) */
#define HOTLOAD__REC(kind) "hotload\x1f" HOTLOAD__STR(HOTLOAD_ABI_VERSION) "\x1f" kind "\x1f"

#if defined(_MSC_VER) && !defined(__clang__)
#  pragma section(".hotload", read)
#  define HOTLOAD__SECTION __declspec(allocate(".hotload"))
#  define HOTLOAD__USED
#elif defined(__APPLE__)
#  define HOTLOAD__SECTION __attribute__((section("__DATA,__hotload")))
#  define HOTLOAD__USED __attribute__((used))
#else
#  define HOTLOAD__SECTION __attribute__((section(".hotload")))
#  define HOTLOAD__USED __attribute__((used))
#endif

#define HOTLOAD__RECORD(id, text) \
    HOTLOAD__SECTION HOTLOAD__USED static const char id[] = text

/* Keeps a reference to `fn` so the compiler checks that it exists. */
#define HOTLOAD__REF(fn, type) \
    static type const HOTLOAD__CAT(hotload__ref_, fn) HOTLOAD__USED = (type)(fn)

/* ---- the public macros -------------------------------------------------- */

/* Names the plugin and its version.  Exactly one per plugin. */
#define HOTLOAD_PLUGIN(name, version) \
    HOTLOAD__RECORD(hotload__plugin, HOTLOAD__REC("plugin") name "\x1f" version)

/* Exports `fn` with the C function type `signature`, e.g. "int64_t(int64_t, int32_t)".
 * Define `fn` with HOTLOAD_API so it is visible in the dynamic symbol table. */
#define HOTLOAD_EXPORT(fn, signature) \
    HOTLOAD__REF(fn, hotload__any_fn); \
    HOTLOAD__RECORD(HOTLOAD__CAT(hotload__export_, fn), \
                    HOTLOAD__REC("export") #fn "\x1f" signature)

/* The hooks may be static: each macro defines a small exported trampoline
 * with a fixed name (hotload_on_load, ...) that the compiler type-checks
 * against the hook's C type. */
#define HOTLOAD_ON_LOAD(fn) \
    HOTLOAD_API int hotload_on_load(const char *p, const void *s, size_t n) \
    { return (fn)(p, s, n); } \
    HOTLOAD__RECORD(hotload__on_load, HOTLOAD__REC("on_load") "hotload_on_load")

#define HOTLOAD_ON_UNLOAD(fn) \
    HOTLOAD_API int hotload_on_unload(const void **s, size_t *n) \
    { return (fn)(s, n); } \
    HOTLOAD__RECORD(hotload__on_unload, HOTLOAD__REC("on_unload") "hotload_on_unload")

#define HOTLOAD_SELF_TEST(fn) \
    HOTLOAD_API int hotload_self_test(void) { return (fn)(); } \
    HOTLOAD__RECORD(hotload__self_test, HOTLOAD__REC("self_test") "hotload_self_test")

#define HOTLOAD_UNLOAD_SAFE() \
    HOTLOAD__RECORD(hotload__unload_safe, HOTLOAD__REC("unload_safe") "yes")

#endif /* HOTLOAD_H */
