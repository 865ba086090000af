/* The pass plan (SPEC §4): the seed example's plan as the issue describes it, the scene modes,
 * person seeds, post order, skipped steps and the JSON contract. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "testutil.h"

#include "prompt/document.h"
#include "prompt/plan.h"

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot open %s (tests run from the source root)", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static void make(const char *doc, mp_job **job, mp_plan **plan) {
  assert_ok(mp_job_parse_text(doc, strlen(doc), job));
  assert_ok(mp_plan_make(*job, plan));
}

static void test_seed_example(void **state) {
  (void)state;
  size_t len;
  char *doc = read_file("examples/seed.prompt", &len);
  mp_job *j;
  mp_plan *p;
  assert_ok(mp_job_parse_text(doc, len, &j));
  free(doc);
  assert_ok(mp_plan_make(j, &p));

  /* 1 flag */
  assert_int_equal(j->n_flags, 1);
  assert_true(j->flags.tiled_upscale);
  /* sections [base, "" (common), person 1 with LoRA 753945 at 1.0] */
  assert_int_equal(j->n_sections, 3);
  assert_true(strncmp(j->sections[0].text, "a model in preppy style, old money aesthetic", 44) == 0);
  assert_string_equal(j->sections[1].text, "");
  assert_int_equal(j->n_persons, 1);
  assert_true(strncmp(j->sections[2].text, "sks woman old money aesthetic", 29) == 0);
  assert_int_equal(j->sections[2].n_adapters, 1);
  assert_int_equal(j->sections[2].adapters[0].kind, MP_ADAPTER_LORA);
  assert_string_equal(j->sections[2].adapters[0].id, "753945");
  assert_true(j->sections[2].adapters[0].weight == 1.0);
  /* the negative: "... extra arms, ex BREAK BREAK sunglasses, ..." = base, empty common, person 1 */
  assert_int_equal(j->n_neg_sections, 3);
  assert_true(strncmp(j->neg_sections[0].text, "asian, , old, ,", 15) == 0);
  size_t n0 = strlen(j->neg_sections[0].text);
  assert_string_equal(j->neg_sections[0].text + n0 - 14, "extra arms, ex");
  assert_string_equal(j->neg_sections[1].text, "");
  assert_string_equal(j->neg_sections[2].text, "sunglasses, snow, skiing, ski resorts, snowboard");
  /* three embeddings, all in the base negative */
  assert_int_equal(j->n_embeddings, 3);
  assert_string_equal(j->embeddings[0], "cyberrealistic-neg");
  assert_string_equal(j->embeddings[1], "badhandv4");
  assert_string_equal(j->embeddings[2], "negative-hand");
  assert_int_equal(j->neg_sections[0].n_embeddings, 3);
  /* the tags' brackets are gone, the names stay in place for the conditioning */
  assert_non_null(strstr(j->neg_sections[0].text, "pimples, cyberrealistic-neg, badhandv4, negative-hand, black and white"));
  /* parameters */
  assert_int_equal(j->width, 512);
  assert_int_equal(j->height, 768);
  assert_int_equal(j->scheduler, MP_SCHED_DPMPP_SDE_KARRAS);
  assert_int_equal(j->steps, 30);
  assert_true(j->cfg_scale == 7.0); /* cfg_scale= is the default */
  assert_true(j->use_lpw);
  assert_false(j->seed_random);
  assert_int_equal(j->n_warnings, 1);
  assert_string_equal(j->warnings[0], "line 23, column 1: ar: ar=1:1 ignored because w/h are given (512x768)");

  /* the plan: 4 images, seeds 33504..33507, each a txt2img scene and one person pass */
  assert_int_equal(p->mode, MP_SCENE_TXT2IMG);
  assert_int_equal(p->n_images, 4);
  for (int i = 0; i < 4; i++) {
    const mp_image_plan *im = &p->images[i];
    assert_int_equal(im->seed, 33504 + i);
    assert_int_equal(im->n_passes, 2);
    assert_int_equal(im->passes[0].seed, 33504 + i);
    assert_true(im->passes[0].strength == 1.0);
    assert_int_equal(im->passes[1].person, 1);
    assert_int_equal(im->passes[1].seed, 33504 + i + 1);
    assert_true(im->passes[1].strength == 0.65);
  }
  const mp_pass_text *scene = p->images[0].passes[0].text, *person = p->images[0].passes[1].text;
  assert_string_equal(scene->prompt, j->sections[0].text); /* empty common dropped */
  assert_string_equal(scene->negative, j->neg_sections[0].text);
  assert_int_equal(scene->n_adapters, 0);
  assert_int_equal(scene->n_embeddings, 3);
  assert_string_equal(person->prompt, j->sections[2].text);
  assert_string_equal(person->negative, "sunglasses, snow, skiing, ski resorts, snowboard");
  assert_int_equal(person->n_adapters, 1);
  assert_int_equal(person->n_embeddings, 0);
  /* post: tiled upscale (which is the super resolution: one Real-ESRGAN x2, 512x768 >= 512x512, then
   * the tiles) -> inpaint_faces -> film_grain; face_swap skipped. 1024x1536, not 2048x3072. */
  assert_int_equal(p->n_post, 3);
  assert_int_equal(p->post[0].kind, MP_POST_TILED_UPSCALE);
  assert_int_equal(p->post[0].scale, 2);
  assert_true(p->post[0].esrgan);
  assert_true(p->post[0].strength > 0.3499 && p->post[0].strength < 0.3501);
  assert_true(p->post[0].cfg_scale == 5.5);
  assert_int_equal(p->post[1].kind, MP_POST_INPAINT_FACES);
  assert_true(p->post[1].strength == 0.5);
  assert_int_equal(p->post[2].kind, MP_POST_FILM_GRAIN);
  assert_int_equal(p->final_width, 1024);
  assert_int_equal(p->final_height, 1536);
  assert_int_equal(p->n_skipped, 1);
  assert_string_equal(p->skipped[0].what, "face_swap");

  /* the JSON says the same */
  char *text;
  assert_ok(mp_plan_to_json(p, &text));
  cJSON *root = cJSON_Parse(text);
  free(text);
  assert_non_null(root);
  assert_string_equal(cJSON_GetObjectItem(root, "schema")->valuestring, MP_PLAN_SCHEMA);
  cJSON *images = cJSON_GetObjectItem(root, "images");
  assert_int_equal(cJSON_GetArraySize(images), 4);
  cJSON *im3 = cJSON_GetArrayItem(images, 3);
  assert_int_equal(cJSON_GetObjectItem(im3, "seed")->valueint, 33507);
  cJSON *pp = cJSON_GetArrayItem(cJSON_GetObjectItem(im3, "passes"), 1);
  assert_string_equal(cJSON_GetObjectItem(pp, "kind")->valuestring, "person");
  assert_int_equal(cJSON_GetObjectItem(pp, "seed")->valueint, 33508);
  cJSON *ad = cJSON_GetArrayItem(cJSON_GetObjectItem(pp, "adapters"), 0);
  assert_string_equal(cJSON_GetObjectItem(ad, "id")->valuestring, "753945");
  const char *order[] = {"tiled_upscale", "inpaint_faces", "film_grain"};
  cJSON *post = cJSON_GetObjectItem(root, "post");
  assert_int_equal(cJSON_GetArraySize(post), 3);
  for (int s = 0; s < 3; s++) assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(post, s), "step")->valuestring, order[s]);
  cJSON *tiled = cJSON_GetArrayItem(post, 0);
  assert_int_equal(cJSON_GetObjectItem(tiled, "scale")->valueint, 2);
  assert_string_equal(cJSON_GetObjectItem(tiled, "upscaler")->valuestring, "realesr-general-x4v3");
  cJSON *fs = cJSON_GetObjectItem(root, "final_size");
  assert_int_equal(cJSON_GetObjectItem(fs, "w")->valueint, 1024);
  assert_int_equal(cJSON_GetObjectItem(fs, "h")->valueint, 1536);
  cJSON *sk = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "skipped"), 0);
  assert_string_equal(cJSON_GetObjectItem(sk, "what")->valuestring, "face_swap");
  cJSON_Delete(root);
  mp_plan_free(p);
  mp_job_free(j);
}

