/* The prompt document parser (SPEC §1): every parameter row, flag, tag form, section count, the
 * negative rules, and hostile input that must give a positioned error and never crash. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "prompt/document.h"

static mp_job *parse_ok(const char *doc) {
  mp_job *j = NULL;
  mp_error *e = mp_job_parse_text(doc, strlen(doc), &j);
  if (e) fail_msg("parse of '%s' failed: %s", doc, mp_error_message(e));
  assert_non_null(j);
  return j;
}

static mp_job *parse_json_ok(const char *doc) {
  mp_job *j = NULL;
  mp_error *e = mp_job_parse_json(doc, strlen(doc), &j);
  if (e) fail_msg("parse of '%s' failed: %s", doc, mp_error_message(e));
  return j;
}

/* The error message must be exactly `want`. */
static void parse_err_n(const char *doc, size_t len, const char *want) {
  mp_job *j = NULL;
  mp_error *e = mp_job_parse_text(doc, len, &j);
  if (!e) fail_msg("expected the error '%s'", want);
  assert_null(j);
  if (strcmp(mp_error_message(e), want) != 0) fail_msg("error\n  '%s'\nexpected\n  '%s'", mp_error_message(e), want);
  mp_error_free(e);
}
static void parse_err(const char *doc, const char *want) { parse_err_n(doc, strlen(doc), want); }

static void json_err(const char *doc, const char *want) {
  mp_job *j = NULL;
  mp_error *e = mp_job_parse_json(doc, strlen(doc), &j);
  if (!e) fail_msg("expected the error '%s'", want);
  assert_null(j);
  if (strcmp(mp_error_message(e), want) != 0) fail_msg("error\n  '%s'\nexpected\n  '%s'", mp_error_message(e), want);
  mp_error_free(e);
}

static bool has_warning(const mp_job *j, const char *needle) {
  for (int i = 0; i < j->n_warnings; i++)
    if (strstr(j->warnings[i], needle)) return true;
  return false;
}

/* ---------------------------------------------------------------- §1.1 rows */

static void test_defaults(void **state) {
  (void)state;
  mp_job *j = parse_ok("a cat");
  assert_string_equal(j->text, "a cat");
  assert_string_equal(j->negative_prompt, "");
  assert_int_equal(j->num_images, 1);
  assert_true(j->seed_random);
  assert_int_equal(j->steps, 30);
  assert_true(j->cfg_scale == 7.0);
  assert_int_equal(j->width, 512);
  assert_int_equal(j->height, 512);
  assert_false(j->size_given);
  assert_int_equal(j->ar, MP_AR_NONE);
  assert_int_equal(j->scheduler, MP_SCHED_DPMPP_2M_KARRAS);
  assert_false(j->use_lpw);
  assert_true(j->denoising_strength == 0.8);
  assert_null(j->input_image);
  assert_null(j->input_image_url);
  assert_null(j->mask_image);
  assert_null(j->mask_image_url);
  assert_false(j->super_resolution || j->hires_fix || j->inpaint_faces || j->film_grain || j->face_correct || j->face_swap ||
               j->controlnet_txt2img || j->prompt_expansion);
  assert_int_equal(j->color_grading, MP_GRADING_NONE);
  assert_null(j->controlnet);
  assert_null(j->callback);
  assert_int_equal(j->n_sections, 1);
  assert_int_equal(j->n_persons, 0);
  assert_int_equal(j->n_warnings, 0);
  assert_string_equal(j->passes[0].prompt, "a cat");
  assert_string_equal(j->passes[0].negative, "");
  /* flags' defaults */
  assert_int_equal(j->n_flags, 0);
  assert_true(j->flags.hires_cfg_scale == 5.5);
  assert_true(j->flags.resemblance == 0.65);
  assert_true(j->flags.hires_denoising_strength == 0.4);
  assert_true(j->flags.person_denoising_strength == 0.65);
  assert_true(j->flags.face_denoising_strength == 0.5);
  assert_null(j->flags.mask_prompt);
  assert_false(j->flags.tiled_upscale || j->flags.only_upscale || j->flags.mask_invert || j->flags.mask_dilate_given);
  mp_job_free(j);
}

/* An empty value means the default. */
static void test_empty_values_are_defaults(void **state) {
  (void)state;
  mp_job *j = parse_ok("a\nnum_images=\nseed=\nsteps=\ncfg_scale=\nw=\nh=\nar=\nscheduler=\nuse_lpw=\ndenoising_strength=\n"
                       "input_image=\nmask_image=\nsuper_resolution=\ncolor_grading=\ncontrolnet=\ncontrolnet_conditioning_scale=\n"
                       "negative_prompt=\ncallback=\n");
  assert_int_equal(j->num_images, 1);
  assert_true(j->seed_random);
  assert_int_equal(j->steps, 30);
  assert_true(j->cfg_scale == 7.0);
  assert_int_equal(j->width, 512);
  assert_int_equal(j->scheduler, MP_SCHED_DPMPP_2M_KARRAS);
  assert_null(j->input_image);
  assert_null(j->controlnet);
  assert_int_equal(j->n_warnings, 0);
  mp_job_free(j);
}

typedef struct {
  const char *key;
  const char *min, *max, *below, *above, *malformed;
  const char *expected; /* the message's "expected ..." part */
  double min_v, max_v;
} range_row;

