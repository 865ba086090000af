/* SDXL diffusers folders. There is no golden one, so this test makes it: ../shared/golden/tiny-xl's
 * single file (sgm layout, f16) written out in the layout StableDiffusionXLPipeline.save_pretrained
 * gives (unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/, f32),
 * through a name table of its own below, written from sgm to diffusers (the direction opposite to
 * src/io/diffusers.c's), with the second text encoder in the transformers layout: q/k/v split out of
 * in_proj, text_projection a Linear weight (the transpose of open_clip's matrix).
 *
 * The folder is written to <build>/test-output/tiny-xl-diffusers, where the CTest
 * conform_tiny_xl_diffusers runs `mpass conform ../shared/golden/tiny-xl --ckpt` on it (this test is
 * its fixture). Checks here: every tensor mpass binds from the folder equals the single file's bit for
 * bit (after the exact f16 -> f32 upcast both go through), the configs agree, the second text encoder
 * gives identical outputs, and broken folders give errors that name the file and the key. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/threads.h"
#include "io/diffusers.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/openclip.h"
#include "models/sd.h"
#include "models/sd_diffusers.h"
#include "models/sd_layout.h"
#include "models/unet.h"
#include "models/vae.h"
#include "models_folder.h"
#include "pipeline/families.h"
#include "shards.h"
#include "testutil.h"

/* ---------------------------------------------------------------- sgm -> diffusers names */

/* Where one single-file tensor goes: the part (subfolder) and the diffusers key; split3 = the
 * in_proj row blocks go to q/k/v_proj; transpose = text_projection; to_linear = [C,C,1,1] -> [C,C]. */
typedef struct {
  const char *part;
  char key[256];
  const char *qkv_tail; /* split3: "weight" or "bias", after "<key>q_proj." */
  bool split3, transpose, to_linear, drop;
} dest;

static bool starts(const char *s, const char *prefix, const char **rest) {
  size_t n = strlen(prefix);
  if (strncmp(s, prefix, n) != 0) return false;
  *rest = s + n;
  return true;
}

/* ResBlock parts of openaimodel -> diffusers ResnetBlock2D. */
static const char *resnet_part(const char *sgm, const char **rest) {
  static const char *const t[][2] = {{"in_layers.0.", "norm1."},       {"in_layers.2.", "conv1."},
                                     {"emb_layers.1.", "time_emb_proj."}, {"out_layers.0.", "norm2."},
                                     {"out_layers.3.", "conv2."},      {"skip_connection.", "conv_shortcut."}};
  for (size_t i = 0; i < sizeof t / sizeof *t; i++)
    if (starts(sgm, t[i][0], rest)) return t[i][1];
  return NULL;
}

/* The tiny-xl UNet: 3 levels, 2 res blocks each, attention at levels 1 and 2 only. */
enum { LEVELS = 3, RES = 2 };
static const bool level_attention[LEVELS] = {false, true, true};

static bool unet_dest(const char *k, dest *d) {
  const char *r;
  int b, consumed = 0;
  d->part = "unet";
  static const char *const fixed[][2] = {{"input_blocks.0.0.", "conv_in."},  {"time_embed.0.", "time_embedding.linear_1."},
                                         {"time_embed.2.", "time_embedding.linear_2."}, {"label_emb.0.0.", "add_embedding.linear_1."},
                                         {"label_emb.0.2.", "add_embedding.linear_2."}, {"out.0.", "conv_norm_out."},
                                         {"out.2.", "conv_out."}};
  for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
    if (starts(k, fixed[i][0], &r)) return snprintf(d->key, sizeof d->key, "%s%s", fixed[i][1], r), true;
  if (sscanf(k, "input_blocks.%d.%n", &b, &consumed) == 1 && consumed) {
    int level = (b - 1) / (RES + 1), j = (b - 1) % (RES + 1);
    const char *s = k + consumed, *res;
    if (j == RES && starts(s, "0.op.", &r)) return snprintf(d->key, sizeof d->key, "down_blocks.%d.downsamplers.0.conv.%s", level, r), true;
    if (starts(s, "0.", &r) && (res = resnet_part(r, &r)))
      return snprintf(d->key, sizeof d->key, "down_blocks.%d.resnets.%d.%s%s", level, j, res, r), true;
    if (starts(s, "1.", &r)) return snprintf(d->key, sizeof d->key, "down_blocks.%d.attentions.%d.%s", level, j, r), true;
    return false;
  }
  if (sscanf(k, "middle_block.%d.%n", &b, &consumed) == 1 && consumed) {
    const char *s = k + consumed, *res;
    if (b == 1) return snprintf(d->key, sizeof d->key, "mid_block.attentions.0.%s", s), true;
    if ((res = resnet_part(s, &r))) return snprintf(d->key, sizeof d->key, "mid_block.resnets.%d.%s%s", b / 2, res, r), true;
    return false;
  }
  if (sscanf(k, "output_blocks.%d.%n", &b, &consumed) == 1 && consumed) {
    int up = b / (RES + 1), j = b % (RES + 1), level = LEVELS - 1 - up;
    const char *s = k + consumed, *res;
    if (starts(s, "0.", &r) && (res = resnet_part(r, &r)))
      return snprintf(d->key, sizeof d->key, "up_blocks.%d.resnets.%d.%s%s", up, j, res, r), true;
    if (level_attention[level] && starts(s, "1.", &r))
      return snprintf(d->key, sizeof d->key, "up_blocks.%d.attentions.%d.%s", up, j, r), true;
    if (starts(s, level_attention[level] ? "2.conv." : "1.conv.", &r))
      return snprintf(d->key, sizeof d->key, "up_blocks.%d.upsamplers.0.conv.%s", up, r), true;
  }
  return false;
}