static void test_every_post_step_in_order(void **state) {
  (void)state;
  mp_job *j;
  mp_plan *p;
  make("a --tiled_upscale --hires_cfg_scale 4 --resemblance 0.5 --hires_denoising_strength 0.3 --face_denoising_strength 0.4\n"
       "film_grain=true\ncolor_grading=Ektar\ninpaint_faces=true\nhires_fix=true\nsuper_resolution=true\nface_correct=true\n"
       "face_swap=true\ncontrolnet=canny\nprompt_expansion=true",
       &j, &p);
  /* super_resolution with --tiled_upscale is one step, the tiled one (SPEC §4.2); the rest in §4 order */
  assert_int_equal(p->n_post, 5);
  for (int s = 0; s < 5; s++) assert_int_equal(p->post[s].kind, s + 1); /* the enum is SPEC §4 order */
  assert_int_equal(p->post[0].scale, 2); /* the default 512x512 has 512² pixels: x2 */
  assert_true(p->post[0].esrgan);
  assert_true(p->post[0].strength == 0.5 && p->post[0].cfg_scale == 4);
  assert_true(p->post[1].strength == 0.3 && p->post[1].cfg_scale == 4);
  assert_true(p->post[2].strength == 0.4);
  assert_int_equal(p->n_skipped, 3); /* controlnet runs (issue 16) */
  assert_string_equal(p->skipped[0].what, "face_correct");
  assert_string_equal(p->skipped[1].what, "face_swap");
  assert_string_equal(p->skipped[2].what, "prompt_expansion");
  mp_plan_free(p);
  mp_job_free(j);
  make("a", &j, &p);
  assert_int_equal(p->n_post, 0);
  assert_int_equal(p->n_skipped, 0);
  assert_int_equal(p->n_images, 1);
  assert_int_equal(p->images[0].n_passes, 1);
  mp_plan_free(p);
  mp_job_free(j);
}

