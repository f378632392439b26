/*
 * activity: live-ops activity logic written only against hotload.h.
 *
 * It reads the host's player_t, calls three host services (grant_item,
 * send_mail, log) and handles two events (on_player_login, on_tick) by
 * exporting them.  Players are host objects: player_t.id is a handle the
 * host resolves in its services.  The total it granted is carried across a
 * hot swap.  Edit LOGIN_REWARD (or the rules), save, and the host swaps it.
 */
#include <hotload.h>
#include <stdatomic.h>
#include <string.h>

#define LOGIN_REWARD 2
#define STATE_LAYOUT 1            /* bump when struct activity_state changes */

HOTLOAD_PLUGIN("activity", "1.0.0");

typedef struct { int64_t id; int32_t level; char name[16]; } player_t;
HOTLOAD_STRUCT(player_t);
HOTLOAD_FIELD(player_t, id, int64_t);
HOTLOAD_FIELD(player_t, level, int32_t);
HOTLOAD_FIELD(player_t, name, char[16]);

HOTLOAD_IMPORT(grant_item, int32_t, (int64_t player, const char *item, int32_t count));
HOTLOAD_IMPORT(send_mail, int32_t, (int64_t player, const char *subject));
HOTLOAD_IMPORT(log, void, (const char *line));

struct activity_state {
    uint32_t layout;
    uint32_t login_reward;
    int64_t granted;
};

static _Atomic int64_t granted;
static struct activity_state snapshot;

/* Grant `count` of `item`; the host returns what it granted (its error value, -1, if not). */
static int32_t grant(int64_t player, const char *item, int32_t count)
{
    if (grant_item(player, item, count) != count)
        return 0;
    atomic_fetch_add(&granted, count);
    return count;
}

/* Event: a player logs in.  Veterans (level 30+) get one more crate and a mail. */
HOTLOAD_API int32_t on_player_login(const player_t *p)
{
    int32_t veteran = p->level >= 30;
    if (veteran)
        send_mail(p->id, "welcome back, veteran");
    return grant(p->id, "login_crate", LOGIN_REWARD + veteran);
}
HOTLOAD_EXPORT(on_player_login, int32_t, (const player_t *));

/* Event: a server tick for one player: a gem every 20th tick, a log line every 500th. */
HOTLOAD_API int32_t on_tick(int64_t player, int32_t tick)
{
    if (tick % 500 == 0)
        log("activity: tick");
    return tick % 20 == 0 ? grant(player, "event_gem", 1) : 0;
}
HOTLOAD_EXPORT(on_tick, int32_t, (int64_t, int32_t));

HOTLOAD_API int32_t login_reward(void) { return LOGIN_REWARD; }
HOTLOAD_EXPORT(login_reward, int32_t, (void));

HOTLOAD_API int64_t total_granted(void) { return atomic_load(&granted); }
HOTLOAD_EXPORT(total_granted, int64_t, (void));

static int save(const void **state, size_t *size)
{
    snapshot.layout = STATE_LAYOUT;
    snapshot.login_reward = LOGIN_REWARD;
    snapshot.granted = atomic_load(&granted);
    *state = &snapshot;
    *size = sizeof snapshot;
    return 0;
}
HOTLOAD_ON_UNLOAD(save);

static int restore(const char *prev_version, const void *state, size_t size)
{
    struct activity_state s;
    (void)prev_version;
    if (state == NULL)
        return 0;                  /* first load */
    if (size != sizeof s)
        return 1;                  /* a layout this build does not know */
    memcpy(&s, state, sizeof s);
    if (s.layout != STATE_LAYOUT)
        return 1;
    atomic_store(&granted, s.granted);
    return 0;
}
HOTLOAD_ON_LOAD(restore);

/* Services are stand-ins (returning -1) in the preflight worker: check the rules only. */
static int self_test(void)
{
    player_t p = { 0, 40, "vera" };
    if (hotload_in_preflight())
        return on_player_login(&p) == 0 ? 0 : 1;   /* the stand-in refused the grant */
    return 0;
}
HOTLOAD_SELF_TEST(self_test);