/* The VAE: 4 levels; the decoder's up blocks count from the top in diffusers. */
static bool vae_dest(const char *k, dest *d) {
  enum { VAE_LEVELS = 4 };
  const char *r;
  int l, j, consumed = 0;
  char part[16];
  d->part = "vae";
  if (sscanf(k, "%15[a-z].down.%d.block.%d.%n", part, &l, &j, &consumed) == 3 && consumed) {
    r = k + consumed;
    bool nin = starts(r, "nin_shortcut.", &r);
    return snprintf(d->key, sizeof d->key, "%s.down_blocks.%d.resnets.%d.%s%s", part, l, j, nin ? "conv_shortcut." : "", r), true;
  }
  consumed = 0;
  if (sscanf(k, "%15[a-z].up.%d.block.%d.%n", part, &l, &j, &consumed) == 3 && consumed) {
    r = k + consumed;
    bool nin = starts(r, "nin_shortcut.", &r);
    return snprintf(d->key, sizeof d->key, "%s.up_blocks.%d.resnets.%d.%s%s", part, VAE_LEVELS - 1 - l, j, nin ? "conv_shortcut." : "", r), true;
  }
  consumed = 0;
  if (sscanf(k, "encoder.down.%d.downsample.conv.%n", &l, &consumed) == 1 && consumed)
    return snprintf(d->key, sizeof d->key, "encoder.down_blocks.%d.downsamplers.0.conv.%s", l, k + consumed), true;
  consumed = 0;
  if (sscanf(k, "decoder.up.%d.upsample.conv.%n", &l, &consumed) == 1 && consumed)
    return snprintf(d->key, sizeof d->key, "decoder.up_blocks.%d.upsamplers.0.conv.%s", VAE_LEVELS - 1 - l, k + consumed), true;
  consumed = 0;
  if (sscanf(k, "%15[a-z].mid.block_%d.%n", part, &j, &consumed) == 2 && consumed) {
    r = k + consumed;
    bool nin = starts(r, "nin_shortcut.", &r);
    return snprintf(d->key, sizeof d->key, "%s.mid_block.resnets.%d.%s%s", part, j - 1, nin ? "conv_shortcut." : "", r), true;
  }
  consumed = 0;
  if (sscanf(k, "%15[a-z].mid.attn_1.%n", part, &consumed) == 1 && consumed) {
    static const char *const a[][2] = {{"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."}, {"proj_out.", "to_out.0."}};
    for (size_t i = 0; i < sizeof a / sizeof *a; i++)
      if (starts(k + consumed, a[i][0], &r)) {
        d->to_linear = i > 0 && strcmp(r, "weight") == 0; /* a 1x1 conv in sgm, a Linear in diffusers */
        return snprintf(d->key, sizeof d->key, "%s.mid_block.attentions.0.%s%s", part, a[i][1], r), true;
      }
    return false;
  }
  if (sscanf(k, "%15[a-z].norm_out.%n", part, &consumed) == 1 && consumed)
    return snprintf(d->key, sizeof d->key, "%s.conv_norm_out.%s", part, k + consumed), true;
  snprintf(d->key, sizeof d->key, "%s", k); /* conv_in, conv_out, quant_conv, post_quant_conv */
  return true;
}

/* open_clip's text tower -> transformers' CLIPTextModelWithProjection. */
static bool openclip_dest(const char *k, dest *d) {
  const char *r;
  int n, consumed = 0;
  d->part = "text_encoder_2";
  if (strcmp(k, "logit_scale") == 0) return d->drop = true;
  if (strcmp(k, "text_projection") == 0) return d->transpose = true, snprintf(d->key, sizeof d->key, "text_projection.weight"), true;
  if (strcmp(k, "positional_embedding") == 0) return snprintf(d->key, sizeof d->key, "text_model.embeddings.position_embedding.weight"), true;
  if (starts(k, "token_embedding.", &r)) return snprintf(d->key, sizeof d->key, "text_model.embeddings.token_embedding.%s", r), true;
  if (starts(k, "ln_final.", &r)) return snprintf(d->key, sizeof d->key, "text_model.final_layer_norm.%s", r), true;
  if (sscanf(k, "transformer.resblocks.%d.%n", &n, &consumed) != 1 || !consumed) return false;
  static const char *const t[][2] = {{"attn.out_proj.", "self_attn.out_proj."}, {"ln_1.", "layer_norm1."}, {"ln_2.", "layer_norm2."},
                                     {"mlp.c_fc.", "mlp.fc1."},                 {"mlp.c_proj.", "mlp.fc2."}};
  const char *s = k + consumed;
  if (starts(s, "attn.in_proj_", &r)) { /* "weight" / "bias" */
    d->split3 = true;
    d->qkv_tail = r;
    return snprintf(d->key, sizeof d->key, "text_model.encoder.layers.%d.self_attn.", n), true;
  }
  for (size_t i = 0; i < sizeof t / sizeof *t; i++)
    if (starts(s, t[i][0], &r)) return snprintf(d->key, sizeof d->key, "text_model.encoder.layers.%d.%s%s", n, t[i][1], r), true;
  return false;
}

static bool to_diffusers(const char *name, dest *d) {
  memset(d, 0, sizeof *d);
  const char *r;
  if (starts(name, "model.diffusion_model.", &r)) return unet_dest(r, d);
  if (starts(name, "first_stage_model.", &r)) return vae_dest(r, d);
  if (starts(name, "conditioner.embedders.0.transformer.", &r)) {
    d->part = "text_encoder";
    d->drop = strcmp(r, "text_model.embeddings.position_ids") == 0; /* transformers >= 4.31 saves none */
    return snprintf(d->key, sizeof d->key, "%s", r), true;
  }
  if (starts(name, "conditioner.embedders.1.model.", &r)) return openclip_dest(r, d);
  return false;
}

/* ---------------------------------------------------------------- writing the folder */

typedef struct {
  char **names;
  mp_tensor *tensors;
  size_t n, cap;
} tensor_list;

static void list_add(tensor_list *l, const char *name, const mp_tensor *t) {
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 256;
    l->names = realloc(l->names, l->cap * sizeof *l->names);
    l->tensors = realloc(l->tensors, l->cap * sizeof *l->tensors);
    assert_non_null(l->names);
    assert_non_null(l->tensors);
  }
  l->names[l->n] = strdup(name);
  l->tensors[l->n++] = *t;
}

static void list_write(tensor_list *l, const char *path) {
  assert_ok(mp_safetensors_write(path, l->n, (const char *const *)l->names, l->tensors, "{\"format\": \"pt\"}"));
}

static void list_free(tensor_list *l) {
  for (size_t i = 0; i < l->n; i++) free(l->names[i]), mp_tensor_free(&l->tensors[i]);
  free(l->names), free(l->tensors);
  memset(l, 0, sizeof *l);
}

static void write_json(const char *dir, const char *rel, cJSON *o) {
  char p[1024], *text = cJSON_Print(o);
  assert_non_null(text);
  snprintf(p, sizeof p, "%s/%s", dir, rel);
  unlink(p);
  test_write_file(p, text, strlen(text));
  cJSON_free(text);
  cJSON_Delete(o);
}

/* A copy of `block` (an object of tinyxl.json) with "_class_name" (or "architectures") added. */
static cJSON *config_from(const cJSON *block, const char *key, const char *value, bool as_list) {
  cJSON *o = cJSON_Duplicate(block, true);
  assert_non_null(o);
  if (as_list) {
    const char *one[1] = {value};
    cJSON_AddItemToObject(o, key, cJSON_CreateStringArray(one, 1));
  } else {
    cJSON_AddStringToObject(o, key, value);
  }
  return o;
}

static void make_dir(const char *dir, const char *sub) {
  char p[1024];
  snprintf(p, sizeof p, "%s%s%s", dir, *sub ? "/" : "", sub);
  assert_int_equal(mkdir(p, 0755), 0);
}

