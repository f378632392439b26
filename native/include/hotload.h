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
 *     HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));
 *
 * HOTLOAD_EXPORT checks reward's type against the declared prototype at
 * compile time (a mismatch is an error naming the function, in C with gcc,
 * clang and mingw-w64, and in C++) and stores the same prototype, as text,
 * for the host to check calls against.
 *
 * Build:  cc -std=c11 -fPIC -shared -Wall -Wextra -I<sdk>/include plugin.c -o plugin.so
 *
 * This header is a public ABI.  HOTLOAD_ABI_VERSION is its one number, the
 * same as the Python side's hotload.ABI_VERSION: it changes whenever the
 * record format or a hook's C type changes; a host refuses a plugin with a
 * record newer than the ABI it reads and says both numbers.
 */
#ifndef HOTLOAD_H
#define HOTLOAD_H

#include <stddef.h>
#include <stdint.h>

#define HOTLOAD_ABI_VERSION 4
/* Each record is stamped with the oldest ABI that has it: the records of the
 * plugin-host contract (HOTLOAD_IMPORT, HOTLOAD_STRUCT, HOTLOAD_FIELD,
 * HOTLOAD_ENUM...) came with ABI 2, HOTLOAD_SIDE_BY_SIDE with ABI 3, the typed
 * state records (HOTLOAD_STATE, HOTLOAD_MIGRATE) with ABI 4, so an
 * older host refuses a plugin that uses them, saying both numbers; every
 * other record is stamped 1, so a plugin that uses none of them still loads
 * in an ABI 1 host. */
#define HOTLOAD__ABI_BASE 1

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
 * Each hook's `fn` must have exactly the C type shown (parameter names are
 * free): anything else is a compile error naming it, so no argument or result
 * is silently converted on the way in or out.
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
 *
 * HOTLOAD_SIDE_BY_SIDE()   (ABI 3)
 *   Declares that two versions of the plugin may serve at once (a canary:
 *   host.canary).  A plugin with on_load/on_unload is refused as a canary
 *   without it, because each version would own the state; declare it when
 *   the state lives outside the image (host services, handles), so that both
 *   versions see the same.  The candidate's on_load gets the baseline's
 *   version string and no state.
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
#define HOTLOAD__REC(kind) "hotload\x1f" HOTLOAD__STR(HOTLOAD__ABI_BASE) "\x1f" kind "\x1f"
#define HOTLOAD__REC2(kind) "hotload\x1f" "2" "\x1f" kind "\x1f"
#define HOTLOAD__REC3(kind) "hotload\x1f" "3" "\x1f" kind "\x1f"
#define HOTLOAD__REC4(kind) "hotload\x1f" "4" "\x1f" kind "\x1f"

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

/* ---- compile-time type checks ---------------------------------------------
 *
 * HOTLOAD__ASSERT(cond, message) is a file-scope declaration that does not
 * compile when the constant `cond` is false, and prints `message` where the
 * compiler can.
 *
 * HOTLOAD__CHECK(fn, fnptr_type, message) does not compile unless `fn` names
 * a function whose type is exactly the function type that `fnptr_type` points
 * to.  It is the one place that knows how each compiler says "same function
 * type", so exports and hook trampolines (and later imports) share it:
 *
 *   C, gcc/clang/mingw: __builtin_types_compatible_p.  (__extension__ keeps
 *     -std=c99 -pedantic quiet about _Static_assert.)
 *   C++11 and later:    a same-type test of &fn; a noexcept function matches
 *     too (C++17 made noexcept part of a function's type).
 *   Anything else:      comparing a null pointer of the declared type with
 *     &fn (unevaluated).  C++ refuses distinct pointer types; a C compiler
 *     must diagnose them (a constraint violation), perhaps with a warning. */

#if defined(__cplusplus) && __cplusplus >= 201103L
#  define HOTLOAD__ASSERT(cond, message) static_assert(cond, message)
extern "C++" {
template <class A, class B> struct hotload__same { static constexpr bool value = false; };
template <class A> struct hotload__same<A, A> { static constexpr bool value = true; };
template <class F> struct hotload__plain { typedef F type; };
#  if defined(__cpp_noexcept_function_type)
template <class R, class... A> struct hotload__plain<R (*)(A...) noexcept> {
    typedef R (*type)(A...);
};
#  endif
}
#  define HOTLOAD__SAME_FN(fn, fnptr_type) \
    hotload__same<hotload__plain<decltype(&(fn))>::type, fnptr_type>::value
