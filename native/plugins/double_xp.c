/*
 * double_xp: a limited-time live-ops event that multiplies experience.
 *
 * Stateful: it counts grants and the XP it has handed out, and carries both
 * across a hot swap through HOTLOAD_ON_UNLOAD / HOTLOAD_ON_LOAD.  Edit
 * MULTIPLIER, rebuild, and the host swaps it in without losing a grant.
 */
#include <hotload.h>
#include <stdatomic.h>
#include <string.h>

#define MULTIPLIER 2
#define STATE_LAYOUT 1            /* bump when struct xp_state changes */

HOTLOAD_PLUGIN("double_xp", "1.0.0");

struct xp_state {
    uint32_t layout;
    uint32_t multiplier;
    int64_t grants;
    int64_t xp_granted;
};

static _Atomic int64_t grants;
static _Atomic int64_t xp_granted;
static struct xp_state snapshot;

/* XP for a player of `level` who earned `base` XP. */
HOTLOAD_API int64_t reward(int64_t base, int32_t level)
{
    int64_t xp = base * MULTIPLIER + (level >= 10 ? base / 10 : 0);
    atomic_fetch_add(&grants, 1);
    atomic_fetch_add(&xp_granted, xp);
    return xp;
}
HOTLOAD_EXPORT(reward, int64_t, (int64_t, int32_t));

HOTLOAD_API int64_t grant_count(void) { return atomic_load(&grants); }
HOTLOAD_EXPORT(grant_count, int64_t, (void));

HOTLOAD_API int64_t total_xp(void) { return atomic_load(&xp_granted); }
HOTLOAD_EXPORT(total_xp, int64_t, (void));

HOTLOAD_API int32_t multiplier(void) { return MULTIPLIER; }
HOTLOAD_EXPORT(multiplier, int32_t, (void));

static int save_state(const void **state, size_t *size)
{
    snapshot = (struct xp_state){STATE_LAYOUT, MULTIPLIER, atomic_load(&grants),
                                 atomic_load(&xp_granted)};
    *state = &snapshot;
    *size = sizeof snapshot;
    return 0;
}
HOTLOAD_ON_UNLOAD(save_state);

static int restore_state(const char *prev_version, const void *state, size_t size)
{
    (void)prev_version;
    if (state == NULL)
        return 0;                               /* first load: start from zero */
    struct xp_state s;
    if (size != sizeof s)
        return 1;                               /* unknown layout: refuse, old keeps serving */
    memcpy(&s, state, sizeof s);
    if (s.layout != STATE_LAYOUT)
        return 2;
    atomic_store(&grants, s.grants);
    atomic_store(&xp_granted, s.xp_granted);
    return 0;
}
HOTLOAD_ON_LOAD(restore_state);