/* Write tinyxl.safetensors as an SDXL diffusers folder at `dir` (which must not exist), f32. */
static void write_xl_folder(const char *dir) {
  char *ckpt = test_shared_path("golden/tiny-xl/tinyxl.safetensors"), *cfg_path = test_shared_path("golden/tiny-xl/tinyxl.json");
  char *tok = test_shared_path("golden/tiny-diffusers/tokenizer");
  static const char *const subs[] = {"unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"};
  make_dir(dir, "");
  for (size_t i = 0; i < sizeof subs / sizeof *subs; i++) make_dir(dir, subs[i]);

  /* the weights */
  mp_weights *w;
  assert_ok(mp_weights_open(ckpt, &w));
  tensor_list parts[4];
  memset(parts, 0, sizeof parts);
  static const char *const part_names[4] = {"unet", "vae", "text_encoder", "text_encoder_2"};
  for (size_t i = 0; i < mp_weights_count(w); i++) {
    const mp_weight *t = mp_weights_at(w, i);
    dest d;
    if (!to_diffusers(t->name, &d)) fail_msg("%s: the test's name table does not know it", t->name);
    if (d.drop) continue;
    size_t p = 0;
    while (strcmp(part_names[p], d.part) != 0) p++;
    mp_tensor f;
    if (t->t.dtype == MP_I64) {
      assert_ok(mp_tensor_alloc(&f, MP_I64, t->t.ndim, t->t.shape));
      memcpy(f.data, t->t.data, mp_tensor_nbytes(&t->t));
    } else {
      assert_ok(mp_tensor_to_f32(&t->t, &f));
    }
    if (d.to_linear) {
      assert_int_equal(f.ndim, 4);
      f.ndim = 2;
    }
    if (d.transpose) {
      mp_tensor tr;
      assert_ok(mp_tensor_alloc(&tr, MP_F32, 2, (int64_t[]){f.shape[1], f.shape[0]}));
      const float *a = f.data;
      float *b = tr.data;
      for (int64_t r = 0; r < f.shape[0]; r++)
        for (int64_t c = 0; c < f.shape[1]; c++) b[c * f.shape[0] + r] = a[r * f.shape[1] + c];
      mp_tensor_free(&f);
      f = tr;
    }
    if (d.split3) {
      static const char *const qkv[3] = {"q_proj", "k_proj", "v_proj"};
      assert_int_equal(f.shape[0] % 3, 0);
      int64_t shape[2] = {f.shape[0] / 3, f.ndim == 2 ? f.shape[1] : 1};
      size_t block = (size_t)(shape[0] * shape[1]);
      for (int b = 0; b < 3; b++) {
        mp_tensor s;
        assert_ok(mp_tensor_alloc(&s, MP_F32, f.ndim, shape));
        memcpy(s.data, (const float *)f.data + (size_t)b * block, block * sizeof(float));
        char key[300];
        snprintf(key, sizeof key, "%s%s.%s", d.key, qkv[b], d.qkv_tail);
        list_add(&parts[p], key, &s);
      }
      mp_tensor_free(&f);
      continue;
    }
    list_add(&parts[p], d.key, &f);
  }
  mp_weights_close(w);
  /* older transformers also saved position_ids in CLIPTextModelWithProjection: a buffer mpass must skip */
  mp_tensor ids;
  assert_ok(mp_tensor_alloc(&ids, MP_I64, 2, (int64_t[]){1, 77}));
  for (int i = 0; i < 77; i++) ((int64_t *)ids.data)[i] = i;
  list_add(&parts[3], "text_model.embeddings.position_ids", &ids);
  static const char *const files[4] = {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                                       "text_encoder/model.safetensors", "text_encoder_2/model.safetensors"};
  for (int p = 0; p < 4; p++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, files[p]);
    list_write(&parts[p], path);
    list_free(&parts[p]);
  }

  /* the configs: model_index.json, the derived diffusers configs in tinyxl.json's "meta", the HF text configs */
  FILE *f = fopen(cfg_path, "rb");
  assert_non_null(f);
  static char text[1 << 16];
  size_t got = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[got] = 0;
  cJSON *root = cJSON_Parse(text), *meta = cJSON_GetObjectItemCaseSensitive(root, "meta");
  assert_non_null(meta);
  cJSON *index = cJSON_CreateObject();
  cJSON_AddStringToObject(index, "_class_name", "StableDiffusionXLPipeline");
  cJSON_AddStringToObject(index, "_diffusers_version", "0.25.1");
  cJSON_AddTrueToObject(index, "force_zeros_for_empty_prompt");
  static const char *const members[][3] = {{"unet", "diffusers", "UNet2DConditionModel"},      {"vae", "diffusers", "AutoencoderKL"},
                                           {"text_encoder", "transformers", "CLIPTextModel"},  {"text_encoder_2", "transformers", "CLIPTextModelWithProjection"},
                                           {"tokenizer", "transformers", "CLIPTokenizer"},     {"tokenizer_2", "transformers", "CLIPTokenizer"},
                                           {"scheduler", "diffusers", "EulerDiscreteScheduler"}};
  for (size_t i = 0; i < sizeof members / sizeof *members; i++)
    cJSON_AddItemToObject(index, members[i][0], cJSON_CreateStringArray(members[i] + 1, 2));
  write_json(dir, "model_index.json", index);
  write_json(dir, "unet/config.json", config_from(cJSON_GetObjectItemCaseSensitive(meta, "diffusers_unet"), "_class_name", "UNet2DConditionModel", false));
  write_json(dir, "vae/config.json", config_from(cJSON_GetObjectItemCaseSensitive(meta, "diffusers_vae"), "_class_name", "AutoencoderKL", false));
  write_json(dir, "text_encoder/config.json", config_from(cJSON_GetObjectItemCaseSensitive(root, "text_encoder"), "architectures", "CLIPTextModel", true));
  write_json(dir, "text_encoder_2/config.json",
             config_from(cJSON_GetObjectItemCaseSensitive(root, "text_encoder_2"), "architectures", "CLIPTextModelWithProjection", true));
  cJSON_Delete(root);
  write_json(dir, "scheduler/scheduler_config.json",
             cJSON_Parse("{\"_class_name\": \"EulerDiscreteScheduler\", \"beta_start\": 0.00085, \"beta_end\": 0.012, "
                         "\"beta_schedule\": \"scaled_linear\", \"num_train_timesteps\": 1000, \"prediction_type\": \"epsilon\", "
                         "\"steps_offset\": 1, \"timestep_spacing\": \"leading\"}"));
  /* the tokenizers: the same CLIP BPE; tokenizer_2 declares "!" its pad token, as SDXL's does */
  static const char *const tok_files[] = {"vocab.json", "merges.txt"};
  for (int t = 0; t < 2; t++)
    for (size_t i = 0; i < 2; i++) {
      char from[1024], to[1024];
      snprintf(from, sizeof from, "%s/%s", tok, tok_files[i]);
      snprintf(to, sizeof to, "%s/%s/%s", dir, t ? "tokenizer_2" : "tokenizer", tok_files[i]);
      test_copy_file(from, to);
    }
  write_json(dir, "tokenizer_2/special_tokens_map.json",
             cJSON_Parse("{\"bos_token\": \"<|startoftext|>\", \"eos_token\": \"<|endoftext|>\", \"pad_token\": \"!\", "
                         "\"unk_token\": \"<|endoftext|>\"}"));
  free(ckpt), free(cfg_path), free(tok);
}