static const range_row rows[] = {
    {"num_images", "1", "8", "0", "9", "two", "expected an integer from 1 to 8", 1, 8},
    {"seed", "0", "4294967295", "-1", "4294967296", "12ab", "expected an integer from 0 to 4294967295", 0, 4294967295.0},
    {"steps", "1", "150", "0", "151", "abc", "expected an integer from 1 to 150", 1, 150},
    {"cfg_scale", "0", "30", "-0.5", "30.01", "7,5", "expected a number from 0 to 30", 0, 30},
    {"w", "64", "2048", "56", "2056", "512px", "expected a multiple of 8 from 64 to 2048", 64, 2048},
    {"h", "64", "2048", "56", "2056", "1.5", "expected a multiple of 8 from 64 to 2048", 64, 2048},
    {"denoising_strength", "0", "1", "-0.01", "1.01", "half", "expected a number from 0 to 1", 0, 1},
    {"controlnet_conditioning_scale", "0", "2", "-1", "2.5", "x", "expected a number from 0 to 2", 0, 2},
};

static double field(const mp_job *j, const char *key) {
  if (!strcmp(key, "num_images")) return j->num_images;
  if (!strcmp(key, "seed")) return j->seed;
  if (!strcmp(key, "steps")) return j->steps;
  if (!strcmp(key, "cfg_scale")) return j->cfg_scale;
  if (!strcmp(key, "w")) return j->width;
  if (!strcmp(key, "h")) return j->height;
  if (!strcmp(key, "denoising_strength")) return j->denoising_strength;
  if (!strcmp(key, "controlnet_conditioning_scale")) return j->controlnet_conditioning_scale;
  return NAN;
}

static void test_ranges(void **state) {
  (void)state;
  char doc[256], want[512];
  for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
    const range_row *row = &rows[r];
    const char *extra = !strcmp(row->key, "denoising_strength") ? "input_image=a.png\n" : "";
    snprintf(doc, sizeof doc, "a cat\n%s%s=%s\n", extra, row->key, row->min);
    mp_job *j = parse_ok(doc);
    assert_true(field(j, row->key) == row->min_v);
    mp_job_free(j);
    snprintf(doc, sizeof doc, "a cat\n%s%s=%s\n", extra, row->key, row->max);
    j = parse_ok(doc);
    assert_true(field(j, row->key) == row->max_v);
    mp_job_free(j);
    const char *bad[] = {row->below, row->above, row->malformed};
    for (int b = 0; b < 3; b++) {
      snprintf(doc, sizeof doc, "a cat\n%s=%s\n", row->key, bad[b]);
      snprintf(want, sizeof want, "line 2, column %zu: %s: %s, found \"%s\"", strlen(row->key) + 2, row->key, row->expected, bad[b]);
      parse_err(doc, want);
    }
  }
  parse_err("a\nw=513", "line 2, column 3: w: expected a multiple of 8 from 64 to 2048, found \"513\"");
  parse_err("a\nsteps=abc", "line 2, column 7: steps: expected an integer from 1 to 150, found \"abc\"");
}

static void test_size_and_ar(void **state) {
  (void)state;
  static const struct {
    const char *ar;
    int w, h;
  } ars[] = {{"1:1", 768, 768}, {"portrait", 512, 768}, {"16:9", 768, 432}, {"landscape", 768, 512}};
  char doc[64];
  for (int i = 0; i < 4; i++) {
    snprintf(doc, sizeof doc, "a\nar=%s", ars[i].ar);
    mp_job *j = parse_ok(doc);
    assert_int_equal(j->width, ars[i].w);
    assert_int_equal(j->height, ars[i].h);
    assert_true(j->ar_used);
    assert_int_equal(j->n_warnings, 0);
    mp_job_free(j);
  }
  parse_err("a\nar=4:3", "line 2, column 4: ar: expected one of 1:1, portrait, 16:9, landscape, found \"4:3\"");
  /* w/h override ar, with a warning; a missing dimension keeps its default */
  mp_job *j = parse_ok("a\nar=16:9\nw=640");
  assert_int_equal(j->width, 640);
  assert_int_equal(j->height, 512);
  assert_false(j->ar_used);
  assert_true(has_warning(j, "line 2, column 1: ar: ar=16:9 ignored because w/h are given (640x512)"));
  mp_job_free(j);
  /* with an input image and no w/h the image decides */
  j = parse_ok("a\ninput_image=in.png\nar=portrait");
  assert_int_equal(j->width, 0);
  assert_int_equal(j->height, 0);
  assert_true(has_warning(j, "ar=portrait ignored: the size comes from the input image"));
  mp_job_free(j);
}

static void test_enums_and_bools(void **state) {
  (void)state;
  const char *names[] = {"euler", "euler_a", "dpm++2m", "dpm++2m_karras", "dpm++sde", "dpm++sde_karras", "lcm", "tcd", "ddim"};
  char doc[128];
  for (int s = 0; s < 9; s++) {
    snprintf(doc, sizeof doc, "a\nscheduler=%s", names[s]);
    mp_job *j = parse_ok(doc);
    assert_int_equal(j->scheduler, s);
    assert_string_equal(mp_scheduler_name(j->scheduler), names[s]);
    mp_job_free(j);
  }
  parse_err("a\nscheduler=dpm++3m",
            "line 2, column 11: scheduler: expected one of euler, euler_a, dpm++2m, dpm++2m_karras, dpm++sde, dpm++sde_karras, lcm, "
            "tcd, ddim, found \"dpm++3m\"");
  const char *grades[] = {"Film Velvia", "Film Portra", "Ektar"};
  for (int g = 0; g < 3; g++) {
    snprintf(doc, sizeof doc, "a\ncolor_grading=%s", grades[g]);
    mp_job *j = parse_ok(doc);
    assert_int_equal(j->color_grading, g + 1);
    assert_string_equal(mp_grading_name(j->color_grading), grades[g]);
    mp_job_free(j);
  }
  parse_err("a\ncolor_grading=sepia",
            "line 2, column 15: color_grading: expected one of Film Velvia, Film Portra, Ektar (or nothing), found \"sepia\"");
  const char *bools[] = {"use_lpw", "super_resolution", "hires_fix", "inpaint_faces", "film_grain", "face_correct", "face_swap",
                         "controlnet_txt2img", "prompt_expansion"};
  for (int b = 0; b < 9; b++) {
    snprintf(doc, sizeof doc, "a\n%s=true", bools[b]);
    mp_job *j = parse_ok(doc);
    bool *f[] = {&j->use_lpw, &j->super_resolution, &j->hires_fix, &j->inpaint_faces, &j->film_grain, &j->face_correct,
                 &j->face_swap, &j->controlnet_txt2img, &j->prompt_expansion};
    for (int o = 0; o < 9; o++) assert_int_equal(*f[o], o == b);
    mp_job_free(j);
    snprintf(doc, sizeof doc, "a\n%s=false", bools[b]);
    j = parse_ok(doc);
    assert_false(j->use_lpw || j->super_resolution || j->film_grain);
    mp_job_free(j);
    char want[256];
    snprintf(doc, sizeof doc, "a\n%s=yes", bools[b]);
    snprintf(want, sizeof want, "line 2, column %zu: %s: expected true or false, found \"yes\"", strlen(bools[b]) + 2, bools[b]);
    parse_err(doc, want);
  }
  mp_job *j = parse_ok("a\nprompt_expansion=true");
  assert_true(has_warning(j, "line 2, column 1: prompt_expansion: accepted but has no effect locally"));
  mp_job_free(j);
}

