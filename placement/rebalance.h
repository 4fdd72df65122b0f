/* Online rebalancing's options, checked alike for epmoe run and for plan
 * eval's replay of it (rebalance.c). */
#ifndef EPM_REBALANCE_H
#define EPM_REBALANCE_H

#include "core.h"
#include "epmoe/placement.h"

/* A run that starts from p rebalancing every `interval` passes (> 0) over a
 * window from 0 (the interval) to it, with `slots` experts a rank (0: p's
 * most; from that and ceil(experts / ranks) to the experts), min_gain in
 * [0, 1) and each placement in service `lag` passes after its boundary (0:
 * at once; below the interval, so that one is in flight at a time):
 * *slots_out the slots it holds. The errors name the options as `epmoe run`
 * flags, with `fields` 1 as plan eval's option fields, with 2 as run flags
 * where the slots came from --redundant-experts. */
epm_status epm_eplb_check(const epm_placement *p, int interval, int window, int slots, double min_gain, int lag,
                          int fields, int *slots_out);

#endif