/* <build>/test-output/tiny-xl-diffusers, written afresh (the conform CTest reads it). */
static char *fixture_folder(void) {
  const char *bin = getenv("MPASS_BINARY_DIR");
  char out[1024], *dir = NULL;
  snprintf(out, sizeof out, "%s/test-output", bin && *bin ? bin : "build");
  mkdir(out, 0755);
  assert_true(asprintf(&dir, "%s/tiny-xl-diffusers", out) > 0);
  test_remove_tree(dir);
  write_xl_folder(dir);
  return dir;
}

static char *fixture; /* written once by the first test, used by all */

static const char *folder_path(void) {
  if (!fixture) fixture = fixture_folder();
  return fixture;
}

/* ---------------------------------------------------------------- the checks */

/* Tensors of the single file that a diffusers folder does not carry (buffers nothing reads). */
static bool not_in_folder(const char *name) {
  return strcmp(name, MP_PREFIX_XL_CLIP "embeddings.position_ids") == 0 || strcmp(name, MP_PREFIX_XL_OPENCLIP "logit_scale") == 0;
}

static void assert_same_values(const char *name, const mp_tensor *a, const mp_tensor *b) {
  if (a->ndim != b->ndim) fail_msg("%s: %d-D in the file, %d-D from the folder", name, a->ndim, b->ndim);
  for (int d = 0; d < a->ndim; d++)
    if (a->shape[d] != b->shape[d]) fail_msg("%s: dim %d is %lld in the file, %lld from the folder", name, d, (long long)a->shape[d], (long long)b->shape[d]);
  mp_tensor fa, fb;
  assert_ok(mp_tensor_to_f32(a, &fa));
  assert_ok(mp_tensor_to_f32(b, &fb));
  if (memcmp(fa.data, fb.data, mp_tensor_nbytes(&fa)) != 0) fail_msg("%s: different values", name);
  mp_tensor_free(&fa), mp_tensor_free(&fb);
}

/* Every tensor of the folder (under its mapped sgm name) equals the single file's; the folder has every
 * model tensor of the file and nothing it cannot place. */
static void test_same_tensors(void **state) {
  (void)state;
  char *f = test_shared_path("golden/tiny-xl/tinyxl.safetensors");
  mp_weights *file, *folder;
  assert_ok(mp_weights_open(f, &file));
  assert_ok(mp_weights_open(folder_path(), &folder));
  size_t n_file = 0, n_fused = 0;
  for (size_t i = 0; i < mp_weights_count(file); i++) {
    const mp_weight *a = mp_weights_at(file, i);
    if (not_in_folder(a->name)) continue;
    n_file++;
    const mp_weight *b = mp_weights_find(folder, a->name);
    if (!b) fail_msg("%s: not in the diffusers folder", a->name);
    assert_int_equal(b->t.dtype, MP_F32);
    assert_same_values(a->name, &a->t, &b->t);
    n_fused += strstr(a->name, "in_proj_") != NULL;
  }
  assert_int_equal(n_file, 957 - 2);
  assert_int_equal(n_fused, 2 * 3); /* weight and bias of the 3 OpenCLIP layers */
  assert_int_equal(mp_weights_count(folder), n_file);
  const mp_weight *p = mp_weights_find(folder, MP_PREFIX_XL_OPENCLIP "text_projection");
  assert_non_null(p);
  assert_int_equal(p->t.shape[0], 48), assert_int_equal(p->t.shape[1], 40); /* [hidden, proj] */
  assert_non_null(p->source);
  assert_string_equal(p->source, "text_encoder_2/text_projection.weight");
  mp_weights_close(file);
  mp_weights_close(folder);
  free(f);
}

static void assert_same_clip(const mp_clip_config *x, const mp_clip_config *y) {
  assert_int_equal(x->vocab_size, y->vocab_size), assert_int_equal(x->max_positions, y->max_positions);
  assert_int_equal(x->hidden, y->hidden), assert_int_equal(x->intermediate, y->intermediate);
  assert_int_equal(x->layers, y->layers), assert_int_equal(x->heads, y->heads);
  assert_int_equal(x->projection_dim, y->projection_dim);
  assert_true(x->ln_eps == y->ln_eps && x->quick_gelu == y->quick_gelu);
}

static void assert_same_vae(const mp_vae_config *a, const mp_vae_config *b) {
  assert_int_equal(a->in_channels, b->in_channels), assert_int_equal(a->out_channels, b->out_channels);
  assert_int_equal(a->ch, b->ch), assert_int_equal(a->n_levels, b->n_levels);
  for (int l = 0; l < a->n_levels; l++) assert_int_equal(a->ch_mult[l], b->ch_mult[l]);
  assert_int_equal(a->num_res_blocks, b->num_res_blocks), assert_int_equal(a->z_channels, b->z_channels);
  assert_int_equal(a->embed_dim, b->embed_dim);
}

/* The configs give what shapes plus tinyxl.json give. */
static void test_same_config(void **state) {
  (void)state;
  char *f = test_shared_path("golden/tiny-xl/tinyxl.safetensors");
  mp_weights *file, *folder;
  assert_ok(mp_weights_open(f, &file));
  assert_ok(mp_weights_open(folder_path(), &folder));
  mp_sd_config a, b;
  assert_ok(mp_sd_config_detect(file, NULL, &a));
  assert_ok(mp_sd_config_detect(folder, NULL, &b));
  assert_int_equal(b.family, MP_FAMILY_SDXL);
  assert_true(b.scale_factor == 0.13025f && a.scale_factor == b.scale_factor);
  assert_true(a.linear_start == b.linear_start && a.linear_end == b.linear_end);
  assert_int_equal(a.timesteps, b.timesteps), assert_int_equal(a.time_id_dim, b.time_id_dim);
  assert_int_equal(a.inpainting, b.inpainting);
  assert_same_clip(&a.clip, &b.clip);
  assert_same_clip(&a.clip2, &b.clip2);
  const mp_unet_config *ua = &a.unet, *ub = &b.unet;
  assert_int_equal(ua->in_channels, ub->in_channels), assert_int_equal(ua->out_channels, ub->out_channels);
  assert_int_equal(ua->model_channels, ub->model_channels), assert_int_equal(ua->n_levels, ub->n_levels);
  for (int l = 0; l < ua->n_levels; l++) {
    assert_int_equal(ua->channel_mult[l], ub->channel_mult[l]);
    assert_int_equal(ua->attention_at_level[l], ub->attention_at_level[l]);
    if (ua->attention_at_level[l]) assert_int_equal(mp_unet_level_depth(ua, l), mp_unet_level_depth(ub, l));
  }
  assert_int_equal(mp_unet_mid_depth(ua), mp_unet_mid_depth(ub));
  assert_int_equal(ua->num_res_blocks, ub->num_res_blocks);
  assert_int_equal(ua->num_heads, ub->num_heads), assert_int_equal(ua->num_head_channels, ub->num_head_channels);
  assert_int_equal(ua->context_dim, ub->context_dim), assert_int_equal(ua->adm_in_channels, ub->adm_in_channels);
  assert_int_equal(ua->linear_in_transformer, ub->linear_in_transformer);
  assert_same_vae(&a.vae, &b.vae);
  /* every part binds from the folder */
  mp_unet *u;
  mp_vae *v;
  mp_clip *c;
  mp_openclip *o;
  assert_ok(mp_unet_load(folder, MP_PREFIX_UNET, &b.unet, &u));
  assert_ok(mp_vae_load(folder, MP_PREFIX_VAE, &b.vae, &v));
  assert_ok(mp_clip_load(folder, MP_PREFIX_XL_CLIP, &b.clip, &c));
  assert_ok(mp_openclip_load(folder, MP_PREFIX_XL_OPENCLIP, &b.clip2, &o));
  mp_unet_free(u), mp_vae_free(v), mp_clip_free(c), mp_openclip_free(o);
  mp_weights_close(file);
  mp_weights_close(folder);
  free(f);
}

