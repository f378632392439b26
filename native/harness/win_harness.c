/*
 * win_harness.c - the Windows loading sequence of hotload, in C, checked step by step.
 *
 * hotload's Windows backend (src/hotload/dl_windows.py) cannot run on a Linux
 * CI machine, but this program can: cross-compiled with mingw-w64 and run
 * under wine, it performs the same Win32 calls in the same order as the
 * Python backend and asserts what the host relies on:
 *
 *   - a hot swap loads a *private, versioned copy* of the DLL (CopyFileW), so
 *     the build can overwrite the source DLL while the copy is loaded, and two
 *     copies of one DLL are two distinct modules with their own statics;
 *   - LoadLibraryExW(LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR | _DEFAULT_DIRS) with
 *     AddDllDirectory(<source dir>) finds the plugin's own dependencies that
 *     sit next to the *source* DLL, not next to the copy;
 *   - the .hotload descriptor can be read from the mapped image (PE headers
 *     walked in memory) and names the same exports as the export table;
 *   - the on_unload/on_load trampolines hand state from copy #1 to copy #2;
 *   - after FreeLibrary, GetModuleHandleExW(UNCHANGED_REFCOUNT) no longer finds
 *     the image (the leak check), and only then can the copy be deleted;
 *   - the GetLastError codes of typical failures, which dl_windows maps to words.
 *
 * Usage:  win_harness.exe SOURCE.dll PRIVATE_DIR [DEP_PLUGIN.dll DEP_NAME.dll]
 *
 *   SOURCE.dll   double_xp built for Windows (native/plugins/double_xp.c)
 *   PRIVATE_DIR  a directory for the versioned copies (created, emptied, removed)
 *   DEP_PLUGIN   optional: a plugin that imports from DEP_NAME.dll, which sits
 *                next to DEP_PLUGIN only, and exports `int32_t dep_answer(void)`
 *                returning 42.
 *
 * Output: one line per step, "ok   <step>: ..." or "FAIL <step>: ...", some
 * "code <step>: <n>" lines for the observed error codes, "note <step>: ..." for
 * a known difference of wine that is reported but not counted, and a closing
 * "win_harness: N passed, M failed".  Exit status 0 only when nothing failed.
 *
 * Build:  x86_64-w64-mingw32-gcc -std=c11 -municode -Wall -Wextra -I native/include \
 *             native/harness/win_harness.c -o win_harness.exe
 */
#define _WIN32_WINNT 0x0A00
#define WIN32_LEAN_AND_MEAN
#include <windows.h>

#include <hotload.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#define LOAD_FLAGS (LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR | LOAD_LIBRARY_SEARCH_DEFAULT_DIRS)
#define MAX_EXPORTS 64
#define NAME_LEN 128

static int passed, failed;

/* ---- reporting ------------------------------------------------------------ */

static void report(int ok, const char *step, const char *fmt, ...)
{
    va_list ap;
    printf("%s %s: ", ok ? "ok  " : "FAIL", step);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    if (ok)
        passed++;
    else
        failed++;
}

/* Prints an observed Win32 error code for the Python test to cross-check. */
static void code_line(const char *step, DWORD code)
{
    printf("code %s: %lu\n", step, (unsigned long)code);
}