static void test_strings(void **state) {
  (void)state;
  mp_job *j = parse_ok("a\ninput_image= in.png \nmask_image=m.png\ncontrolnet=pose\ncallback=http://x/y\nnegative_prompt= ugly, blurry ");
  assert_string_equal(j->input_image, "in.png");
  assert_string_equal(j->mask_image, "m.png");
  assert_string_equal(j->controlnet, "pose");
  assert_string_equal(j->callback, "http://x/y");
  assert_string_equal(j->negative_prompt, "ugly, blurry");
  assert_string_equal(j->passes[0].negative, "ugly, blurry");
  mp_job_free(j);
  j = parse_ok("a\ninput_image_url=http://x/a.png\nmask_image_url=http://x/m.png\nseed=7");
  assert_string_equal(j->input_image_url, "http://x/a.png");
  assert_string_equal(j->mask_image_url, "http://x/m.png");
  assert_false(j->seed_random);
  assert_int_equal(j->seed, 7);
  mp_job_free(j);
  j = parse_ok("a\ndenoising_strength=0.5");
  assert_true(has_warning(j, "line 2, column 1: denoising_strength: has no effect without input_image"));
  mp_job_free(j);
}

/* The text ends at the first line that is a known key. A name=value line with an unknown name is a
 * mistyped parameter (an error with the nearest key), wherever it is; \name=value keeps it as text. */
static void test_text_boundary(void **state) {
  (void)state;
  mp_job *j = parse_ok("\\style=old\n\\foo=bar baz\r\nsteps=20\r\n\r\nseed=3\r\n");
  assert_string_equal(j->text, "\\style=old\n\\foo=bar baz"); /* as given */
  assert_string_equal(j->passes[0].prompt, "style=old foo=bar baz");
  assert_int_equal(j->steps, 20);
  assert_int_equal(j->seed, 3);
  mp_job_free(j);
  /* the escape only applies at the start of a line before name=; other backslashes are text */
  j = parse_ok("a \\b=c\n\\x y\n\\Ab=1");
  assert_string_equal(j->passes[0].prompt, "a \\b=c \\x y \\Ab=1");
  mp_job_free(j);
  /* a line that only looks like a parameter further in (not at column 1) is text */
  j = parse_ok("a cat\n stepz=20\nmood: x=y");
  assert_string_equal(j->passes[0].prompt, "a cat stepz=20 mood: x=y");
  mp_job_free(j);
  parse_err("a cat\nstepz=20",
            "line 2, column 1: unknown key \"stepz\": did you mean steps? (a prompt line of the form name=value is written \\name=value)");
  parse_err("style=old\na cat\nsteps=2",
            "line 1, column 1: unknown key \"style\" (a prompt line of the form name=value is written \\name=value)");
  parse_err("a cat\nsteps=20\nnegative=blurry",
            "line 3, column 1: unknown key \"negative\": did you mean negative_prompt? (the parameters are those of SPEC §1.1: num_images, "
            "seed, steps, cfg_scale, w, h, ...)");
  parse_err("a cat\nseed=1\n\ncfg=7",
            "line 4, column 1: unknown key \"cfg\": did you mean cfg_scale? (the parameters are those of SPEC §1.1: num_images, seed, "
            "steps, cfg_scale, w, h, ...)");
  parse_err("a\nsuper_resolutoin=true", "line 2, column 1: unknown key \"super_resolutoin\": did you mean super_resolution? (a prompt "
                                         "line of the form name=value is written \\name=value)");
  /* base_model (SPEC §1.1) is a known key, kept as given for the pipeline */
  j = parse_ok("a cat\nbase_model=sdxl-base\nsteps=3");
  assert_string_equal(j->base_model, "sdxl-base");
  mp_job_free(j);
  j = parse_ok("a cat");
  assert_null(j->base_model);
  mp_job_free(j);
  j = parse_json_ok("{\"prompt\": {\"text\": \"a\", \"base_model\": \"m\"}}");
  assert_string_equal(j->base_model, "m");
  mp_job_free(j);
  j = parse_ok("text=is just text here\nsteps=5");
  assert_string_equal(j->text, "text=is just text here");
  mp_job_free(j);
}

/* ---------------------------------------------------------------- flags */

