/* epmoe: distributed expert-parallel Mixture-of-Experts inference. */
#ifndef EPMOE_H
#define EPMOE_H

#include "epmoe/cluster.h"
#include "epmoe/eval.h"
#include "epmoe/placement.h"
#include "epmoe/plan.h"
#include "epmoe/status.h"
#include "epmoe/trace.h"
#include "epmoe/types.h"

#endif