static void test_scene_modes(void **state) {
  (void)state;
  mp_job *j;
  mp_plan *p;
  make("a room\ninput_image=in.png\ndenoising_strength=0.55", &j, &p);
  assert_int_equal(p->mode, MP_SCENE_IMG2IMG);
  assert_true(p->images[0].passes[0].strength == 0.55);
  mp_plan_free(p);
  mp_job_free(j);
  /* ControlNet (issue 16): controlnet_txt2img=true makes pass 1 txt2img guided by the input's control
   * image; false keeps img2img from the input with the control on top */
  make("a room\ninput_image=in.png\ncontrolnet=canny\ncontrolnet_txt2img=true", &j, &p);
  assert_int_equal(p->mode, MP_SCENE_TXT2IMG);
  assert_true(p->images[0].passes[0].strength == 1.0);
  assert_int_equal(p->n_skipped, 0);
  mp_plan_free(p);
  mp_job_free(j);
  make("a room\ninput_image=in.png\ncontrolnet=pose\ndenoising_strength=0.4", &j, &p);
  assert_int_equal(p->mode, MP_SCENE_IMG2IMG);
  assert_true(p->images[0].passes[0].strength == 0.4);
  mp_plan_free(p);
  mp_job_free(j);
  make("a room\ninput_image=in.png\nmask_image=m.png", &j, &p);
  assert_int_equal(p->mode, MP_SCENE_INPAINT);
  assert_true(p->images[0].passes[0].strength == 0.8);
  mp_plan_free(p);
  mp_job_free(j);
  make("a red hat --mask_prompt hat --mask_invert --mask_dilate 3%\ninput_image=in.png", &j, &p);
  assert_int_equal(p->mode, MP_SCENE_INPAINT);
  mp_plan_free(p);
  mp_job_free(j);
  /* leading BREAK BREAK with an input image: the image is the background, persons are painted on it */
  make("BREAK BREAK sks woman <lora:1:1> BREAK ohwx man <lora:2:0.8> --person_denoising_strength 0.7\n"
       "input_image=room.png\nnum_images=2\nseed=100",
       &j, &p);
  assert_int_equal(p->mode, MP_SCENE_BACKGROUND);
  assert_true(p->images[0].passes[0].strength == 0.0);
  assert_int_equal(p->images[1].n_passes, 3);
  assert_int_equal(p->images[1].passes[0].seed, 101);
  assert_int_equal(p->images[1].passes[1].seed, 102);
  assert_int_equal(p->images[1].passes[2].seed, 103);
  assert_true(p->images[1].passes[2].strength == 0.7);
  assert_string_equal(p->images[1].passes[2].text->adapters[0].id, "2");
  mp_plan_free(p);
  mp_job_free(j);
  /* --only_upscale: no diffusion pass, upscaling always, persons skipped with a reason */
  make("x BREAK y BREAK p --only_upscale\ninput_image=in.png", &j, &p);
  assert_int_equal(p->mode, MP_SCENE_INPUT);
  assert_int_equal(p->images[0].n_passes, 1);
  assert_int_equal(p->n_post, 1);
  assert_int_equal(p->post[0].kind, MP_POST_SUPER_RESOLUTION);
  assert_int_equal(p->post[0].scale, 0); /* the input image decides x4 or x2 */
  assert_string_equal(p->skipped[0].what, "person passes");
  mp_plan_free(p);
  mp_job_free(j);
  /* faceid tags are planned as skipped */
  make("a BREAK b BREAK p <faceid:3:1>", &j, &p);
  assert_string_equal(p->skipped[0].what, "faceid");
  mp_plan_free(p);
  mp_job_free(j);
}

