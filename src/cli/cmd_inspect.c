/* mpass inspect CKPT: what a checkpoint (file or diffusers folder) is and whether mpass can use it. */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "core/context.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/openclip.h"
#include "models/sd.h"
#include "models/unet.h"
#include "models/vae.h"

/* Tensors real SD 1.x files carry besides the three models; they are expected, not "unexpected". */
static bool known_extra(const char *name) {
  static const char *const extras[] = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                                       "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                                       "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                                       "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
                                       "logvar", "cond_stage_model.transformer.text_model.embeddings.position_ids",
                                       /* SDXL files */
                                       "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
                                       "conditioner.embedders.1.model.logit_scale"};
  for (size_t i = 0; i < sizeof extras / sizeof *extras; i++)
    if (strcmp(name, extras[i]) == 0) return true;
  return strncmp(name, "model_ema.", 10) == 0 || strncmp(name, "first_stage_model.loss.", 23) == 0;
}

enum { N_PARTS = 5 };
static const char *const components[N_PARTS][2] = {{"UNet", MP_PREFIX_UNET},
                                                   {"VAE", MP_PREFIX_VAE},
                                                   {"text encoder", MP_PREFIX_CLIP},
                                                   {"text enc. 1", MP_PREFIX_XL_CLIP},
                                                   {"text enc. 2", MP_PREFIX_XL_OPENCLIP}};

/* One "check PART: ..." line for binding a model part to the file's tensors; frees e; true if it failed. */
static bool report_check(const char *part, mp_error *e) {
  const bool failed = e != NULL;
  printf("check %s%s\n", part, failed ? mp_error_message(e) : "all tensors present with the expected shapes");
  mp_error_free(e);
  return failed;
}

int cmd_inspect(mpass_ctx *ctx, int argc, char **argv) {
  (void)ctx;
  if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    printf("usage: mpass inspect CKPT [--tensors]\n"
           "  model family, dtypes, parameter counts per component and a key check of a checkpoint;\n"
           "  --tensors also lists every tensor\n");
    return 0;
  }
  bool list = argc == 3 && strcmp(argv[2], "--tensors") == 0;
  if (argc != 2 && !list) {
    fprintf(stderr, "usage: mpass inspect CKPT [--tensors]\n");
    return 2;
  }
  mp_weights *w;
  mp_error *e = mp_weights_open(argv[1], &w);
  if (e) return cli_fail("inspect", e);

  size_t n = mp_weights_count(w);
  long long params[N_PARTS] = {0}, other = 0, dtype_count[MP_DTYPE_COUNT] = {0};
  size_t unexpected = 0;
  for (size_t i = 0; i < n; i++) {
    const mp_weight *t = mp_weights_at(w, i);
    dtype_count[t->t.dtype]++;
    int comp = -1;
    for (int k = 0; k < N_PARTS; k++)
      if (strncmp(t->name, components[k][1], strlen(components[k][1])) == 0) comp = k;
    if (comp >= 0 && !known_extra(t->name))
      params[comp] += mp_tensor_numel(&t->t);
    else if (!known_extra(t->name))
      other += mp_tensor_numel(&t->t), unexpected++;
    if (list) {
      char sb[128];
      printf("  %s %s %s\n", t->name, mp_dtype_name(t->t.dtype), mp_shape_str(t->t.ndim, t->t.shape, sb, sizeof sb));
    }
  }
  printf("file:        %s\n", argv[1]);
  printf("tensors:     %zu\n", n);
  printf("dtypes:     ");
  for (int d = 0; d < MP_DTYPE_COUNT; d++)
    if (dtype_count[d]) printf(" %s×%lld", mp_dtype_name((mp_dtype)d), dtype_count[d]);
  printf("\n");
  for (int k = 0; k < N_PARTS; k++)
    if (params[k] || k < 2) printf("%-13s%lld parameters\n", components[k][0], params[k]);

  mp_sd_config cfg;
  e = mp_sd_config_detect(w, NULL, &cfg);
  printf("family:      %s\n", e && cfg.family == MP_FAMILY_UNKNOWN ? "not recognised" : mp_family_name(cfg.family));
  int rc = 0;
  if (e) {
    printf("problem:     %s\n", mp_error_message(e));
    mp_error_free(e);
    rc = 1;
  } else {
    const mp_unet_config *u = &cfg.unet;
    printf("UNet:        in %d, out %d, channels %d, mult", u->in_channels, u->out_channels, u->model_channels);
    for (int l = 0; l < u->n_levels; l++) printf(" %d%s", u->channel_mult[l], u->attention_at_level[l] ? "*" : "");
    printf(" (* = attention), %d res blocks, context %d%s\n", u->num_res_blocks, u->context_dim,
           cfg.inpainting ? ", inpainting (9-channel input)" : "");
    if (cfg.family == MP_FAMILY_SDXL) {
      printf("             transformer depth per level");
      for (int l = 0; l < u->n_levels; l++) printf(" %d", u->attention_at_level[l] ? mp_unet_level_depth(u, l) : 0);
      printf(", middle %d; label vector %d (pooled %d + 6 x %d)\n", mp_unet_mid_depth(u), u->adm_in_channels,
             cfg.clip2.projection_dim, cfg.time_id_dim);
    }
    printf("VAE:         channels %d, %d levels, z %d\n", cfg.vae.ch, cfg.vae.n_levels, cfg.vae.z_channels);
    printf("VAE scale:   %g\n", cfg.scale_factor);
    printf("text:        hidden %d, %d layers, %d heads, vocab %d\n", cfg.clip.hidden, cfg.clip.layers, cfg.clip.heads,
           cfg.clip.vocab_size);
    if (cfg.family == MP_FAMILY_SDXL)
      printf("text 2:      OpenCLIP, hidden %d, %d layers, %d heads, MLP %d, projection %d\n", cfg.clip2.hidden,
             cfg.clip2.layers, cfg.clip2.heads, cfg.clip2.intermediate, cfg.clip2.projection_dim);
    /* Binding each model checks every tensor it needs: missing or mis-shaped keys are named here. */
    mp_clip *clip;
    e = mp_clip_load(w, mp_sd_clip_prefix(&cfg), &cfg.clip, &clip);
    if (!e && cfg.family == MP_FAMILY_SDXL) {
      mp_openclip *oc;
      e = mp_openclip_load(w, MP_PREFIX_XL_OPENCLIP, &cfg.clip2, &oc);
      mp_openclip_free(oc);
    }
    if (report_check("text:  ", e)) rc = 1;
    mp_clip_free(clip);
    mp_unet *unet = NULL;
    e = mp_unet_load(w, MP_PREFIX_UNET, &cfg.unet, &unet);
    if (report_check("UNet:  ", e)) rc = 1;
    mp_unet_free(unet);
    mp_vae *vae = NULL;
    e = mp_vae_load(w, MP_PREFIX_VAE, &cfg.vae, &vae);
    if (report_check("VAE:   ", e)) rc = 1;
    mp_vae_free(vae);
  }
  printf("unexpected:  %zu tensors outside the model (%lld values)\n", unexpected, other);
  if (unexpected && !list)
    for (size_t i = 0, shown = 0; i < n && shown < 10; i++) {
      const mp_weight *t = mp_weights_at(w, i);
      bool in_model = false;
      for (int k = 0; k < N_PARTS; k++) in_model |= strncmp(t->name, components[k][1], strlen(components[k][1])) == 0;
      if (!in_model && !known_extra(t->name)) printf("  %s\n", t->name), shown++;
    }
  mp_weights_close(w);
  return rc;
}