static void test_flags(void **state) {
  (void)state;
  mp_job *j = parse_ok("a --tiled_upscale b --hires_cfg_scale 4.5\n--resemblance 0.8 --hires_denoising_strength 0.3 --only_upscale "
                       "--mask_prompt shirt --mask_invert --mask_dilate 12 --person_denoising_strength 0.7 "
                       "--face_denoising_strength 0.45 c\ninput_image=in.png");
  assert_int_equal(j->n_flags, 10);
  assert_true(j->flags.tiled_upscale);
  assert_true(j->flags.hires_cfg_scale == 4.5 && j->flags.hires_cfg_scale_given);
  assert_true(j->flags.resemblance == 0.8 && j->flags.resemblance_given);
  assert_true(j->flags.hires_denoising_strength == 0.3 && j->flags.hires_denoising_strength_given);
  assert_true(j->flags.only_upscale);
  assert_string_equal(j->flags.mask_prompt, "shirt");
  assert_true(j->flags.mask_invert);
  assert_true(j->flags.mask_dilate_given);
  assert_int_equal(j->flags.mask_dilate, 12);
  assert_false(j->flags.mask_dilate_percent);
  assert_true(j->flags.person_denoising_strength == 0.7 && j->flags.person_denoising_strength_given);
  assert_true(j->flags.face_denoising_strength == 0.45 && j->flags.face_denoising_strength_given);
  assert_string_equal(j->passes[0].prompt, "a b c");
  assert_int_equal(j->n_warnings, 0);
  mp_job_free(j);

  j = parse_ok("a --mask_dilate 5%\ninput_image=x\nmask_image=m");
  assert_int_equal(j->flags.mask_dilate, 5);
  assert_true(j->flags.mask_dilate_percent);
  assert_int_equal(j->n_warnings, 0);
  mp_job_free(j);
  /* --person_layout auto|none (ControlNet pose layout, issue 16) */
  j = parse_ok("a BREAK BREAK b --person_layout none\ncontrolnet=pose");
  assert_true(j->flags.person_layout_none);
  assert_int_equal(j->n_persons, 1);
  mp_job_free(j);
  j = parse_ok("a --person_layout auto");
  assert_false(j->flags.person_layout_none);
  mp_job_free(j);
  parse_err("a --person_layout off", "line 1, column 19: --person_layout: expected auto or none, found \"off\"");
  j = parse_ok("a --mask_invert");
  assert_true(has_warning(j, "--mask_invert and --mask_dilate have no effect without a mask (mask_image or --mask_prompt)"));
  mp_job_free(j);

  /* unknown flags stay in the text, with a warning; dashes inside words are not flags */
  j = parse_ok("a --sharpen 3 well-known --x");
  assert_string_equal(j->passes[0].prompt, "a --sharpen 3 well-known --x");
  assert_int_equal(j->n_warnings, 2);
  assert_string_equal(j->warnings[0], "line 1, column 3: unknown flag \"--sharpen\" left in the prompt text");
  assert_string_equal(j->warnings[1], "line 1, column 26: unknown flag \"--x\" left in the prompt text");
  mp_job_free(j);

  parse_err("a --hires_cfg_scale", "line 1, column 20: --hires_cfg_scale: expected a number from 0 to 30 after the flag, found the end of the line");
  parse_err("a --hires_cfg_scale 31", "line 1, column 21: --hires_cfg_scale: expected a number from 0 to 30, found \"31\"");
  parse_err("a --resemblance 1.5", "line 1, column 17: --resemblance: expected a number from 0 to 1, found \"1.5\"");
  parse_err("a --hires_denoising_strength x", "line 1, column 30: --hires_denoising_strength: expected a number from 0 to 1, found \"x\"");
  parse_err("a --person_denoising_strength -0.1",
            "line 1, column 31: --person_denoising_strength: expected a number from 0 to 1, found \"-0.1\"");
  parse_err("a --face_denoising_strength 2", "line 1, column 29: --face_denoising_strength: expected a number from 0 to 1, found \"2\"");
  parse_err("a --mask_dilate 5px\ninput_image=x",
            "line 1, column 17: --mask_dilate: expected a pixel count N (0 to 512) or a percentage N% (0 to 100), found \"5px\"");
  parse_err("a --mask_dilate 101%\ninput_image=x",
            "line 1, column 17: --mask_dilate: expected a pixel count N (0 to 512) or a percentage N% (0 to 100), found \"101%\"");
  parse_err("a --mask_prompt\ninput_image=x", "line 1, column 16: --mask_prompt: expected a word after the flag, found the end of the line");
  parse_err("a --tiled_upscale b --tiled_upscale", "line 1, column 21: --tiled_upscale: the flag is given twice");
  parse_err("a --tiled_upscale, b", "line 1, column 18: --tiled_upscale: expected a space or the end of the line after the flag, found \",\"");
  parse_err("a --only_upscale", "line 1, column 1: --only_upscale: expected input_image or input_image_url, the image to upscale");
  parse_err("a --mask_prompt hat", "line 1, column 1: --mask_prompt: expected input_image or input_image_url, the image to mask");
  /* only flags: no prompt */
  parse_err("--tiled_upscale\nsteps=3", "line 1, column 1: text: expected a prompt, found no words (only flags, tags or BREAKs)");
}

/* ---------------------------------------------------------------- tags */