/* The second text encoder, run from both: identical states and pooled vector. */
static void test_same_openclip_outputs(void **state) {
  (void)state;
  char *f = test_shared_path("golden/tiny-xl/tinyxl.safetensors");
  mp_weights *w[2];
  assert_ok(mp_weights_open(f, &w[0]));
  assert_ok(mp_weights_open(folder_path(), &w[1]));
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  enum { T = 77, D = 48, P = 40 };
  static float emb[T * D], pen[2][T * D], last[2][T * D], pooled[2][P];
  int32_t ids[T];
  for (int i = 0; i < T; i++) ids[i] = i == 0 ? 49406 : i < 7 ? 400 + 11 * i : i == 7 ? 49407 : 0;
  for (int k = 0; k < 2; k++) {
    mp_sd_config cfg;
    assert_ok(mp_sd_config_detect(w[k], NULL, &cfg));
    mp_openclip *m;
    assert_ok(mp_openclip_load(w[k], MP_PREFIX_XL_OPENCLIP, &cfg.clip2, &m));
    assert_ok(mp_openclip_embed_tokens(m, ids, T, emb));
    assert_ok(mp_openclip_encode_embeds(m, pool, emb, T, mp_openclip_eos_index(ids, T, 49407), pen[k], last[k], pooled[k]));
    mp_openclip_free(m);
  }
  assert_memory_equal(pen[0], pen[1], sizeof pen[0]);
  assert_memory_equal(last[0], last[1], sizeof last[0]);
  assert_memory_equal(pooled[0], pooled[1], sizeof pooled[0]);
  float norm = 0;
  for (int i = 0; i < P; i++) norm += pooled[0][i] * pooled[0][i];
  assert_true(norm > 0 && isfinite(norm));
  mp_pool_destroy(pool);
  mp_weights_close(w[0]);
  mp_weights_close(w[1]);
  free(f);
}

/* The run path takes the folder's tokenizer; without tokenizer/ it takes tokenizer_2/ (the same BPE). */
static void test_tokenizers(void **state) {
  (void)state;
  char *vocab = NULL;
  assert_ok(mp_diffusers_vocab_for_model(folder_path(), NULL, &vocab));
  assert_non_null(vocab);
  assert_non_null(strstr(vocab, "/tokenizer"));
  assert_null(strstr(vocab, "tokenizer_2"));
  free(vocab);
  char *t2 = NULL;
  assert_ok(mp_diffusers_tokenizer(folder_path(), "tokenizer_2", &t2));
  assert_non_null(t2);
  free(t2);
}

/* In models/checkpoints/ a folder is a checkpoint: base_model=NAME finds checkpoints/NAME/, its family is
 * SDXL, and the persons' default SD 1.x checkpoint may be a folder too but never this one. */
