#include "hier_route.h"

int epm_hier_gateway(int src, int P, int dst)
{
    return dst / P == src / P ? dst : src / P * P + dst % P;
}

void epm_hier_gateways(int src, int P, int n, const int *dest, uint64_t key, int *gw)
{
    const int mine = src / P;
    for (int j = 0; j < n; j++)
        gw[j] = dest[j] >= 0 && dest[j] / P == mine ? dest[j] : -1;
    for (int j = 0; j < n; j++) {
        const int nd = dest[j] >= 0 ? dest[j] / P : mine;
        if (nd == mine)
            continue;
        int first = -1;
        for (int a = 0; a < j && first < 0; a++)
            if (dest[a] >= 0 && dest[a] / P == nd)
                first = a;
        if (first >= 0) {
            gw[j] = gw[first];
            continue;
        }
        int cnt = 0, chan = -1;
        for (int a = j; a < n; a++)
            if (dest[a] >= 0 && dest[a] / P == nd) {
                cnt++;
                if (dest[a] % P == src % P)
                    chan = src % P;
            }
        /* one already receiving: a slot before j holds every rank this hop reaches so far */
        for (int a = j; a < n && chan < 0; a++)
            if (dest[a] >= 0 && dest[a] / P == nd)
                for (int b = 0; b < n && chan < 0; b++)
                    if (gw[b] == mine * P + dest[a] % P)
                        chan = dest[a] % P;
        for (int a = j, pick = (int)((key + (uint64_t)nd) % (uint64_t)cnt); a < n && chan < 0; a++)
            if (dest[a] >= 0 && dest[a] / P == nd && pick-- == 0)
                chan = dest[a] % P;
        gw[j] = mine * P + chan;
    }
}