#elif !defined(__cplusplus) && defined(__GNUC__)
#  define HOTLOAD__ASSERT(cond, message) __extension__ _Static_assert(cond, message)
#  define HOTLOAD__SAME_FN(fn, fnptr_type) \
    __builtin_types_compatible_p(__typeof__(&(fn)), fnptr_type)
#else
#  define HOTLOAD__ASSERT(cond, message) \
    typedef char HOTLOAD__CAT(hotload__assert_, __LINE__)[(cond) ? 1 : -1]
#endif

#if defined(HOTLOAD__SAME_FN)
#  define HOTLOAD__CHECK(fn, fnptr_type, message) \
    HOTLOAD__ASSERT(HOTLOAD__SAME_FN(fn, fnptr_type), message)
#else
#  define HOTLOAD__CHECK(fn, fnptr_type, message) \
    HOTLOAD__ASSERT(sizeof((fnptr_type)0 == &(fn)), message)
#endif

/* In C before C23, `R (*)()` declares no prototype and is compatible with
 * almost any parameter list, while the host (cffi) reads "R()" as "R(void)".
 * So when the parameter list is spelled exactly `()`, C also demands R(void).
 * (C++ and C23 already read () as (void).) */
#if !defined(__cplusplus) && defined(HOTLOAD__SAME_FN)
#  define HOTLOAD__CHECK_NO_PARAMS(fn, R, params, message) \
    HOTLOAD__ASSERT(sizeof(#params) != sizeof("()") || HOTLOAD__SAME_FN(fn, R (*)(void)), \
                    message)
#else
#  define HOTLOAD__CHECK_NO_PARAMS(fn, R, params, message) HOTLOAD__ASSERT(1, message)
#endif

/* The string form of HOTLOAD_EXPORT is deprecated: the compiler cannot check
 * a prototype written as text.  It still compiles and loads (ABI 1 records
 * are the same), with a warning naming the function, unless the plugin
 * defines HOTLOAD_ALLOW_STRING_EXPORT before including this header.  It keeps
 * a reference to `fn` so that the compiler at least checks that it exists. */
#if defined(HOTLOAD_ALLOW_STRING_EXPORT) || !defined(__GNUC__)
#  define HOTLOAD__STRING_EXPORT_TYPE(fn) hotload__any_fn
#  define HOTLOAD__STRING_EXPORT_WARN(fn)
#else
#  define HOTLOAD__STRING_EXPORT_TYPE(fn) HOTLOAD__CAT(hotload__unchecked_export_, fn)
#  define HOTLOAD__STRING_EXPORT_WARN(fn) \
    typedef hotload__any_fn HOTLOAD__CAT(hotload__unchecked_export_, fn) __attribute__(( \
        deprecated("HOTLOAD_EXPORT(" #fn ", \"signature\") is not checked by the compiler; " \
                   "write HOTLOAD_EXPORT(" #fn ", result_type, (parameter types)), or define " \
                   "HOTLOAD_ALLOW_STRING_EXPORT to keep the string form")));
#endif

/* ---- the public macros -------------------------------------------------- */

/* Names the plugin and its version.  Exactly one per plugin. */
#define HOTLOAD_PLUGIN(name, version) \
    HOTLOAD__RECORD(hotload__plugin, HOTLOAD__REC("plugin") name "\x1f" version)

/* HOTLOAD_EXPORT(fn, result_type, (parameter types))
 *
 * Exports `fn`, a function defined with HOTLOAD_API (so it is visible in the
 * dynamic symbol table), e.g.
 *
 *     HOTLOAD_API int64_t reward(int64_t base, int32_t level) { ... }
 *     HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));
 *
 *     HOTLOAD_API const char *greeting(void) { ... }
 *     HOTLOAD_EXPORT(greeting, const char *, (void));
 *
 * It is a compile error if `fn`'s type is not exactly
 * `result_type (parameter types)`: the message names the function and the
 * declared prototype.  The host reads the prototype as the text
 * "result_type(parameter types)" (parameter names are allowed and ignored),
 * so use types the host's parser knows: the <stdint.h> integers, size_t,
 * float, double, bool/_Bool, pointers (void *, const char *, int32_t *...).
 * Macros in the types are expanded before the text is stored.
 * `()` means no parameters, as in C++ and C23.
 *
 * The older HOTLOAD_EXPORT(fn, "int64_t(int64_t, int32_t)") still works but
 * is not checked; it is deprecated (see HOTLOAD_ALLOW_STRING_EXPORT above). */
#define HOTLOAD_EXPORT(...) \
    HOTLOAD__EXPORT_PICK(__VA_ARGS__, HOTLOAD__EXPORT_BAD, HOTLOAD__EXPORT_TYPED, \
                         HOTLOAD__EXPORT_STRING, HOTLOAD__EXPORT_BAD, HOTLOAD__EXPORT_BAD) \
    (__VA_ARGS__)
#define HOTLOAD__EXPORT_PICK(a1, a2, a3, a4, chosen, ...) chosen

/* The prototype text of a result type and a parenthesised parameter list,
 * as the host reads it: "int64_t(int64_t, int32_t)".  Shared by every record
 * that carries a prototype (exports today; imports and events can reuse it). */
#define HOTLOAD__PROTO(R, params) #R #params

#define HOTLOAD__EXPORT_TYPED(fn, R, params) \
    HOTLOAD__CHECK(fn, R (*) params, \
                   "HOTLOAD_EXPORT(" #fn ", " #R ", " #params "): " #fn \
                   " is not a function of type " HOTLOAD__PROTO(R, params)); \
    HOTLOAD__CHECK_NO_PARAMS(fn, R, params, \
                             "HOTLOAD_EXPORT(" #fn ", " #R ", ()): " #fn \
                             " must take no parameters: () means (void)"); \
    HOTLOAD__RECORD(HOTLOAD__CAT(hotload__export_, fn), \
                    HOTLOAD__REC("export") #fn "\x1f" HOTLOAD__PROTO(R, params))

#define HOTLOAD__EXPORT_STRING(fn, signature) \
    HOTLOAD__STRING_EXPORT_WARN(fn) \
    static HOTLOAD__STRING_EXPORT_TYPE(fn) const HOTLOAD__CAT(hotload__ref_, fn) HOTLOAD__USED = \
        (hotload__any_fn)(fn); \
    HOTLOAD__RECORD(HOTLOAD__CAT(hotload__export_, fn), \
                    HOTLOAD__REC("export") #fn "\x1f" signature)

#define HOTLOAD__EXPORT_BAD(...) \
    HOTLOAD__ASSERT(0, "HOTLOAD_EXPORT takes (fn, result_type, (parameter types))")

/* The hooks may be static: each macro defines a small exported trampoline
 * with a fixed name (hotload_on_load, ...).  `fn` must have exactly the
 * hook's C type (a compile error naming it otherwise), so no argument or
 * result is silently converted on the way. */
#define HOTLOAD_ON_LOAD(fn) \
    HOTLOAD__CHECK(fn, hotload_on_load_fn, \
                   "HOTLOAD_ON_LOAD(" #fn "): " #fn " is not a function of type " \
                   "int(const char *prev_version, const void *state, size_t size)"); \
    HOTLOAD_API int hotload_on_load(const char *p, const void *s, size_t n) \
    { return (fn)(p, s, n); } \
    HOTLOAD__RECORD(hotload__on_load, HOTLOAD__REC("on_load") "hotload_on_load")

#define HOTLOAD_ON_UNLOAD(fn) \
    HOTLOAD__CHECK(fn, hotload_on_unload_fn, \
                   "HOTLOAD_ON_UNLOAD(" #fn "): " #fn " is not a function of type " \
                   "int(const void **state, size_t *size)"); \
    HOTLOAD_API int hotload_on_unload(const void **s, size_t *n) \
    { return (fn)(s, n); } \
    HOTLOAD__RECORD(hotload__on_unload, HOTLOAD__REC("on_unload") "hotload_on_unload")

#define HOTLOAD_SELF_TEST(fn) \
    HOTLOAD__CHECK(fn, hotload_self_test_fn, \
                   "HOTLOAD_SELF_TEST(" #fn "): " #fn " is not a function of type int(void)"); \
    HOTLOAD_API int hotload_self_test(void) { return (fn)(); } \
    HOTLOAD__RECORD(hotload__self_test, HOTLOAD__REC("self_test") "hotload_self_test")

#define HOTLOAD_UNLOAD_SAFE() \
    HOTLOAD__RECORD(hotload__unload_safe, HOTLOAD__REC("unload_safe") "yes")

#define HOTLOAD_SIDE_BY_SIDE() \
    HOTLOAD__RECORD(hotload__side_by_side, HOTLOAD__REC3("side_by_side") "yes")

/* ---- host services (ABI 2) -------------------------------------------------
 *
 * HOTLOAD_IMPORT(fn, result_type, (parameter types))
 *
 * Declares that the plugin calls the host service `fn`, which the host offers
 * with host.provide("fn", python_function, "result_type(parameter types)").
 * After it, `fn(...)` is an ordinary call (through a function pointer named
 * `fn`, static to this translation unit: declare each import in one .c file).
 *
 *     HOTLOAD_IMPORT(grant_item, int32_t, (int64_t, const char *, int32_t));
 *     ...  if (grant_item(player, "winter_crate", 1) != 0) ...
 *
 * The host refuses the plugin, before any of its code runs (constructors
 * included), unless it provides every import with exactly that prototype.
 * The pointer is bound by the dynamic linker while the plugin is opened
 * (against a small data-only library the host generates), so constructors
 * may call services too.  The host re-points it when a service is replaced,
 * and when the host closes (a call then returns the service's error value).
 * A service that raises returns its declared error value (0 by default).
 * Outside a hotload host (a plain dlopen) the pointer is NULL: test it with
 * `if (fn)` if the plugin may run there.  Not available on Windows yet.
 *
 * hotload_in_preflight(): 1 while the plugin runs in the host's preflight
 * worker, where every service is a stand-in that returns its error value
 * (a self-test can skip what needs real services), else 0. */
#if defined(_WIN32) || defined(__CYGWIN__) || !defined(__GNUC__)
#  define HOTLOAD__WEAK_SVC(fn, R, params)
#  define HOTLOAD__SVC_ADDR(fn) 0
static inline int hotload_in_preflight(void) { return 0; }
#else
#  define HOTLOAD__WEAK_SVC(fn, R, params) \
    HOTLOAD__EXTERN_C R HOTLOAD__CAT(hotload__svc_, fn) params __attribute__((weak));
#  define HOTLOAD__SVC_ADDR(fn) &HOTLOAD__CAT(hotload__svc_, fn)
#  ifdef __cplusplus
extern "C" const int hotload__in_preflight __attribute__((weak));
#  else
extern const int hotload__in_preflight __attribute__((weak));
#  endif
static inline int hotload_in_preflight(void)
{ return &hotload__in_preflight != 0 && hotload__in_preflight != 0; }
#endif

#define HOTLOAD_IMPORT(fn, R, params) \
    HOTLOAD__ASSERT(sizeof(#params) != sizeof("()"), \
                    "HOTLOAD_IMPORT(" #fn ", " #R ", ()): write (void) for no parameters"); \
    HOTLOAD__WEAK_SVC(fn, R, params) \
    static R (*fn) params = HOTLOAD__SVC_ADDR(fn); \
    HOTLOAD_API void *const HOTLOAD__CAT(hotload__slot_, fn) = (void *)&fn; \
    HOTLOAD__RECORD(HOTLOAD__CAT(hotload__import_, fn), \
                    HOTLOAD__REC2("import") #fn "\x1f" HOTLOAD__PROTO(R, params))

/* ---- types (ABI 2) ------------------------------------------------------------
 *
 * Declare the C types that exports and imports use, so that the host knows
 * them without a header.  The compiler records each type's layout (sizeof,
 * alignof, and every declared field's offset and size); the host builds the
 * same type and refuses the plugin, before any of its code runs, when its
 * layout differs (packed structs, unusual alignment).  Each field's type is
 * checked by the compiler; a bit-field does not compile.
 *
 *     typedef struct { int64_t id; int32_t level; char name[16]; } player_t;
 *     HOTLOAD_STRUCT(player_t);
 *     HOTLOAD_FIELD(player_t, id, int64_t);
 *     HOTLOAD_FIELD(player_t, level, int32_t);
 *     HOTLOAD_FIELD(player_t, name, char[16]);
 *
 *     typedef enum { QUEST_NONE, QUEST_DAILY = 5 } quest_t;
 *     HOTLOAD_ENUM(quest_t);
 *     HOTLOAD_ENUMERATOR(quest_t, QUEST_NONE);
 *     HOTLOAD_ENUMERATOR(quest_t, QUEST_DAILY);
 *
 * Declare every field (one the host does not know is padding to it), name
 * types with a typedef, and declare a type before the types that contain it.
 * A changed layout is a changed signature for every export that uses it. */
#if defined(__cplusplus) && __cplusplus >= 201103L
#  define HOTLOAD__ALIGNOF(T) alignof(T)
#  define HOTLOAD__SAME_TYPE(expr, T) hotload__same<decltype(expr), T>::value
#elif defined(__GNUC__)
#  define HOTLOAD__ALIGNOF(T) __alignof__(T)
#  define HOTLOAD__SAME_TYPE(expr, T) __builtin_types_compatible_p(__typeof__(expr), T)
#else
#  define HOTLOAD__ALIGNOF(T) _Alignof(T)
#  define HOTLOAD__SAME_TYPE(expr, T) 1
#endif

/* A record whose text is followed by "=<sign><10 digits>,<sign><10 digits>",
 * two integer constants computed by the compiler (still no relocation). */
#define HOTLOAD__ABS(n) ((long long)(n) < 0 ? -(unsigned long long)(long long)(n) \
                                            : (unsigned long long)(long long)(n))
#define HOTLOAD__DIG(n, p) (char)('0' + (int)(HOTLOAD__ABS(n) / (p##ULL) % 10))
#define HOTLOAD__NUM(n) (char)((long long)(n) < 0 ? '-' : '+'), \
    HOTLOAD__DIG(n, 1000000000), HOTLOAD__DIG(n, 100000000), HOTLOAD__DIG(n, 10000000), \
    HOTLOAD__DIG(n, 1000000), HOTLOAD__DIG(n, 100000), HOTLOAD__DIG(n, 10000), \
    HOTLOAD__DIG(n, 1000), HOTLOAD__DIG(n, 100), HOTLOAD__DIG(n, 10), HOTLOAD__DIG(n, 1)
#define HOTLOAD__RECORD_N(id, text, a, b) \
    HOTLOAD__SECTION HOTLOAD__USED static const struct { char t[sizeof(text)]; char n[24]; \
                                                        char z; } id = \
        { text, { '=', HOTLOAD__NUM(a), ',', HOTLOAD__NUM(b) }, 0 }

#define HOTLOAD_STRUCT(T) \
    HOTLOAD__RECORD_N(HOTLOAD__CAT(hotload__struct_, T), HOTLOAD__REC2("struct") #T, \
                      sizeof(T), HOTLOAD__ALIGNOF(T))

#define HOTLOAD_FIELD(T, f, FT) \
    HOTLOAD__ASSERT(HOTLOAD__SAME_TYPE(((T *)0)->f, FT), \
                    "HOTLOAD_FIELD(" #T ", " #f ", " #FT "): " #T "." #f " is not of type " #FT); \
    HOTLOAD__RECORD_N(HOTLOAD__CAT(hotload__field_, HOTLOAD__CAT(T, HOTLOAD__CAT(__, f))), \
                      HOTLOAD__REC2("field") #T "\x1f" #f "\x1f" #FT, offsetof(T, f), \
                      sizeof(((T *)0)->f))

#define HOTLOAD_ENUM(T) \
    HOTLOAD__RECORD_N(HOTLOAD__CAT(hotload__enum_, T), HOTLOAD__REC2("enum") #T, sizeof(T), \
                      HOTLOAD__ALIGNOF(T))

#define HOTLOAD_ENUMERATOR(T, name) \
    HOTLOAD__RECORD_N(HOTLOAD__CAT(hotload__enumerator_, HOTLOAD__CAT(T, HOTLOAD__CAT(__, name))), \
                      HOTLOAD__REC2("enumerator") #T "\x1f" #name, (T)(name), 0)

/* ---- typed state (ABI 4) -----------------------------------------------------
 *
 * HOTLOAD_STATE(T, var)
 *
 * Declares that the plugin keeps its state in `var`, a variable of the struct
 * type T declared with HOTLOAD_STRUCT/HOTLOAD_FIELD above.  The host then
 * carries the state across a reload or a rollback by field name, with no
 * on_unload/on_load code: a field kept keeps its value (widened when its
 * integer type grew: int32_t -> int64_t, uint16_t -> uint32_t or int32_t; a
 * fixed array may grow), a new field keeps the value `var` has when the new
 * build opens (its C initializer: that is how a default is declared; zero
 * without one), a removed field is dropped and reported in the host's log.
 * A field whose type changed any other way (a narrowing, a sign change, float
 * to int, a shorter array) refuses the build before it serves, unless one of
 * the two versions exports a migration for it (HOTLOAD_MIGRATE).  Before the
 * switch the host proves the migration on a copy: old -> new -> old must give
 * back every kept field, or the build is refused naming the first that did
 * not.  Only declared fields travel; pointers do not (they may point into the
 * old image): keep indexes or handles.  Not for isolated plugins (yet).
 *
 *     typedef struct { int64_t coins; int32_t level; } winter_state_t;
 *     HOTLOAD_STRUCT(winter_state_t);
 *     HOTLOAD_FIELD(winter_state_t, coins, int64_t);
 *     HOTLOAD_FIELD(winter_state_t, level, int32_t);
 *     static winter_state_t state = { .level = 1 };   // level's default
 *     HOTLOAD_STATE(winter_state_t, state);
 *
 * HOTLOAD_MIGRATE(field, fn)
 *   `int fn(int down, const void *from, size_t from_size, void *to, size_t to_size)`
 *   converts the top-level state field `field` between this version's type
 *   and the other version's: down == 0 from the version replaced (upgrade),
 *   down == 1 to the version this one is replaced by (a rollback: the newer
 *   build knows both layouts, Erlang's {down, Vsn}).  Only the newer build's
 *   function is used, and only when the field's declared type differs between
 *   the two builds.  `to` holds the target's initial value.  Return 0; anything else refuses the swap (the running
 *   version keeps serving).  The host runs it on copies first (the proof),
 *   then on the live state during the switch.  In process a crash in it
 *   cannot be caught: it is plugin code, as on_load is. */
typedef int (*hotload_migrate_fn)(int down, const void *from, size_t from_size, void *to,
                                  size_t to_size);

#define HOTLOAD_STATE(T, var) \
    HOTLOAD__ASSERT(HOTLOAD__SAME_TYPE(&(var), T *), \
                    "HOTLOAD_STATE(" #T ", " #var "): " #var " is not a (non-const) variable " \
                    "of type " #T); \
    HOTLOAD_API void *const hotload_state = &(var); \
    HOTLOAD__RECORD_N(hotload__state, HOTLOAD__REC4("state") #T "\x1f" "hotload_state", \
                      sizeof(var), HOTLOAD__ALIGNOF(T))

#define HOTLOAD_MIGRATE(field, fn) \
    HOTLOAD__CHECK(fn, hotload_migrate_fn, \
                   "HOTLOAD_MIGRATE(" #field ", " #fn "): " #fn " is not a function of type " \
                   "int(int down, const void *from, size_t from_size, void *to, size_t to_size)"); \
    HOTLOAD_API int HOTLOAD__CAT(hotload__migrate_, field)(int d, const void *f, size_t fn_, \
                                                           void *t, size_t tn) \
    { return (fn)(d, f, fn_, t, tn); } \
    HOTLOAD__RECORD(HOTLOAD__CAT(hotload__migrate_rec_, field), \
                    HOTLOAD__REC4("migrate") #field "\x1f" "hotload__migrate_" #field)

#endif /* HOTLOAD_H */