static void test_tags(void **state) {
  (void)state;
  mp_job *j = parse_ok("a <lora:753945:1> b <lora:my style:0.75> <faceid:42:.5> <badhandv4> c \\<3 <lora:x:2.>");
  const mp_section *s = &j->sections[0];
  assert_int_equal(s->n_adapters, 4);
  assert_int_equal(s->adapters[0].kind, MP_ADAPTER_LORA);
  assert_string_equal(s->adapters[0].id, "753945");
  assert_true(s->adapters[0].weight == 1.0);
  assert_string_equal(s->adapters[1].id, "my style");
  assert_true(s->adapters[1].weight == 0.75);
  assert_int_equal(s->adapters[2].kind, MP_ADAPTER_FACEID);
  assert_string_equal(s->adapters[2].id, "42");
  assert_true(s->adapters[2].weight == 0.5);
  assert_true(s->adapters[3].weight == 2.0);
  assert_int_equal(s->n_embeddings, 1);
  assert_string_equal(s->embeddings[0], "badhandv4");
  /* adapters are removed, embeddings keep their bare name in place, \\< is a literal < */
  assert_string_equal(j->passes[0].prompt, "a b badhandv4 c <3");
  assert_int_equal(j->n_embeddings, 1);
  assert_true(has_warning(j, "line 1, column 42: faceid adapters are accepted but not supported"));
  mp_job_free(j);
  j = parse_ok("a <lora:x:0> <emb.v2-final+1>");
  assert_true(j->sections[0].adapters[0].weight == 0.0);
  assert_string_equal(j->sections[0].embeddings[0], "emb.v2-final+1");
  mp_job_free(j);

  parse_err("a <lora:1:-1>", "line 1, column 11: tag \"<lora:1:-1>\": weight: expected a decimal number from 0 to 100, found \"-1\"");
  parse_err("a <lora:1:abc>", "line 1, column 11: tag \"<lora:1:abc>\": weight: expected a decimal number from 0 to 100, found \"abc\"");
  parse_err("a <lora:1:1e2>", "line 1, column 11: tag \"<lora:1:1e2>\": weight: expected a decimal number from 0 to 100, found \"1e2\"");
  parse_err("a <lora:1:100.5>", "line 1, column 11: tag \"<lora:1:100.5>\": weight: expected a decimal number from 0 to 100, found \"100.5\"");
  parse_err("a <lora:1:1.2.3>", "line 1, column 11: tag \"<lora:1:1.2.3>\": weight: expected a decimal number from 0 to 100, found \"1.2.3\"");
  parse_err("a <lora:1:>", "line 1, column 11: tag \"<lora:1:>\": weight: expected a decimal number from 0 to 100, found \"\"");
  parse_err("a <faceid:1:x>", "line 1, column 13: tag \"<faceid:1:x>\": weight: expected a decimal number from 0 to 100, found \"x\"");
  parse_err("a <lora:1>", "line 1, column 3: tag \"<lora:1>\": expected <lora:ID:WEIGHT>");
  parse_err("a <lora: :1>", "line 1, column 9: tag \"<lora: :1>\": expected an ID (a tune id or a LoRA file name)");
  parse_err("a <lyco:x:1>", "line 1, column 4: unknown tag type \"lyco\": expected <lora:ID:WEIGHT>, <faceid:ID:WEIGHT> or <embedding-name>");
  parse_err("a <bad name>", "line 1, column 7: tag \"<bad name>\": expected an embedding name of letters, digits, '_', '-', '.', '+'");
  parse_err("a <> b", "line 1, column 3: empty tag <>: expected <lora:ID:WEIGHT>, <faceid:ID:WEIGHT> or <embedding-name>");
  parse_err("a <lora:1:1",
            "line 1, column 3: unterminated tag: expected <lora:ID:WEIGHT>, <faceid:ID:WEIGHT> or <embedding-name> closed by '>' on the "
            "same line (write \\< for a literal <)");
}

/* ---------------------------------------------------------------- sections */

static void test_sections(void **state) {
  (void)state;
  /* 1 section */
  mp_job *j = parse_ok("a red car, BREAKFAST table");
  assert_int_equal(j->n_sections, 1);
  assert_int_equal(j->n_persons, 0);
  mp_job_free(j);
  /* 2 sections: base + common, no person */
  j = parse_ok("a beach <lora:sty:0.5> BREAK golden hour <emb>");
  assert_int_equal(j->n_sections, 2);
  assert_int_equal(j->n_persons, 0);
  assert_string_equal(j->passes[0].prompt, "a beach, golden hour emb");
  assert_int_equal(j->passes[0].n_adapters, 1);
  assert_int_equal(j->passes[0].n_embeddings, 1);
  mp_job_free(j);
  /* 3 sections */
  j = parse_ok("a gym\nBREAK photo, 8k <lora:c:0.3>\nBREAK sks man, red shirt <lora:1:1>");
  assert_int_equal(j->n_sections, 3);
  assert_int_equal(j->n_persons, 1);
  assert_string_equal(j->sections[1].text, "photo, 8k");
  assert_string_equal(j->passes[0].prompt, "a gym, photo, 8k");
  assert_string_equal(j->passes[1].prompt, "sks man, red shirt, photo, 8k");
  assert_int_equal(j->passes[0].n_adapters, 1);
  assert_string_equal(j->passes[0].adapters[0].id, "c");
  assert_int_equal(j->passes[1].n_adapters, 2);
  assert_string_equal(j->passes[1].adapters[0].id, "1"); /* own first, then common */
  assert_string_equal(j->passes[1].adapters[1].id, "c");
  mp_job_free(j);
  /* 5 sections: 3 persons; BREAK is a whole word, punctuation around it is fine */
  j = parse_ok("park,BREAK,BREAK p1 BREAK p2\nBREAK p3");
  assert_int_equal(j->n_sections, 5);
  assert_int_equal(j->n_persons, 3);
  assert_string_equal(j->sections[0].text, "park,");
  assert_string_equal(j->sections[1].text, ",");
  assert_string_equal(j->passes[3].prompt, "p3, ,");
  mp_job_free(j);
  /* 8 persons is the most */
  j = parse_ok("s BREAK c BREAK 1 BREAK 2 BREAK 3 BREAK 4 BREAK 5 BREAK 6 BREAK 7 BREAK 8");
  assert_int_equal(j->n_persons, 8);
  assert_string_equal(j->passes[8].prompt, "8, c");
  mp_job_free(j);
  parse_err("s BREAK c BREAK 1 BREAK 2 BREAK 3 BREAK 4 BREAK 5 BREAK 6 BREAK 7 BREAK 8 BREAK 9",
            "line 1, column 75: text: at most 8 person sections (9 BREAKs) are allowed, this BREAK starts person section 9");
  parse_err("s BREAK c BREAK p1 BREAK\nsteps=3", "line 1, column 25: text: person section 2 is empty: expected a description of person 2");
  /* a person section with only a LoRA is fine: its prompt is the common one */
  j = parse_ok("s BREAK c BREAK <lora:1:1>");
  assert_string_equal(j->passes[1].prompt, "c");
  mp_job_free(j);
}