static void test_checkpoints_folder(void **state) {
  (void)state;
  char *models = test_tmpdir(), p[1024], *path = NULL;
  snprintf(p, sizeof p, "%s/checkpoints", models);
  assert_int_equal(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/checkpoints/tinyxl-diffusers", models);
  assert_int_equal(symlink(folder_path(), p), 0);
  assert_ok(mp_base_model_path(models, "tinyxl-diffusers", &path));
  assert_string_equal(path, p);
  mp_family fam = MP_FAMILY_UNKNOWN;
  assert_ok(mp_checkpoint_family(path, &fam));
  assert_int_equal(fam, MP_FAMILY_SDXL);
  free(path);
  assert_err_contains(mp_base_model_path(models, "nothing", &path), "no diffusers folder");
  assert_err_contains(mp_default_sd15_checkpoint(models, &path), "no SD 1.x checkpoint");
  char *sd15 = test_shared_path("golden/tiny-diffusers");
  snprintf(p, sizeof p, "%s/checkpoints/zz-sd15", models);
  assert_int_equal(symlink(sd15, p), 0);
  assert_ok(mp_default_sd15_checkpoint(models, &path));
  assert_string_equal(path, p);
  free(path), free(sd15);
  test_remove_tree(models);
  free(models);
}

static void put_text(const char *dir, const char *rel, const char *text) {
  char p[1024];
  snprintf(p, sizeof p, "%s/%s", dir, rel);
  unlink(p);
  test_write_file(p, text, strlen(text));
}

/* The configs of stabilityai/stable-diffusion-xl-base-1.0 (the keys mpass reads, with their released
 * values) give the hyper-parameters of the real SDXL, i.e. mpass's "sdxl" preset (sd_xl_base.yaml). */
static void test_real_sdxl_configs(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  static const char *const subs[] = {"unet", "vae", "text_encoder", "text_encoder_2", "scheduler"};
  for (size_t i = 0; i < sizeof subs / sizeof *subs; i++) make_dir(dir, subs[i]);
  put_text(dir, "model_index.json",
           "{\"_class_name\": \"StableDiffusionXLPipeline\", \"force_zeros_for_empty_prompt\": true, "
           "\"text_encoder\": [\"transformers\", \"CLIPTextModel\"], \"text_encoder_2\": [\"transformers\", "
           "\"CLIPTextModelWithProjection\"], \"unet\": [\"diffusers\", \"UNet2DConditionModel\"], \"vae\": [\"diffusers\", "
           "\"AutoencoderKL\"]}");
  put_text(dir, "unet/config.json",
           "{\"_class_name\": \"UNet2DConditionModel\", \"act_fn\": \"silu\", \"addition_embed_type\": \"text_time\", "
           "\"addition_embed_type_num_heads\": 64, \"addition_time_embed_dim\": 256, \"attention_head_dim\": [5, 10, 20], "
           "\"block_out_channels\": [320, 640, 1280], \"center_input_sample\": false, \"class_embed_type\": null, "
           "\"cross_attention_dim\": 2048, \"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\", "
           "\"CrossAttnDownBlock2D\"], \"flip_sin_to_cos\": true, \"freq_shift\": 0, \"in_channels\": 4, "
           "\"layers_per_block\": 2, \"mid_block_type\": \"UNetMidBlock2DCrossAttn\", \"norm_num_groups\": 32, "
           "\"num_attention_heads\": null, \"out_channels\": 4, \"projection_class_embeddings_input_dim\": 2816, "
           "\"resnet_time_scale_shift\": \"default\", \"sample_size\": 128, \"time_embedding_type\": \"positional\", "
           "\"transformer_layers_per_block\": [1, 2, 10], \"up_block_types\": [\"CrossAttnUpBlock2D\", "
           "\"CrossAttnUpBlock2D\", \"UpBlock2D\"], \"upcast_attention\": null, \"use_linear_projection\": true}");
  put_text(dir, "vae/config.json",
           "{\"_class_name\": \"AutoencoderKL\", \"act_fn\": \"silu\", \"block_out_channels\": [128, 256, 512, 512], "
           "\"force_upcast\": true, \"in_channels\": 3, \"latent_channels\": 4, \"layers_per_block\": 2, "
           "\"norm_num_groups\": 32, \"out_channels\": 3, \"sample_size\": 1024, \"scaling_factor\": 0.13025}");
  put_text(dir, "text_encoder/config.json",
           "{\"architectures\": [\"CLIPTextModel\"], \"hidden_act\": \"quick_gelu\", \"hidden_size\": 768, "
           "\"intermediate_size\": 3072, \"layer_norm_eps\": 1e-05, \"max_position_embeddings\": 77, "
           "\"num_attention_heads\": 12, \"num_hidden_layers\": 12, \"pad_token_id\": 1, \"projection_dim\": 768, "
           "\"vocab_size\": 49408}");
  put_text(dir, "text_encoder_2/config.json",
           "{\"architectures\": [\"CLIPTextModelWithProjection\"], \"hidden_act\": \"gelu\", \"hidden_size\": 1280, "
           "\"intermediate_size\": 5120, \"layer_norm_eps\": 1e-05, \"max_position_embeddings\": 77, "
           "\"num_attention_heads\": 20, \"num_hidden_layers\": 32, \"pad_token_id\": 1, \"projection_dim\": 1280, "
           "\"vocab_size\": 49408}");
  put_text(dir, "scheduler/scheduler_config.json",
           "{\"_class_name\": \"EulerDiscreteScheduler\", \"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", "
           "\"beta_start\": 0.00085, \"interpolation_type\": \"linear\", \"num_train_timesteps\": 1000, "
           "\"prediction_type\": \"epsilon\", \"steps_offset\": 1, \"timestep_spacing\": \"leading\", "
           "\"trained_betas\": null, \"use_karras_sigmas\": false}");
  mp_sd_config got, want;
  memset(&got, 0, sizeof got);
  got.scale_factor = 0.18215f; /* mp_sd_config_detect's defaults */
  got.linear_start = 0.00085f, got.linear_end = 0.012f, got.timesteps = 1000;
  assert_ok(mp_sd_config_from_diffusers(dir, &got));
  assert_ok(mp_sd_preset("sdxl", &want));
  assert_int_equal(got.family, MP_FAMILY_SDXL);
  assert_true(got.scale_factor == want.scale_factor);
  assert_true(got.linear_start == want.linear_start && got.linear_end == want.linear_end);
  assert_int_equal(got.timesteps, want.timesteps), assert_int_equal(got.time_id_dim, want.time_id_dim);
  assert_same_vae(&got.vae, &want.vae);
  assert_same_clip(&got.clip, &want.clip);
  assert_same_clip(&got.clip2, &want.clip2);
  const mp_unet_config *a = &got.unet, *b = &want.unet;
  assert_int_equal(a->in_channels, b->in_channels), assert_int_equal(a->out_channels, b->out_channels);
  assert_int_equal(a->model_channels, b->model_channels), assert_int_equal(a->n_levels, b->n_levels);
  for (int l = 0; l < b->n_levels; l++) {
    assert_int_equal(a->channel_mult[l], b->channel_mult[l]);
    assert_int_equal(a->attention_at_level[l], b->attention_at_level[l]);
    if (b->attention_at_level[l]) assert_int_equal(mp_unet_level_depth(a, l), mp_unet_level_depth(b, l));
  }
  assert_int_equal(mp_unet_mid_depth(a), mp_unet_mid_depth(b));
  assert_int_equal(a->num_res_blocks, b->num_res_blocks);
  assert_int_equal(a->num_heads, b->num_heads), assert_int_equal(a->num_head_channels, b->num_head_channels);
  assert_int_equal(a->context_dim, b->context_dim), assert_int_equal(a->adm_in_channels, b->adm_in_channels);
  assert_int_equal(a->linear_in_transformer, b->linear_in_transformer);
  test_remove_tree(dir);
  free(dir);
}

/* ---------------------------------------------------------------- broken folders */

static char *copy_fixture(void) {
  char *dir = test_tmpdir(), cmd[2200];
  snprintf(cmd, sizeof cmd, "cp -r '%s/.' '%s/'", folder_path(), dir);
  assert_int_equal(system(cmd), 0);
  return dir;
}

static mp_error *open_and_load(const char *dir) {
  mp_weights *w = NULL;
  MP_TRY(mp_weights_open(dir, &w));
  mp_sd_config cfg;
  mp_error *e = mp_sd_config_detect(w, NULL, &cfg);
  mp_openclip *o = NULL;
  if (!e) e = mp_openclip_load(w, MP_PREFIX_XL_OPENCLIP, &cfg.clip2, &o);
  mp_openclip_free(o);
  mp_weights_close(w);
  return e;
}

/* Rewrite text_encoder_2/model.safetensors with `edit` applied to each (name, tensor); edit returns
 * false to leave a tensor out. */
typedef bool (*tensor_edit)(const char *name, mp_tensor *t);

static void rewrite_te2(const char *dir, tensor_edit edit) {
  char p[1024], tmp[1100];
  snprintf(p, sizeof p, "%s/text_encoder_2/model.safetensors", dir);
  snprintf(tmp, sizeof tmp, "%s.new", p);
  mp_weights *te;
  assert_ok(mp_weights_open(p, &te));
  size_t n = mp_weights_count(te), m = 0;
  const char **names = calloc(n, sizeof *names);
  mp_tensor *ts = calloc(n, sizeof *ts);
  assert_non_null(names);
  assert_non_null(ts);
  for (size_t i = 0; i < n; i++) {
    const mp_weight *t = mp_weights_at(te, i);
    names[m] = t->name, ts[m] = t->t;
    if (edit(t->name, &ts[m])) m++;
  }
  assert_ok(mp_safetensors_write(tmp, m, names, ts, NULL));
  free(names), free(ts);
  mp_weights_close(te);
  assert_int_equal(rename(tmp, p), 0);
}

static bool k_proj_short(const char *name, mp_tensor *t) {
  if (strcmp(name, "text_model.encoder.layers.1.self_attn.k_proj.weight") == 0) t->shape[0] = 40; /* [48,48] -> [40,48] */
  return true;
}
static bool v_proj_other_dtype(const char *name, mp_tensor *t) {
  if (strcmp(name, "text_model.encoder.layers.0.self_attn.v_proj.weight") == 0) t->dtype = MP_F16, t->shape[0] *= 2; /* same bytes */
  return true;
}
static bool no_v_proj_bias(const char *name, mp_tensor *t) {
  (void)t;
  return strcmp(name, "text_model.encoder.layers.2.self_attn.v_proj.bias") != 0;
}
static bool projection_3d(const char *name, mp_tensor *t) {
  if (strcmp(name, "text_projection.weight") == 0) t->ndim = 3, t->shape[2] = 1;
  return true;
}
static bool no_layer_2(const char *name, mp_tensor *t) {
  (void)t;
  return !strstr(name, "encoder.layers.2.");
}

static void test_hostile_text_encoder_2(void **state) {
  (void)state;
  char *dir = copy_fixture(), p[1024];
  /* q/k/v of different shapes */
  rewrite_te2(dir, k_proj_short);
  assert_err_contains(open_and_load(dir), "text_encoder_2/model.safetensors: text_encoder_2/text_model.encoder.layers.1.self_attn.k_proj.weight has shape [40,48], expected [48,48] as text_encoder_2/text_model.encoder.layers.1.self_attn.q_proj.weight has");
  test_remove_tree(dir), free(dir);
  /* q/k/v of different dtypes */
  dir = copy_fixture();
  rewrite_te2(dir, v_proj_other_dtype);
  assert_err_contains(open_and_load(dir), "text_encoder_2/text_model.encoder.layers.0.self_attn.v_proj.weight is F16 but "
                                          "text_encoder_2/text_model.encoder.layers.0.self_attn.q_proj.weight is F32");
  test_remove_tree(dir), free(dir);
  /* a missing v_proj */
  dir = copy_fixture();
  rewrite_te2(dir, no_v_proj_bias);
  assert_err_contains(open_and_load(dir), "text_encoder_2/text_model.encoder.layers.2.self_attn.q_proj.bias has no matching v_proj");
  test_remove_tree(dir), free(dir);
  /* a text_projection that is not a matrix */
  dir = copy_fixture();
  rewrite_te2(dir, projection_3d);
  assert_err_contains(open_and_load(dir), "text_encoder_2/text_projection.weight is 3-D, expected a 2-D Linear weight");
  test_remove_tree(dir), free(dir);
  /* a whole layer missing: binding names the sgm key it needs */
  dir = copy_fixture();
  rewrite_te2(dir, no_layer_2);
  assert_err_contains(open_and_load(dir), MP_PREFIX_XL_OPENCLIP "transformer.resblocks.2.");
  test_remove_tree(dir), free(dir);
  /* a truncated weights file */
  dir = copy_fixture();
  snprintf(p, sizeof p, "%s/text_encoder_2/model.safetensors", dir);
  struct stat st;
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal(truncate(p, st.st_size / 2), 0);
  mp_error *e = open_and_load(dir);
  assert_non_null(e);
  assert_non_null(strstr(mp_error_message(e), "text_encoder_2/model.safetensors"));
  mp_error_free(e);
  assert_int_equal(truncate(p, 5), 0);
  e = open_and_load(dir);
  assert_non_null(e);
  assert_non_null(strstr(mp_error_message(e), "text_encoder_2/model.safetensors"));
  mp_error_free(e);
  unlink(p);
  assert_err_contains(open_and_load(dir), "text_encoder_2: no weights file (looked for model.safetensors");
  test_remove_tree(dir), free(dir);
}

/* The f16 variant (text_encoder_2/model.fp16.safetensors): the fused in_proj and the transposed
 * text_projection keep the f16 bits, byte for byte those of the f16 single file. */
static void test_fp16_text_encoder_2(void **state) {
  (void)state;
  char *dir = copy_fixture(), p[1024], q[1100];
  snprintf(p, sizeof p, "%s/text_encoder_2/model.safetensors", dir);
  snprintf(q, sizeof q, "%s/text_encoder_2/model.fp16.safetensors", dir);
  mp_weights *te;
  assert_ok(mp_weights_open(p, &te));
  tensor_list half;
  memset(&half, 0, sizeof half);
  for (size_t i = 0; i < mp_weights_count(te); i++) {
    const mp_weight *t = mp_weights_at(te, i);
    mp_tensor h;
    assert_ok(mp_tensor_alloc(&h, t->t.dtype == MP_F32 ? MP_F16 : t->t.dtype, t->t.ndim, t->t.shape));
    if (t->t.dtype == MP_F32) mp_convert_f32_to_f16(h.data, t->t.data, (size_t)mp_tensor_numel(&t->t));
    else memcpy(h.data, t->t.data, mp_tensor_nbytes(&t->t));
    list_add(&half, t->name, &h);
  }
  mp_weights_close(te);
  list_write(&half, q);
  list_free(&half);
  assert_int_equal(unlink(p), 0);
  char *f = test_shared_path("golden/tiny-xl/tinyxl.safetensors");
  mp_weights *file, *folder;
  assert_ok(mp_weights_open(f, &file));
  assert_ok(mp_weights_open(dir, &folder));
  size_t n = 0;
  for (size_t i = 0; i < mp_weights_count(file); i++) {
    const mp_weight *a = mp_weights_at(file, i);
    if (strncmp(a->name, MP_PREFIX_XL_OPENCLIP, strlen(MP_PREFIX_XL_OPENCLIP)) != 0 || not_in_folder(a->name)) continue;
    const mp_weight *b = mp_weights_find(folder, a->name);
    if (!b) fail_msg("%s: not in the folder", a->name);
    assert_int_equal(a->t.dtype, MP_F16), assert_int_equal(b->t.dtype, MP_F16);
    assert_same_values(a->name, &a->t, &b->t);
    if (memcmp(a->t.data, b->t.data, mp_tensor_nbytes(&a->t)) != 0) fail_msg("%s: different f16 bits", a->name);
    n++;
  }
  assert_true(n > 30);
  assert_ok(open_and_load(dir));
  mp_weights_close(file), mp_weights_close(folder);
  free(f);
  test_remove_tree(dir), free(dir);
}

/* Every part split into shards, as save_pretrained(max_shard_size=...) writes them: text_encoder_2 in 4, so
 * that layer 0's k_proj.weight and q_proj.weight, fused into one in_proj, come from different shards. The
 * same tensors as the single-file folder, bit for bit, and the models load. */
static void test_sharded_parts(void **state) {
  (void)state;
  char *dir = copy_fixture(), p[1024];
  test_split_shards(dir, "unet", "diffusion_pytorch_model", 3, NULL, NULL);
  test_split_shards(dir, "vae", "diffusion_pytorch_model", 2, NULL, NULL);
  test_split_shards(dir, "text_encoder", "model", 2, NULL, NULL);
  test_split_shards(dir, "text_encoder_2", "model", 4, NULL, NULL);
  snprintf(p, sizeof p, "%s/text_encoder_2/model.safetensors.index.json", dir);
  cJSON *index = test_read_json(p), *map = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
  const char *k_shard = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(map, "text_model.encoder.layers.0.self_attn.k_proj.weight"));
  const char *q_shard = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(map, "text_model.encoder.layers.0.self_attn.q_proj.weight"));
  assert_non_null(k_shard), assert_non_null(q_shard);
  assert_string_not_equal(k_shard, q_shard);
  cJSON_Delete(index);
  mp_weights *single, *sharded;
  assert_ok(mp_weights_open(folder_path(), &single));
  assert_ok(mp_weights_open(dir, &sharded));
  assert_int_equal(mp_weights_count(single), mp_weights_count(sharded));
  for (size_t i = 0; i < mp_weights_count(single); i++) {
    const mp_weight *a = mp_weights_at(single, i), *b = mp_weights_find(sharded, a->name);
    if (!b) fail_msg("%s: not read from the sharded folder", a->name);
    assert_int_equal(a->t.dtype, b->t.dtype);
    assert_same_values(a->name, &a->t, &b->t);
    if (memcmp(a->t.data, b->t.data, mp_tensor_nbytes(&a->t)) != 0) fail_msg("%s: different bits", a->name);
  }
  mp_weights_close(single), mp_weights_close(sharded);
  assert_ok(open_and_load(dir));
  test_remove_tree(dir), free(dir);
}

