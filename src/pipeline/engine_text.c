#include "pipeline/engine_text.h"

#include <stdlib.h>
#include <string.h>

struct mp_text_memo {
  char *prompt, *negative;
  int clip_skip;
  bool use_lpw;
  const mp_ti_set *embeddings;
  size_t n_embeddings;
  mp_conditioning cond;
  mp_xl_conditioning xc;
};

void mp_engine_text_forget(mp_engine *e) {
  mp_text_memo *t = e->text;
  if (!t) return;
  free(t->prompt), free(t->negative);
  mp_conditioning_free(&t->cond);
  mp_xl_conditioning_free(&t->xc);
  free(t);
  e->text = NULL;
}

static bool same_text(const mp_text_memo *t, const char *prompt, const char *negative, int clip_skip, const mp_pass_params *p) {
  return t && !strcmp(t->prompt, prompt) && !strcmp(t->negative, negative) && t->clip_skip == clip_skip &&
         t->use_lpw == p->use_lpw && t->embeddings == p->embeddings && t->n_embeddings == (p->embeddings ? p->embeddings->n : 0);
}

mp_error *mp_engine_text(mp_engine *e, const mp_pass_params *p, const mp_conditioning **cond, const mp_xl_conditioning **xc) {
  *cond = NULL, *xc = NULL;
  const char *prompt = p->prompt ? p->prompt : "", *negative = p->negative ? p->negative : "";
  const int clip_skip = p->clip_skip > 0 ? p->clip_skip : 1;
  const bool xl = e->cfg.family == MP_FAMILY_SDXL;
  if (!same_text(e->text, prompt, negative, clip_skip, p)) {
    mp_engine_text_forget(e);
    mp_text_memo *t = e->text = calloc(1, sizeof *t); /* the engine owns it: forgetting frees what was made */
    if (t) t->prompt = strdup(prompt), t->negative = strdup(negative);
    if (!t || !t->prompt || !t->negative) {
      mp_engine_text_forget(e);
      return mp_errorf("out of memory");
    }
    t->clip_skip = clip_skip, t->use_lpw = p->use_lpw;
    t->embeddings = p->embeddings, t->n_embeddings = p->embeddings ? p->embeddings->n : 0;
    mp_cond_options opt = mp_cond_options_default();
    opt.clip_skip = clip_skip;
    opt.use_lpw = p->use_lpw;
    mp_error *err = xl ? mp_xl_conditioning_encode(e->clip, e->clip2, e->ctx->pool, e->tok, prompt, negative, p->embeddings, &opt, &t->xc)
                       : mp_conditioning_encode(e->clip, e->ctx->pool, e->tok, prompt, negative, p->embeddings, &opt, &t->cond);
    e->text_encodes++;
    if (err) {
      mp_engine_text_forget(e);
      return err;
    }
  }
  if (xl) *xc = &e->text->xc;
  else *cond = &e->text->cond;
  return NULL;
}
