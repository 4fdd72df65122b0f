/* RoPE's frequencies from the config: theta^(-2j/dim), or YaRN's blend of
 * interpolated (divided by the factor) and extrapolated ones. The blend, the
 * attention factor on cos and sin and DeepSeek's softmax factor follow
 * DeepSeek's inference code, vLLM and transformers, which agree on them for
 * DeepSeek-V3 (tests/fixtures/hf_reference.py computes them independently). */
#include <math.h>

#include "epmoe/model.h"

static double get_mscale(double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0; }

/* the dimension whose wavelength makes `rotations` turns over the original context */
static double corr_dim(double rotations, int dim, double base, double orig)
{
    return dim * log(orig / (rotations * 2 * M_PI)) / (2 * log(base));
}

void epm_model_rope_freqs(const epm_model_config *c, int dim, double *inv, double *cs_scale, double *softmax_scale)
{
    for (int j = 0; j < dim / 2; j++)
        inv[j] = pow(c->rope_theta, -2.0 * j / dim);
    *cs_scale = 1;
    *softmax_scale = 1;
    if (!(c->yarn_factor > 0))
        return;
    double f = c->yarn_factor, lo = corr_dim(c->yarn_beta_fast, dim, c->rope_theta, c->yarn_original_max),
           hi = corr_dim(c->yarn_beta_slow, dim, c->rope_theta, c->yarn_original_max);
    if (c->yarn_truncate) {
        lo = floor(lo);
        hi = ceil(hi);
    }
    lo = lo > 0 ? lo : 0;
    hi = hi < dim - 1 ? hi : dim - 1;
    if (lo == hi)
        hi += 0.001;
    for (int j = 0; j < dim / 2; j++) {
        double ramp = (j - lo) / (hi - lo);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        inv[j] = inv[j] / f * ramp + inv[j] * (1 - ramp);
    }
    if (c->yarn_attn_factor >= 0)
        *cs_scale = c->yarn_attn_factor;
    /* transformers takes the ratio when both are set; DeepSeek's V2 code
     * always does (get_mscale(f, 0) = 1) */
    else if (c->arch == EPM_MODEL_DEEPSEEKV2 || (c->yarn_mscale != 0 && c->yarn_mscale_all_dim != 0))
        *cs_scale = get_mscale(f, c->yarn_mscale) / get_mscale(f, c->yarn_mscale_all_dim);
    else
        *cs_scale = get_mscale(f, 1.0);
    if (c->mla && c->yarn_mscale_all_dim != 0) {
        double m = get_mscale(f, c->yarn_mscale_all_dim);
        *softmax_scale = m * m;
    }
}