static void test_break_break_background(void **state) {
  (void)state;
  mp_job *j = parse_ok("BREAK BREAK sks woman in a red dress <lora:9:1>\ninput_image=room.png");
  assert_true(j->keep_background);
  assert_int_equal(j->n_persons, 1);
  assert_string_equal(j->passes[0].prompt, "");
  assert_string_equal(j->passes[1].prompt, "sks woman in a red dress");
  mp_job_free(j);
  j = parse_ok("BREAK BREAK p1 BREAK p2\ninput_image_url=https://x/room.png");
  assert_true(j->keep_background);
  assert_int_equal(j->n_persons, 2);
  mp_job_free(j);
  parse_err("BREAK BREAK sks woman",
            "line 1, column 1: text: the base and common sections are empty (leading BREAK BREAK): this form expects input_image or "
            "input_image_url, the background the persons are painted on");
  /* a base prompt with an input image is img2img, not background */
  j = parse_ok("a room BREAK BREAK p\ninput_image=a.png");
  assert_false(j->keep_background);
  mp_job_free(j);
}

/* ---------------------------------------------------------------- negatives (§1.3) */

static void test_negatives(void **state) {
  (void)state;
  /* no BREAK: every pass */
  mp_job *j = parse_ok("s BREAK c BREAK p1 BREAK p2\nnegative_prompt=blurry, <bad-hands>");
  assert_int_equal(j->n_neg_sections, 1);
  for (int k = 0; k < 3; k++) {
    assert_string_equal(j->passes[k].negative, "blurry, bad-hands");
    assert_int_equal(j->passes[k].n_embeddings, 1);
  }
  mp_job_free(j);
  /* with BREAK: N0 base, N1 common, N(1+k) person k */
  j = parse_ok("s BREAK c BREAK p1 BREAK p2\nnegative_prompt=n0 BREAK n1 BREAK n2 BREAK n3");
  assert_int_equal(j->n_neg_sections, 4);
  assert_string_equal(j->passes[0].negative, "n0, n1");
  assert_string_equal(j->passes[1].negative, "n2, n1");
  assert_string_equal(j->passes[2].negative, "n3, n1");
  mp_job_free(j);
  /* fewer negative person sections than persons: the common negative only */
  j = parse_ok("s BREAK c BREAK p1 BREAK p2\nnegative_prompt=n0 BREAK n1 BREAK n2");
  assert_string_equal(j->passes[2].negative, "n1");
  mp_job_free(j);
  /* more: a warning */
  j = parse_ok("s BREAK c BREAK p1\nnegative_prompt=n0 BREAK n1 BREAK n2 BREAK n3");
  assert_true(has_warning(j, "line 2, column 1: negative_prompt: 2 person sections, the text has 1: the extra negative sections are not used"));
  mp_job_free(j);
  /* a single-section text with a split negative */
  j = parse_ok("s\nnegative_prompt=n0 BREAK n1");
  assert_string_equal(j->passes[0].negative, "n0, n1");
  mp_job_free(j);
  parse_err("s\nnegative_prompt=ugly <lora:1:1>",
            "line 2, column 22: negative_prompt: tag \"<lora:1:1>\": <lora:...> tags belong in the prompt text, not the negative prompt");
  parse_err("s\nnegative_prompt=ugly <x",
            "line 2, column 22: unterminated tag: expected <lora:ID:WEIGHT>, <faceid:ID:WEIGHT> or <embedding-name> closed by '>' on "
            "the same line (write \\< for a literal <)");
  parse_err("s\nnegative_prompt=0 BREAK 1 BREAK 2 BREAK 3 BREAK 4 BREAK 5 BREAK 6 BREAK 7 BREAK 8 BREAK 9 BREAK 10",
            "line 2, column 91: negative_prompt: at most 8 person sections (9 BREAKs) are allowed, this BREAK starts person section 9");
}

/* ---------------------------------------------------------------- JSON form */