/* One upscale per job (SPEC §1.1, §4.2): factor 4 below 512² pixels, else 2; Real-ESRGAN when
 * super_resolution is on, else a x2 resize for --tiled_upscale; the plan says the final size. */
static void test_one_upscale(void **state) {
  (void)state;
  static const struct {
    const char *doc;
    mp_post_kind kind; /* of the only post step */
    int scale;
    bool esrgan;
    int final_w, final_h;
  } cases[] = {
      {"a\nsuper_resolution=true\nw=256\nh=256", MP_POST_SUPER_RESOLUTION, 4, false, 1024, 1024},
      {"a\nsuper_resolution=true\nw=504\nh=512", MP_POST_SUPER_RESOLUTION, 4, false, 2016, 2048},
      {"a\nsuper_resolution=true", MP_POST_SUPER_RESOLUTION, 2, false, 1024, 1024},
      {"a --tiled_upscale\nsuper_resolution=true\nw=448\nh=512", MP_POST_TILED_UPSCALE, 4, true, 1792, 2048},
      {"a --tiled_upscale\nsuper_resolution=true\nw=512\nh=768", MP_POST_TILED_UPSCALE, 2, true, 1024, 1536},
      {"a --tiled_upscale\nw=256\nh=256", MP_POST_TILED_UPSCALE, 2, false, 512, 512},
      {"a --tiled_upscale\nw=512\nh=768", MP_POST_TILED_UPSCALE, 2, false, 1024, 1536},
      {"x --tiled_upscale --only_upscale\ninput_image=in.png", MP_POST_TILED_UPSCALE, 0, true, 0, 0},
  };
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    mp_job *j;
    mp_plan *p;
    make(cases[c].doc, &j, &p);
    if (p->n_post != 1 || p->post[0].kind != cases[c].kind || p->post[0].scale != cases[c].scale ||
        (cases[c].kind == MP_POST_TILED_UPSCALE && p->post[0].esrgan != cases[c].esrgan) || p->final_width != cases[c].final_w ||
        p->final_height != cases[c].final_h)
      fail_msg("%s: %d steps, first %s x%d esrgan %d, final %dx%d", cases[c].doc, p->n_post, mp_post_name(p->post[0].kind),
               p->post[0].scale, p->post[0].esrgan, p->final_width, p->final_height);
    mp_plan_free(p);
    mp_job_free(j);
  }
  /* no upscale: the final size is the generation size; from the input image: null in the JSON */
  mp_job *j;
  mp_plan *p;
  make("a\nw=320\nh=448", &j, &p);
  assert_int_equal(p->n_post, 0);
  assert_int_equal(p->final_width, 320), assert_int_equal(p->final_height, 448);
  mp_plan_free(p);
  mp_job_free(j);
  make("a\ninput_image=in.png\nsuper_resolution=true", &j, &p);
  assert_int_equal(p->final_width, 0);
  char *text;
  assert_ok(mp_plan_to_json(p, &text));
  cJSON *root = cJSON_Parse(text);
  free(text);
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(root, "final_size")));
  cJSON_Delete(root);
  mp_plan_free(p);
  mp_job_free(j);
  assert_int_equal(mp_super_resolution_scale(511, 512), 4);
  assert_int_equal(mp_super_resolution_scale(512, 512), 2);
  assert_int_equal(mp_super_resolution_scale(1024, 256), 2);
}