/* Config and pipeline errors name the file and the key. */
static void test_hostile_configs(void **state) {
  (void)state;
  char *dir = copy_fixture();
  /* the config disagrees with the tensors: the binding names both keys and both shapes */
  put_text(dir, "text_encoder_2/config.json",
           "{\"vocab_size\": 49408, \"max_position_embeddings\": 77, \"hidden_act\": \"gelu\", \"hidden_size\": 64, "
           "\"intermediate_size\": 192, \"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"projection_dim\": 40}");
  assert_err_contains(open_and_load(dir), "SDXL UNet context is 80 wide, the text encoders give 32 + 64");
  put_text(dir, "text_encoder_2/config.json",
           "{\"vocab_size\": 49408, \"max_position_embeddings\": 77, \"hidden_act\": \"gelu\", \"hidden_size\": 48, "
           "\"intermediate_size\": 192, \"num_hidden_layers\": 3, \"num_attention_heads\": 4}");
  assert_err_contains(open_and_load(dir), "text_encoder_2/config.json: \"projection_dim\" is missing or not a number");
  put_text(dir, "text_encoder_2/config.json",
           "{\"vocab_size\": 49408, \"max_position_embeddings\": 77, \"hidden_act\": \"gelu\", \"hidden_size\": 48, "
           "\"intermediate_size\": 96, \"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"projection_dim\": 40}");
  assert_err_contains(open_and_load(dir), "(text_encoder_2/text_model.encoder.layers.0.mlp.fc1.weight in the diffusers folder): expected shape [96,48], found [192,48]");
  test_remove_tree(dir), free(dir);
  dir = copy_fixture();
  char p[1024];
  snprintf(p, sizeof p, "%s/unet/config.json", dir);
  cJSON *unet = NULL;
  assert_ok(mp_diffusers_read_json(dir, "unet/config.json", true, &unet));
  cJSON_ReplaceItemInObject(unet, "transformer_layers_per_block", cJSON_CreateIntArray((int[]){1, 2}, 2));
  write_json(dir, "unet/config.json", unet);
  assert_err_contains(open_and_load(dir), "unet/config.json: \"transformer_layers_per_block\" has 2 entries for 3 blocks");
  assert_ok(mp_diffusers_read_json(dir, "unet/config.json", true, &unet));
  cJSON_DeleteItemFromObject(unet, "transformer_layers_per_block");
  cJSON_DeleteItemFromObject(unet, "addition_time_embed_dim");
  write_json(dir, "unet/config.json", unet);
  assert_err_contains(open_and_load(dir), "unet/config.json: \"addition_time_embed_dim\" is missing or not a number");
  test_remove_tree(dir), free(dir);
  /* the refiner: no first text encoder */
  dir = copy_fixture();
  put_text(dir, "model_index.json",
           "{\"_class_name\": \"StableDiffusionXLImg2ImgPipeline\", \"unet\": [\"diffusers\", \"UNet2DConditionModel\"], "
           "\"vae\": [\"diffusers\", \"AutoencoderKL\"], \"text_encoder\": [null, null], "
           "\"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"]}");
  assert_err_contains(open_and_load(dir), "\"text_encoder\" is not a [library, class] pair, so the StableDiffusionXLImg2ImgPipeline pipeline has no text_encoder");
  test_remove_tree(dir), free(dir);
  /* a second tokenizer that is not the first's BPE */
  dir = copy_fixture();
  put_text(dir, "tokenizer_2/merges.txt", "#version: 0.2\nx y\n");
  assert_err_contains(open_and_load(dir), "tokenizer/merges.txt and tokenizer_2/merges.txt differ at line 2");
  snprintf(p, sizeof p, "%s/tokenizer/merges.txt", dir);
  char q[1024];
  snprintf(q, sizeof q, "%s/tokenizer_2/merges.txt", dir);
  unlink(q);
  test_copy_file(p, q);
  assert_ok(open_and_load(dir));
  put_text(dir, "tokenizer_2/vocab.json", "{\"a\": 0, \"b\": 1}");
  assert_err_contains(open_and_load(dir), "tokenizer/vocab.json has 49408 tokens, tokenizer_2/vocab.json 2");
  test_remove_tree(dir), free(dir);
}

static int teardown(void **state) {
  (void)state;
  free(fixture);
  fixture = NULL;
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_tensors),       cmocka_unit_test(test_same_config),   cmocka_unit_test(test_same_openclip_outputs),
      cmocka_unit_test(test_tokenizers),         cmocka_unit_test(test_real_sdxl_configs),         cmocka_unit_test(test_checkpoints_folder), cmocka_unit_test(test_hostile_text_encoder_2),
      cmocka_unit_test(test_hostile_configs),    cmocka_unit_test(test_fp16_text_encoder_2), cmocka_unit_test(test_sharded_parts),
  };
  return cmocka_run_group_tests(tests, NULL, teardown);
}