static void test_json(void **state) {
  (void)state;
  mp_job *j = parse_json_ok("{\"prompt\": {\"text\": \"a BREAK b BREAK sks man <lora:5:0.8>\", \"negative_prompt\": \"ugly\","
                            " \"num_images\": 4, \"seed\": \"33504\", \"steps\": 20, \"cfg_scale\": 6.5, \"w\": 512, \"h\": 768,"
                            " \"use_lpw\": true, \"super_resolution\": \"true\", \"scheduler\": \"euler_a\", \"ar\": null,"
                            " \"color_grading\": \"Film Portra\", \"callback\": \"http://cb\"}}");
  assert_int_equal(j->num_images, 4);
  assert_int_equal(j->seed, 33504);
  assert_int_equal(j->steps, 20);
  assert_true(j->cfg_scale == 6.5);
  assert_int_equal(j->height, 768);
  assert_true(j->use_lpw && j->super_resolution);
  assert_int_equal(j->scheduler, MP_SCHED_EULER_A);
  assert_int_equal(j->color_grading, MP_GRADING_PORTRA);
  assert_int_equal(j->n_persons, 1);
  assert_string_equal(j->passes[1].prompt, "sks man, b");
  assert_string_equal(j->passes[1].adapters[0].id, "5");
  mp_job_free(j);
  j = parse_json_ok("{\"text\": \"bare object\"}");
  assert_string_equal(j->passes[0].prompt, "bare object");
  mp_job_free(j);
  json_err("{\"prompt\": {\"text\": \"a\", \"steps\": 1.5}}", "prompt.steps: expected an integer from 1 to 150, found \"1.5\"");
  json_err("{\"prompt\": {\"text\": \"a\", \"steps\": 1e300}}", "prompt.steps: expected an integer from 1 to 150, found \"1e+300\"");
  json_err("{\"prompt\": {\"text\": \"a\", \"w\": [512]}}", "prompt.w: expected a string, a number, true, false or null, found an array");
  json_err("{\"prompt\": {\"text\": \"a\", \"tune\": 1}}",
           "prompt: unknown key \"tune\" (the parameters are those of SPEC §1.1: text, negative_prompt, num_images, seed, ...)");
  json_err("{\"prompt\": {\"text\": \"a\", \"num_image\": 1}}",
           "prompt: unknown key \"num_image\": did you mean num_images? (the parameters are those of SPEC §1.1: text, negative_prompt, "
           "num_images, seed, ...)");
  json_err("{\"prompt\": {\"text\": \"a\", \"seed\": 1, \"seed\": 2}}", "prompt.seed: the key is given twice");
  json_err("{\"prompt\": {\"steps\": 3}}", "prompt.text: expected the prompt text, found no text key");
  json_err("{\"prompt\": {\"text\": 5}}", "prompt.text: expected a string");
  json_err("{\"prompt\": {\"text\": \"a\"}} x", "line 1, column 27: expected the end of the JSON document, found more text");
  json_err("{\"prompt\": {\"text\": \"a\",\n  \"seed\": }}", "line 2, column 11: expected JSON ({\"prompt\": {\"text\": ...}}), found invalid JSON here");
  json_err("[1]", "expected a JSON object {\"prompt\": {\"text\": ..., ...}}");
  json_err("{\"prompt\": {\"text\": \"ok\\nthen <lora:1:x>\"}}",
           "prompt.text: line 2, column 14: tag \"<lora:1:x>\": weight: expected a decimal number from 0 to 100, found \"x\"");
  json_err("{\"prompt\": {\"text\": \"a\", \"negative_prompt\": \"b <c\"}}",
           "prompt.negative_prompt: line 1, column 3: unterminated tag: expected <lora:ID:WEIGHT>, <faceid:ID:WEIGHT> or "
           "<embedding-name> closed by '>' on the same line (write \\< for a literal <)");
  json_err("{\"prompt\": {\"text\": \"a\", \"ar\": \"1:1\", \"mask_image\": \"m.png\"}}",
           "prompt.mask_image: a mask needs an image to repaint: expected input_image or input_image_url too");
}

/* ---------------------------------------------------------------- hostile input */