static int finish(void)
{
    printf("win_harness: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

/* UTF-8 for printing; rotates between buffers so two can appear in one line. */
static const char *u8(const wchar_t *w)
{
    static char bufs[4][2 * MAX_PATH + 64];
    static int next;
    char *buf = bufs[next++ % 4];
    if (!WideCharToMultiByte(CP_UTF8, 0, w, -1, buf, (int)sizeof bufs[0], NULL, NULL))
        strcpy(buf, "<unprintable path>");
    return buf;
}

/* ---- paths and files ------------------------------------------------------- */

static int full_path(const wchar_t *in, wchar_t *out)
{
    DWORD n = GetFullPathNameW(in, MAX_PATH, out, NULL);
    return n > 0 && n < MAX_PATH;
}

static void dir_of(const wchar_t *path, wchar_t *out)
{
    wcscpy(out, path);
    wchar_t *slash = wcsrchr(out, L'\\');
    if (slash)
        *slash = 0;
}

/* The stem of a DLL's file name: "C:\x\double_xp.dll" -> "double_xp". */
static void stem_of(const wchar_t *path, wchar_t *out)
{
    const wchar_t *base = wcsrchr(path, L'\\');
    wcscpy(out, base ? base + 1 : path);
    wchar_t *dot = wcsrchr(out, L'.');
    if (dot)
        *dot = 0;
}

/* A versioned private copy: PRIVATE\<stem>.v<seq>-<pid>.dll, never overwriting. */
static int make_copy(const wchar_t *source, const wchar_t *private_dir, int seq, wchar_t *out)
{
    wchar_t stem[MAX_PATH];
    stem_of(source, stem);
    _snwprintf(out, MAX_PATH, L"%ls\\%ls.v%d-%lu.dll", private_dir, stem, seq,
               (unsigned long)GetCurrentProcessId());
    out[MAX_PATH - 1] = 0;
    return CopyFileW(source, out, TRUE /* fail if it exists: names are unique */);
}

static unsigned char *read_all(const wchar_t *path, DWORD *size)
{
    HANDLE f = CreateFileW(path, GENERIC_READ, FILE_SHARE_READ, NULL, OPEN_EXISTING, 0, NULL);
    if (f == INVALID_HANDLE_VALUE)
        return NULL;
    DWORD n = GetFileSize(f, NULL), got = 0;
    unsigned char *buf = malloc(n ? n : 1);
    if (buf && !ReadFile(f, buf, n, &got, NULL)) {
        free(buf);
        buf = NULL;
    }
    CloseHandle(f);
    *size = got;
    return buf;
}

/* CREATE_ALWAYS + WriteFile: how a compiler or a copy replaces a file. */
static BOOL write_all(const wchar_t *path, const void *data, DWORD size, DWORD *err)
{
    HANDLE f = CreateFileW(path, GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL, NULL);
    if (f == INVALID_HANDLE_VALUE) {
        *err = GetLastError();
        return FALSE;
    }
    DWORD wrote = 0;
    BOOL ok = WriteFile(f, data, size, &wrote, NULL) && wrote == size;
    *err = ok ? 0 : GetLastError();
    CloseHandle(f);
    return ok;
}

static void delete_step(const wchar_t *path, const char *step)
{
    BOOL ok = DeleteFileW(path);
    DWORD err = ok ? 0 : GetLastError();
    report(ok, step, "DeleteFileW %s (error %lu)", u8(path), (unsigned long)err);
}

/* ---- the loader calls, exactly as dl_windows makes them --------------------- */

/* dl_windows.open_image: AddDllDirectory(search_dir) for the plugin's own
 * dependencies, LoadLibraryExW with the safe search flags, cookie removed. */
static HMODULE open_image(const wchar_t *path, const wchar_t *search_dir, DWORD *err)
{
    DLL_DIRECTORY_COOKIE cookie = NULL;
    DWORD old_mode = 0;
    if (search_dir && !(cookie = AddDllDirectory(search_dir))) {
        *err = GetLastError();
        return NULL;
    }
    SetThreadErrorMode(SEM_FAILCRITICALERRORS | SEM_NOOPENFILEERRORBOX, &old_mode);
    HMODULE h = LoadLibraryExW(path, NULL, LOAD_FLAGS);
    *err = h ? 0 : GetLastError();
    SetThreadErrorMode(old_mode, NULL);
    if (cookie)
        RemoveDllDirectory(cookie);
    return h;
}

/* dl_windows.loader_has: is an image loaded from `path` still in the process? */
static int loader_has(const wchar_t *path)
{
    HMODULE h = NULL;
    return GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT, path, &h) && h;
}

/* dl_windows.image_path */
static int image_path(HMODULE h, wchar_t *out)
{
    DWORD n = GetModuleFileNameW(h, out, MAX_PATH);
    return n > 0 && n < MAX_PATH;
}

/* ---- reading the mapped image ------------------------------------------- */

static const IMAGE_NT_HEADERS *nt_headers(HMODULE m)
{
    const BYTE *base = (const BYTE *)m;
    const IMAGE_DOS_HEADER *dos = (const IMAGE_DOS_HEADER *)base;
    if (dos->e_magic != IMAGE_DOS_SIGNATURE)
        return NULL;
    const IMAGE_NT_HEADERS *nt = (const IMAGE_NT_HEADERS *)(base + dos->e_lfanew);
    return nt->Signature == IMAGE_NT_SIGNATURE ? nt : NULL;
}

/* The in-memory bytes of the section called `name` (at most 8 chars). */
static const char *find_section(HMODULE m, const char *name, DWORD *size)
{
    const IMAGE_NT_HEADERS *nt = nt_headers(m);
    if (!nt)
        return NULL;
    const IMAGE_SECTION_HEADER *sec = IMAGE_FIRST_SECTION(nt);
    size_t len = strlen(name);
    for (WORD i = 0; i < nt->FileHeader.NumberOfSections; i++) {
        if (memcmp(sec[i].Name, name, len) == 0 && (len == 8 || sec[i].Name[len] == 0)) {
            *size = sec[i].Misc.VirtualSize;
            return (const char *)m + sec[i].VirtualAddress;
        }
    }
    return NULL;
}

struct descriptor {
    char name[NAME_LEN], version[NAME_LEN];
    char exports[MAX_EXPORTS][NAME_LEN];
    int n_exports, has_on_load, has_on_unload;
};

/* The same record format that hotload/descriptor.py parses:
 * "hotload" US abi US kind US field [US field] NUL, US = 0x1f. */
static int parse_descriptor(const char *blob, DWORD size, struct descriptor *d, char *why)
{
    memset(d, 0, sizeof *d);
    DWORD pos = 0;
    while (pos < size) {
        const char *rec = blob + pos;
        size_t len = strnlen(rec, size - pos);
        pos += (DWORD)len + 1;
        if (len == 0)
            continue;
        char copy[512], *fields[6];
        int n = 0;
        if (len >= sizeof copy) {
            strcpy(why, "record too long");
            return 0;
        }
        memcpy(copy, rec, len);
        copy[len] = 0;
        for (char *p = copy, *us; n < 6; p = us + 1) {
            fields[n++] = p;
            if (!(us = strchr(p, '\x1f')))
                break;
            *us = 0;
        }
        if (n < 4 || strcmp(fields[0], "hotload") != 0) {
            sprintf(why, "malformed record '%.60s'", copy);
            return 0;
        }
        if (atoi(fields[1]) < 1 || atoi(fields[1]) > HOTLOAD_ABI_VERSION) {
            sprintf(why, "ABI %s, harness reads ABI 1 to %d", fields[1], HOTLOAD_ABI_VERSION);
            return 0;
        }
        if (!strcmp(fields[2], "plugin") && n == 5) {
            snprintf(d->name, NAME_LEN, "%s", fields[3]);
            snprintf(d->version, NAME_LEN, "%s", fields[4]);
        } else if (!strcmp(fields[2], "export") && n == 5 && d->n_exports < MAX_EXPORTS) {
            snprintf(d->exports[d->n_exports++], NAME_LEN, "%s", fields[3]);
        } else if (!strcmp(fields[2], "on_load")) {
            d->has_on_load = 1;
        } else if (!strcmp(fields[2], "on_unload")) {
            d->has_on_unload = 1;
        }
    }
    if (!d->name[0]) {
        strcpy(why, "no plugin record");
        return 0;
    }
    return 1;
}

/* The names in the mapped image's export table, comma-separated into `out`. */
static int export_names(HMODULE m, char *out, size_t out_len)
{
    const IMAGE_NT_HEADERS *nt = nt_headers(m);
    const BYTE *base = (const BYTE *)m;
    out[0] = 0;
    if (!nt)
        return -1;
    const IMAGE_DATA_DIRECTORY *dir = &nt->OptionalHeader.DataDirectory[IMAGE_DIRECTORY_ENTRY_EXPORT];
    if (!dir->VirtualAddress)
        return 0;
    const IMAGE_EXPORT_DIRECTORY *exp = (const IMAGE_EXPORT_DIRECTORY *)(base + dir->VirtualAddress);
    const DWORD *names = (const DWORD *)(base + exp->AddressOfNames);
    for (DWORD i = 0; i < exp->NumberOfNames; i++) {
        if (i)
            strncat(out, ",", out_len - strlen(out) - 1);
        strncat(out, (const char *)(base + names[i]), out_len - strlen(out) - 1);
    }
    return (int)exp->NumberOfNames;
}

static int in_list(const char *csv, const char *name)
{
    size_t len = strlen(name);
    for (const char *p = csv; (p = strstr(p, name)) != NULL; p += len)
        if ((p == csv || p[-1] == ',') && (p[len] == ',' || p[len] == 0))
            return 1;
    return 0;
}

/* ---- double_xp's exports, as the host would call them ------------------- */

typedef int64_t (*reward_fn)(int64_t, int32_t);
typedef int64_t (*count_fn)(void);

struct xp {
    reward_fn reward;
    count_fn grant_count, total_xp;
    hotload_on_unload_fn on_unload;
    hotload_on_load_fn on_load;
};

static int bind_xp(HMODULE h, struct xp *x)
{
    x->reward = (reward_fn)(void (*)(void))GetProcAddress(h, "reward");
    x->grant_count = (count_fn)(void (*)(void))GetProcAddress(h, "grant_count");
    x->total_xp = (count_fn)(void (*)(void))GetProcAddress(h, "total_xp");
    x->on_unload = (hotload_on_unload_fn)(void (*)(void))GetProcAddress(h, "hotload_on_unload");
    x->on_load = (hotload_on_load_fn)(void (*)(void))GetProcAddress(h, "hotload_on_load");
    return x->reward && x->grant_count && x->total_xp && x->on_unload && x->on_load;
}

/* ---- the sequence -------------------------------------------------------- */

static void failure_codes(const wchar_t *private_dir, const unsigned char *dll, DWORD dll_size)
{
    wchar_t path[MAX_PATH];
    DWORD err = 0;
    HMODULE h;

    _snwprintf(path, MAX_PATH, L"%ls\\notes.dll", private_dir);
    static const char text[] = "these are release notes, not a DLL\n";
    write_all(path, text, sizeof text - 1, &err);
    h = open_image(path, NULL, &err);
    report(h == NULL, "load_text_file", "LoadLibraryExW refused a text file named .dll");
    code_line("load_text_file", err);
    if (h)
        FreeLibrary(h);
    DeleteFileW(path);

    /* glibc can die of SIGBUS on a truncated .so; Windows must return an error. */
    _snwprintf(path, MAX_PATH, L"%ls\\truncated.dll", private_dir);
    write_all(path, dll, dll_size / 2, &err);
    h = open_image(path, NULL, &err);
    report(h == NULL, "load_truncated", "LoadLibraryExW refused the first %lu of %lu bytes",
           (unsigned long)(dll_size / 2), (unsigned long)dll_size);
    code_line("load_truncated", err);
    if (h)
        FreeLibrary(h);
    DeleteFileW(path);

    _snwprintf(path, MAX_PATH, L"%ls\\absent.dll", private_dir);
    h = open_image(path, NULL, &err);
    report(h == NULL, "load_missing_file", "LoadLibraryExW of a file that does not exist");
    code_line("load_missing_file", err);
    if (h)
        FreeLibrary(h);
}

/* wine's ntdll exports wine_get_version; Windows' does not. */
static int under_wine(void)
{
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    return ntdll && GetProcAddress(ntdll, "wine_get_version") != NULL;
}

/* Returns 1 when the failed attempt's copy could not be deleted under wine (a known
 * wine difference, see below), so the caller knows the private dir is not empty. */
static int dependency_steps(const wchar_t *dep_plugin, const wchar_t *dep_name,
                            const wchar_t *private_dir)
{
    wchar_t failed_copy[MAX_PATH], copy[MAX_PATH], src_dir[MAX_PATH];
    DWORD err = 0;
    int leftover = 0;
    dir_of(dep_plugin, src_dir);

    /* Without the source directory on the search path the dependency is not found. */
    if (!make_copy(dep_plugin, private_dir, 0, failed_copy)) {
        report(0, "dep_copy", "CopyFileW %s failed: %lu", u8(dep_plugin), GetLastError());
        return 0;
    }
    HMODULE h = open_image(failed_copy, NULL, &err);
    report(h == NULL && err == ERROR_MOD_NOT_FOUND, "dep_without_search_dir",
           "the copy alone cannot find %s (error %lu)", u8(dep_name), (unsigned long)err);
    code_line("dep_without_search_dir", err);
    if (h)
        FreeLibrary(h);
    report(!loader_has(failed_copy), "dep_failed_not_listed", "the failed load left no module behind");
    if (DeleteFileW(failed_copy)) {
        report(1, "dep_delete_failed_copy", "the failed attempt's copy is deletable at once");
    } else {
        err = GetLastError();
        if (under_wine()) {
            /* wine 8 keeps the image view of a load that failed on a missing
             * dependency until the process exits (a later load of the same DLL
             * gets another base address), so the file stays locked.  Windows
             * unmaps it; the host must tolerate an undeletable copy anyway. */
            printf("note dep_delete_failed_copy: wine keeps the failed image mapped, delete refused "
                   "(error %lu); not counted\n", (unsigned long)err);
            leftover = 1;
        } else {
            report(0, "dep_delete_failed_copy", "DeleteFileW after a failed load (error %lu)",
                   (unsigned long)err);
        }
        code_line("dep_delete_failed_copy", err);
    }

    if (!make_copy(dep_plugin, private_dir, 1, copy)) {
        report(0, "dep_copy", "CopyFileW %s failed: %lu", u8(dep_plugin), GetLastError());
        return leftover;
    }
    h = open_image(copy, src_dir, &err);
    report(h != NULL, "dep_with_search_dir", "AddDllDirectory(%s) lets the copy load (error %lu)",
           u8(src_dir), (unsigned long)err);
    if (!h) {
        DeleteFileW(copy);
        return leftover;
    }
    typedef int32_t (*answer_fn)(void);
    answer_fn answer = (answer_fn)(void (*)(void))GetProcAddress(h, "dep_answer");
    int32_t got = answer ? answer() : -1;
    report(got == 42, "dep_call", "dep_answer() through %s = %d", u8(dep_name), (int)got);
    report(loader_has(dep_name), "dep_loaded", "%s is loaded as the plugin's dependency", u8(dep_name));
    FreeLibrary(h);
    report(!loader_has(copy), "dep_unloaded", "the plugin copy left memory after FreeLibrary");
    report(!loader_has(dep_name), "dep_released", "%s left memory with its only user", u8(dep_name));
    delete_step(copy, "dep_delete_copy");
    return leftover;
}

int wmain(int argc, wchar_t **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0); /* every line out before a crash, if any */
    if (argc != 3 && argc != 5) {
        fprintf(stderr, "usage: win_harness SOURCE.dll PRIVATE_DIR [DEP_PLUGIN.dll DEP_NAME.dll]\n");
        return 2;
    }
    wchar_t source[MAX_PATH], private_dir[MAX_PATH], src_dir[MAX_PATH];
    wchar_t copy1[MAX_PATH], copy2[MAX_PATH], loaded[MAX_PATH];
    DWORD err = 0, dll_size = 0;
    LARGE_INTEGER freq, t0, t1;
    QueryPerformanceFrequency(&freq);

    if (!full_path(argv[1], source) || !full_path(argv[2], private_dir)) {
        report(0, "setup", "cannot make full paths of the arguments");
        return finish();
    }
    dir_of(source, src_dir);
    unsigned char *dll = read_all(source, &dll_size);
    CreateDirectoryW(private_dir, NULL);
    report(dll != NULL && GetFileAttributesW(private_dir) != INVALID_FILE_ATTRIBUTES, "setup",
           "source %s (%lu bytes), private dir %s", u8(source), (unsigned long)dll_size,
           u8(private_dir));
    if (!dll)
        return finish();

    /* 1. versioned private copy, loaded with the safe search flags */
    BOOL copied = make_copy(source, private_dir, 1, copy1);
    report(copied, "copy1", "CopyFileW -> %s", u8(copy1));
    QueryPerformanceCounter(&t0);
    HMODULE h1 = open_image(copy1, src_dir, &err);
    QueryPerformanceCounter(&t1);
    report(h1 != NULL, "load1", "LoadLibraryExW(copy1, 0x%x) = %p in %.2f ms (error %lu)",
           LOAD_FLAGS, (void *)h1, 1000.0 * (double)(t1.QuadPart - t0.QuadPart) / (double)freq.QuadPart,
           (unsigned long)err);
    if (!h1)
        return finish();
    int have_path = image_path(h1, loaded);
    report(have_path && _wcsicmp(loaded, copy1) == 0, "image_path1", "GetModuleFileNameW = %s",
           have_path ? u8(loaded) : "(none)");
    report(loader_has(copy1), "loader_has1", "GetModuleHandleExW(UNCHANGED_REFCOUNT) finds copy1");

    /* 2. the descriptor from the mapped image, checked against the export table */
    struct descriptor d;
    char why[128] = "no .hotload section", exports[2048];
    DWORD sec_size = 0;
    const char *sec = find_section(h1, ".hotload", &sec_size);
    int have_desc = sec && parse_descriptor(sec, sec_size, &d, why);
    if (have_desc) {
        char list[1024] = "";
        for (int i = 0; i < d.n_exports; i++) {
            if (i)
                strcat(list, ",");
            strncat(list, d.exports[i], sizeof list - strlen(list) - 1);
        }
        report(1, "descriptor", "name=%s version=%s exports=%s on_load=%d on_unload=%d", d.name,
               d.version, list, d.has_on_load, d.has_on_unload);
    } else {
        report(0, "descriptor", "%s", why);
    }
    int n_names = export_names(h1, exports, sizeof exports);
    report(n_names > 0, "export_table", "%s", exports);
    int all_found = have_desc;
    for (int i = 0; have_desc && i < d.n_exports; i++)
        if (!in_list(exports, d.exports[i]) || !GetProcAddress(h1, d.exports[i])) {
            report(0, "descriptor_exports", "%s is described but not exported", d.exports[i]);
            all_found = 0;
        }
    if (all_found)
        report(1, "descriptor_exports", "every described export resolves with GetProcAddress");
    SetLastError(0);
    FARPROC none = GetProcAddress(h1, "no_such_export");
    err = GetLastError();
    report(none == NULL, "missing_symbol", "GetProcAddress(no_such_export) = NULL");
    code_line("missing_symbol", err);

    /* 3. calls into copy #1 */
    struct xp x1, x2;
    if (!bind_xp(h1, &x1)) {
        report(0, "bind1", "double_xp exports (reward, grant_count, total_xp, hooks) not found");
        return finish();
    }
    int64_t a = x1.reward(100, 10), b = x1.reward(50, 1);
    report(a == 210 && b == 100 && x1.grant_count() == 2 && x1.total_xp() == 310, "call1",
           "reward(100, 10) = %lld, reward(50, 1) = %lld, grants %lld, xp %lld", (long long)a,
           (long long)b, (long long)x1.grant_count(), (long long)x1.total_xp());

    /* 4. a second copy of the same DLL is a distinct module with its own statics */
    copied = make_copy(source, private_dir, 2, copy2);
    report(copied, "copy2", "CopyFileW -> %s", u8(copy2));
    HMODULE h2 = open_image(copy2, src_dir, &err);
    report(h2 != NULL && h2 != h1, "load2", "copy2 = %p, copy1 = %p: distinct modules", (void *)h2,
           (void *)h1);
    if (!h2 || !bind_xp(h2, &x2))
        return finish();
    report(x2.grant_count() == 0 && x1.grant_count() == 2, "separate_state",
           "copy2 starts at 0 grants while copy1 has 2");

    /* 5. state handover through the trampolines */
    const void *state = NULL;
    size_t size = 0;
    int rc = x1.on_unload(&state, &size);
    void *blob = malloc(size ? size : 1);
    if (state && size)
        memcpy(blob, state, size); /* the host copies before it returns */
    report(rc == 0 && state != NULL && size > 0, "on_unload1", "hotload_on_unload = %d, %zu bytes", rc,
           size);
    int refused = x2.on_load(d.version, blob, size - 1);
    report(refused != 0, "on_load2_refuses", "hotload_on_load with a wrong-sized blob = %d", refused);
    rc = x2.on_load(d.version, blob, size);
    report(rc == 0 && x2.grant_count() == 2 && x2.total_xp() == 310, "on_load2",
           "hotload_on_load = %d, copy2 now has %lld grants, %lld xp", rc, (long long)x2.grant_count(),
           (long long)x2.total_xp());
    free(blob);
    report(x1.reward(1, 1) == 2, "snapshot_not_destructor", "copy1 still serves after on_unload");

    /* 6. the source may be overwritten while copies are loaded; a loaded copy may not */
    report(write_all(source, dll, dll_size, &err), "overwrite_source",
           "rewrote %s while both copies are loaded (error %lu)", u8(source), (unsigned long)err);
    HANDLE f = CreateFileW(copy1, GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                           NULL, OPEN_EXISTING, 0, NULL);
    err = f == INVALID_HANDLE_VALUE ? GetLastError() : 0;
    report(f == INVALID_HANDLE_VALUE && (err == ERROR_SHARING_VIOLATION || err == ERROR_ACCESS_DENIED),
           "overwrite_loaded_copy", "opening the loaded copy for writing fails (error %lu)",
           (unsigned long)err);
    code_line("overwrite_loaded_copy", err);
    if (f != INVALID_HANDLE_VALUE)
        CloseHandle(f);
    BOOL replaced = write_all(copy1, dll, dll_size, &err);
    report(!replaced, "replace_loaded_copy", "CREATE_ALWAYS over the loaded copy fails (error %lu)",
           (unsigned long)err);
    code_line("replace_loaded_copy", err);
    BOOL deleted = DeleteFileW(copy1);
    err = deleted ? 0 : GetLastError();
    report(!deleted, "delete_loaded_copy", "DeleteFileW of the loaded copy fails (error %lu)",
           (unsigned long)err);
    code_line("delete_loaded_copy", err);
    report(x2.reward(10, 1) == 20 && x1.reward(10, 1) == 20, "still_serving",
           "both copies still answer after the source was rewritten");

    /* 7. references: a second LoadLibraryExW of the same path is the same module */
    HMODULE again = open_image(copy1, src_dir, &err);
    report(again == h1, "same_path_same_module", "loading copy1 again returns %p (refcount 2)",
           (void *)again);
    if (again)
        FreeLibrary(again);
    report(loader_has(copy1), "refcount", "after one FreeLibrary of two, copy1 is still loaded");

    /* 8. unload and the leak check */
    report(FreeLibrary(h1) != 0, "free1", "FreeLibrary(copy1)");
    report(!loader_has(copy1), "unloaded1", "GetModuleHandleExW no longer finds copy1: it left memory");
    report(loader_has(copy2) && x2.reward(1, 1) == 2, "copy2_unaffected", "copy2 still loaded and serving");
    report(FreeLibrary(h2) != 0, "free2", "FreeLibrary(copy2)");
    report(!loader_has(copy2), "unloaded2", "copy2 left memory");
    delete_step(copy1, "delete_copy1");
    delete_step(copy2, "delete_copy2");

    /* 9. failure codes that dl_windows turns into words */
    failure_codes(private_dir, dll, dll_size);
    free(dll);

    int leftover = 0;
    if (argc == 5) {
        wchar_t dep_plugin[MAX_PATH];
        if (full_path(argv[3], dep_plugin))
            leftover = dependency_steps(dep_plugin, argv[4], private_dir);
        else
            report(0, "dep_setup", "cannot make a full path of %s", u8(argv[3]));
    }
    if (leftover)
        printf("note cleanup: %s kept for the failed attempt's copy (see above)\n", u8(private_dir));
    else
        report(RemoveDirectoryW(private_dir), "cleanup", "removed %s: no copy left behind",
               u8(private_dir));
    return finish();
}