/* Seeds near the top of the range do not wrap: seed+i+k is a 64-bit number. */
static void test_seed_no_wrap(void **state) {
  (void)state;
  mp_job *j;
  mp_plan *p;
  make("s BREAK c BREAK p\nseed=4294967295\nnum_images=8", &j, &p);
  assert_true(p->images[7].seed == 4294967295ull + 7);
  assert_true(p->images[7].passes[1].seed == 4294967295ull + 8);
  char *text;
  assert_ok(mp_plan_to_json(p, &text));
  assert_non_null(strstr(text, "4294967303"));
  free(text);
  mp_plan_free(p);
  mp_job_free(j);
}

/* The JSON form of the API gives the same plan as the text form. */
static void test_api_form_same_plan(void **state) {
  (void)state;
  const char *text = "a gym BREAK photo BREAK sks man <lora:7:0.9>\nnum_images=2\nseed=5\nsteps=12\nw=576\nh=768\n"
                     "super_resolution=true\nnegative_prompt=ugly BREAK BREAK hat\n";
  const char *json = "{\"prompt\":{\"text\":\"a gym BREAK photo BREAK sks man <lora:7:0.9>\",\"num_images\":2,\"seed\":5,\"steps\":\"12\","
                     "\"w\":576,\"h\":768,\"super_resolution\":true,\"negative_prompt\":\"ugly BREAK BREAK hat\"}}";
  mp_job *a, *b;
  mp_plan *pa, *pb;
  assert_ok(mp_job_parse_text(text, strlen(text), &a));
  assert_ok(mp_job_parse_json(json, strlen(json), &b));
  assert_ok(mp_plan_make(a, &pa));
  assert_ok(mp_plan_make(b, &pb));
  char *ja, *jb;
  assert_ok(mp_plan_to_json(pa, &ja));
  assert_ok(mp_plan_to_json(pb, &jb));
  /* the job's raw text differs in where it came from, the plan does not */
  cJSON *ra = cJSON_Parse(ja), *rb = cJSON_Parse(jb);
  assert_true(cJSON_Compare(cJSON_GetObjectItem(ra, "images"), cJSON_GetObjectItem(rb, "images"), 1));
  assert_true(cJSON_Compare(cJSON_GetObjectItem(ra, "post"), cJSON_GetObjectItem(rb, "post"), 1));
  cJSON *pass = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(ra, "images"), 1), "passes"), 1);
  assert_string_equal(cJSON_GetObjectItem(pass, "prompt")->valuestring, "sks man, photo");
  assert_string_equal(cJSON_GetObjectItem(pass, "negative_prompt")->valuestring, "hat");
  cJSON_Delete(ra);
  cJSON_Delete(rb);
  free(ja);
  free(jb);
  mp_plan_free(pa);
  mp_plan_free(pb);
  mp_job_free(a);
  mp_job_free(b);
}

/* The readable form names every part the issue lists. */
static void test_print(void **state) {
  (void)state;
  size_t len;
  char *doc = read_file("examples/seed.prompt", &len);
  mp_job *j;
  mp_plan *p;
  assert_ok(mp_job_parse_text(doc, len, &j));
  free(doc);
  assert_ok(mp_plan_make(j, &p));
  char *out = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&out, &n);
  mp_plan_print(p, f);
  fclose(f);
  const char *want[] = {"flags (1)", "--tiled_upscale", "sections (3)", "common:    \"\"", "[lora 753945 at 1]",
                        "negative sections (3)", "embeddings (3): cyberrealistic-neg badhandv4 negative-hand",
                        "seeds 33504..33507", "512x768", "dpm++sde_karras, 30 steps",
                        "post: tiled_upscale (x2 Real-ESRGAN, then tiles at strength 0.35, cfg 5.5) -> inpaint_faces (strength 0.5) -> film_grain",
                        "final size 1024x1536",
                        "face_swap: no face-swap model is configured", "ar=1:1 ignored because w/h are given"};
  for (size_t i = 0; i < sizeof want / sizeof *want; i++)
    if (!strstr(out, want[i])) fail_msg("'%s' missing from:\n%s", want[i], out);
  free(out);
  mp_plan_free(p);
  mp_job_free(j);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_seed_example),  cmocka_unit_test(test_every_post_step_in_order), cmocka_unit_test(test_scene_modes),
      cmocka_unit_test(test_seed_no_wrap), cmocka_unit_test(test_one_upscale),  cmocka_unit_test(test_api_form_same_plan),       cmocka_unit_test(test_print),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