static void test_hostile(void **state) {
  (void)state;
  parse_err("", "line 1, column 1: text: expected a prompt, found nothing");
  parse_err("   \n\t\n", "line 1, column 1: text: expected a prompt, found no words (only flags, tags or BREAKs)");
  parse_err("steps=30", "line 1, column 1: text: expected a prompt, found nothing");
  parse_err("a\nsteps=30\nfoo=1",
            "line 3, column 1: unknown key \"foo\" (the parameters are those of SPEC §1.1: num_images, seed, steps, cfg_scale, w, h, ...)");
  parse_err("a\nsteps=30\nsteps=31", "line 3, column 1: steps: the key is given twice (first on line 2)");
  parse_err("a\nsteps=30\nan afterthought",
            "line 3, column 1: expected a key=value parameter line (the parameters start on line 2 and every later line must be one), "
            "found \"an afterthought\"");
  parse_err("a\nsteps=30\n=", "line 3, column 1: expected a key=value parameter line (the parameters start on line 2 and every later line must be one), found \"=\"");
  parse_err("a\nseed=1\nSteps=3", "line 3, column 1: expected a key=value parameter line (the parameters start on line 2 and every later line must be one), found \"Steps=3\"");
  parse_err("a\nseed=1\ntext=b", "line 3, column 1: key text: in the text form the prompt text is the lines before the parameters");
  parse_err_n("a\0b", 3, "line 1, column 2: expected UTF-8 text, found a NUL byte (byte 0x00)");
  parse_err_n("a\nseed=1\nnegative_prompt=x\0", 27, "line 3, column 18: expected UTF-8 text, found a NUL byte (byte 0x00)");
  parse_err("caf\xc3\xa9 \xff", "line 1, column 6: expected UTF-8 text, found invalid UTF-8 (byte 0xFF)" );
  parse_err("\xc0\xaf", "line 1, column 1: expected UTF-8 text, found invalid UTF-8 (byte 0xC0)");
  parse_err("\xed\xa0\x80", "line 1, column 1: expected UTF-8 text, found invalid UTF-8 (byte 0xED)");
  parse_err("\xf4\x90\x80\x80", "line 1, column 1: expected UTF-8 text, found invalid UTF-8 (byte 0xF4)");
  parse_err("ok \xe2\x82", "line 1, column 4: expected UTF-8 text, found a UTF-8 character cut off at the end (byte 0xE2)");
  parse_err("a\nsteps=99999999999999999999999999", "line 2, column 7: steps: expected an integer from 1 to 150, found \"99999999999999999999999999\"");
  parse_err("a\nseed=18446744073709551617", "line 2, column 6: seed: expected an integer from 0 to 4294967295, found \"18446744073709551617\"");
  parse_err("a\ncfg_scale=1e400", "line 2, column 11: cfg_scale: expected a number from 0 to 30, found \"1e400\"");
  parse_err("a\ncfg_scale=nan", "line 2, column 11: cfg_scale: expected a number from 0 to 30, found \"nan\"");
  parse_err("a\ncfg_scale=inf", "line 2, column 11: cfg_scale: expected a number from 0 to 30, found \"inf\"");
  parse_err("a\ncfg_scale=0x10", "line 2, column 11: cfg_scale: expected a number from 0 to 30, found \"0x10\"");
  parse_err("a\nsteps=3.0", "line 2, column 7: steps: expected an integer from 1 to 150, found \"3.0\"");
  parse_err("a\nsteps=\x01", "line 2, column 7: steps: expected an integer from 1 to 150, found \"\\x01\"");
  parse_err("a <lora:1:\n1>", "line 1, column 3: unterminated tag: expected <lora:ID:WEIGHT>, <faceid:ID:WEIGHT> or <embedding-name> closed by '>' on the same line (write \\< for a literal <)");
  parse_err("a < b", "line 1, column 3: unterminated tag: expected <lora:ID:WEIGHT>, <faceid:ID:WEIGHT> or <embedding-name> closed by '>' on the same line (write \\< for a literal <)");
  parse_err("a <<x>", "line 1, column 3: unterminated tag: expected <lora:ID:WEIGHT>, <faceid:ID:WEIGHT> or <embedding-name> closed by '>' on the same line (write \\< for a literal <)");
  parse_err("a\ninput_image=a\ninput_image_url=b", "line 3, column 1: input_image_url: give input_image or input_image_url, not both");
  parse_err("a\nmask_image=m", "line 2, column 1: mask_image: a mask needs an image to repaint: expected input_image or input_image_url too");
  parse_err("a\ninput_image=a\nmask_image=m\nmask_image_url=n", "line 4, column 1: mask_image_url: give mask_image or mask_image_url, not both");
  parse_err("<lora:1:1>", "line 1, column 1: text: expected a prompt, found no words (only flags, tags or BREAKs)");
  parse_err("BREAK", "line 1, column 1: text: expected a prompt, found no words (only flags, tags or BREAKs)");

  /* a 1 MB line is fine as text, and a 1 MB value is an error that quotes only its start */
  size_t big = 1u << 20;
  char *doc = malloc(big + 64);
  memset(doc, 'a', big);
  strcpy(doc + big, "\nseed=1");
  mp_job *j = parse_ok(doc);
  assert_int_equal(strlen(j->passes[0].prompt), big);
  mp_job_free(j);
  strcpy(doc, "a\nsteps=");
  memset(doc + 8, '7', big);
  doc[8 + big] = 0;
  parse_err(doc, "line 2, column 7: steps: expected an integer from 1 to 150, found \"777777777777777777777777777777777777777777777777\"...");
  free(doc);
  /* more than the document limit */
  doc = calloc(1, MP_MAX_DOCUMENT_BYTES + 2);
  memset(doc, 'a', MP_MAX_DOCUMENT_BYTES + 1);
  parse_err(doc, "the document is 4194305 bytes; at most 4194304 bytes are accepted");
  free(doc);
  /* deep JSON nesting is refused by the JSON reader, not by the stack */
  doc = malloc(200002);
  for (int i = 0; i < 100000; i++) doc[i] = '[', doc[100000 + i] = ']';
  doc[200000] = 0;
  mp_job *jj = NULL;
  mp_error *e = mp_job_parse_json(doc, 200000, &jj);
  assert_non_null(e);
  assert_null(jj);
  mp_error_free(e);
  free(doc);
  /* tags and warnings are bounded */
  {
    char many[2048] = "a";
    for (int i = 0; i < 65; i++) strcat(many, " <e>");
    parse_err(many, "line 1, column 259: too many tags: a section holds at most 64");
    strcpy(many, "a");
    for (int i = 0; i < 100; i++) strcat(many, " --x");
    mp_job *w = parse_ok(many);
    assert_int_equal(w->n_warnings, MP_MAX_WARNINGS + 1);
    assert_string_equal(w->warnings[MP_MAX_WARNINGS], "more warnings follow; only the first ones are shown");
    mp_job_free(w);
  }
  /* a byte-order mark is skipped */
  j = parse_ok("\xEF\xBB\xBFhello\nsteps=3");
  assert_string_equal(j->passes[0].prompt, "hello");
  mp_job_free(j);
  j = parse_json_ok("\xEF\xBB\xBF{\"text\": \"hi\"}");
  assert_string_equal(j->passes[0].prompt, "hi");
  mp_job_free(j);
  /* NULL input with a length reads nothing */
  e = mp_job_parse_text(NULL, 5, &jj);
  assert_string_equal(mp_error_message(e), "line 1, column 1: text: expected a prompt, found nothing");
  mp_error_free(e);
}

/* Columns count characters, not bytes. */
static void test_columns_count_characters(void **state) {
  (void)state;
  parse_err("\xc3\xa9t\xc3\xa9 <lora:1:z>", "line 1, column 13: tag \"<lora:1:z>\": weight: expected a decimal number from 0 to 100, found \"z\"");
}

static void test_random_seed_reported(void **state) {
  (void)state;
  mp_job *a = parse_ok("a"), *b = parse_ok("a");
  assert_true(a->seed_random && b->seed_random);
  /* two draws from the OS entropy source: equal with probability 2^-32 */
  assert_true(a->seed != b->seed);
  mp_job_free(a);
  mp_job_free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_empty_values_are_defaults),
      cmocka_unit_test(test_ranges),
      cmocka_unit_test(test_size_and_ar),
      cmocka_unit_test(test_enums_and_bools),
      cmocka_unit_test(test_strings),
      cmocka_unit_test(test_text_boundary),
      cmocka_unit_test(test_flags),
      cmocka_unit_test(test_tags),
      cmocka_unit_test(test_sections),
      cmocka_unit_test(test_break_break_background),
      cmocka_unit_test(test_negatives),
      cmocka_unit_test(test_json),
      cmocka_unit_test(test_hostile),
      cmocka_unit_test(test_columns_count_characters),
      cmocka_unit_test(test_random_seed_reported),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
