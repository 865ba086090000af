/* The text conditioning of an engine's passes, kept from one pass to the next.
 *
 * Every pass encodes its prompt and negative prompt with the text encoder(s). The tiles of an upscale
 * all take the scene's texts, and so do the scene passes of num_images: encoding them again is the
 * same work with the same result (about 0.2 s per pass for short texts at SD 1.5 size, 0.6 s for the
 * seed example's long negative prompt, 2 threads). The engine keeps the last encoding and hands it to
 * the next pass when the texts, the options (clip skip, A1111 weighting) and the embeddings set are the
 * same; binding other LoRAs (which patch the text encoder too) forgets it. The result is the same bits
 * either way. An embeddings set must not change while an engine uses it (run and generate fill theirs
 * before the first pass); it is recognised by its address and size. */
#ifndef MP_PIPELINE_ENGINE_TEXT_H
#define MP_PIPELINE_ENGINE_TEXT_H

#include "pipeline/engine.h"
#include "prompt/conditioning_xl.h"

/* The conditioning for p's texts (p->prompt, p->negative: NULL reads as ""), encoded now or kept from
 * the previous pass. *cond is set for SD 1.x/2.x, *xc for SDXL (the other NULL); both are borrowed
 * from the engine and stay valid until the next call, mp_engine_set_loras or mp_engine_close. */
mp_error *mp_engine_text(mp_engine *e, const mp_pass_params *p, const mp_conditioning **cond, const mp_xl_conditioning **xc);

/* Drop what is kept (the text encoders changed). */
void mp_engine_text_forget(mp_engine *e);

#endif
