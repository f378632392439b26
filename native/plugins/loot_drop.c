/*
 * loot_drop: stateless reward rules for an event's loot boxes.
 *
 * Pure functions, no state hooks: a swap needs no quiesce and no handover.
 */
#include <hotload.h>

HOTLOAD_PLUGIN("loot_drop", "1.0.0");

/* Rarity tier (0 common .. 3 legendary) for a roll in [0, 9999] and a luck bonus. */
HOTLOAD_API int32_t rarity(int32_t roll, int32_t luck)
{
    int32_t r = roll + luck * 25;
    if (r >= 9900) return 3;
    if (r >= 9000) return 2;
    if (r >= 6000) return 1;
    return 0;
}
HOTLOAD_EXPORT(rarity, int32_t, (int32_t, int32_t));

/* Sum of the gem values in `gems[0..n)`, doubled during the event. */
HOTLOAD_API int64_t gem_value(const int32_t *gems, size_t n)
{
    int64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += gems[i];
    return total * 2;
}
HOTLOAD_EXPORT(gem_value, int64_t, (const int32_t *, size_t));
