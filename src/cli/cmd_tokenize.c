/* mpass tokenize: CLIP token ids of a text, to check what the model will see. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "core/context.h"
#include "core/error.h"
#include "prompt/tokenizer.h"
#include "prompt/weighting.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: mpass tokenize [--vocab PATH] [--tokens] [--raw | --pad | --chunks] TEXT...\n"
          "  prints BOS + token ids + EOS, space-separated (untruncated)\n"
          "  --tokens  also print each id's vocabulary string, one \"id<TAB>string\" per line\n"
          "  --raw     no BOS/EOS;  --pad  the 77 ids the text encoder gets (truncated, padded with EOS)\n"
          "  --chunks  AUTOMATIC1111 weighting: per 77-token chunk a line of ids and a line of weights\n"
          "  --vocab   bpe_simple_vocab_16e6.txt.gz or a tokenizer/ folder (default: $MPASS_VOCAB,\n"
          "            <models>/clip/, ../shared/data/clip/)\n");
}

int cmd_tokenize(mpass_ctx *ctx, int argc, char **argv) {
  static const struct option longopts[] = {{"vocab", required_argument, 0, 'v'}, {"tokens", no_argument, 0, 't'},
                                           {"raw", no_argument, 0, 'r'},         {"pad", no_argument, 0, 'p'},
                                           {"help", no_argument, 0, 'h'},        {"chunks", no_argument, 0, 'c'},
                                           {0, 0, 0, 0}};
  const char *vocab = NULL;
  bool show_tokens = false, raw = false, pad = false, chunks = false;
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    if (opt == 'v') vocab = optarg;
    else if (opt == 't') show_tokens = true;
    else if (opt == 'r') raw = true;
    else if (opt == 'p') pad = true;
    else if (opt == 'c') chunks = true;
    else if (opt == 'h') {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (optind >= argc || (raw && pad)) {
    usage(stderr);
    return 2;
  }
  /* Several words without quotes are one text. */
  size_t len = 1;
  for (int i = optind; i < argc; i++) len += strlen(argv[i]) + 1;
  char *text = malloc(len);
  if (!text) return cli_fail("tokenize", mp_errorf("out of memory"));
  text[0] = 0;
  for (int i = optind; i < argc; i++) {
    if (i > optind) strcat(text, " ");
    strcat(text, argv[i]);
  }
  char *path = NULL;
  mp_tokenizer *tok = NULL;
  int32_t *ids = NULL, padded[MP_CLIP_MAX_LENGTH];
  size_t n = 0;
  mp_error *e = mp_tokenizer_find_vocab(vocab, ctx->data_dir, ctx->models_dir, &path);
  if (!e) e = mp_tokenizer_load(path, &tok);
  if (!e && chunks) {
    mp_prompt_chunks ch;
    mp_chunk_options co = {.comma_backtrack = 20};
    e = mp_prompt_chunk_text(tok, text, &co, &ch);
    for (size_t c = 0; !e && c < ch.n_chunks; c++) {
      for (int i = 0; i < MP_CLIP_MAX_LENGTH; i++) printf(i ? " %d" : "%d", ch.chunks[c].ids[i]);
      printf("\n");
      for (int i = 0; i < MP_CLIP_MAX_LENGTH; i++) printf(i ? " %.9g" : "%.9g", ch.chunks[c].weights[i]);
      printf("\n");
    }
    if (!e) fprintf(stderr, "mpass tokenize: %zu chunks, token count %zu\n", ch.n_chunks, ch.token_count);
    mp_prompt_chunks_free(&ch);
    if (!e) {
      free(text);
      free(path);
      mp_tokenizer_free(tok);
      return 0;
    }
  }
  if (!e) e = mp_tokenize(tok, text, &ids, &n);
  if (e) {
    free(text);
    free(path);
    mp_tokenizer_free(tok);
    return cli_fail("tokenize", e);
  }
  /* The sequence to print: raw ids, BOS+ids+EOS, or the padded 77. */
  size_t m = raw ? n : pad ? MP_CLIP_MAX_LENGTH : n + 2;
  int32_t *seq = pad ? padded : malloc((m ? m : 1) * sizeof *seq);
  if (pad) {
    size_t untrunc;
    e = mp_tokenize_padded(tok, text, padded, &untrunc);
    if (e) {
      free(text);
      free(path);
      free(ids);
      mp_tokenizer_free(tok);
      return cli_fail("tokenize", e);
    }
  } else if (seq) {
    if (raw) {
      if (n) memcpy(seq, ids, n * sizeof *ids);
    }
    else {
      seq[0] = mp_tokenizer_bos(tok);
      if (n) memcpy(seq + 1, ids, n * sizeof *ids);
      seq[n + 1] = mp_tokenizer_eos(tok);
    }
  }
  if (seq) {
    if (show_tokens)
      for (size_t i = 0; i < m; i++) printf("%d\t%s\n", seq[i], mp_tokenizer_token_text(tok, seq[i]));
    else {
      for (size_t i = 0; i < m; i++) printf(i ? " %d" : "%d", seq[i]);
      printf("\n");
    }
  }
  if (n + 2 > MP_CLIP_MAX_LENGTH)
    fprintf(stderr, "mpass tokenize: %zu tokens + BOS/EOS exceed %d; plain CLIP keeps the first %d\n", n,
            MP_CLIP_MAX_LENGTH, MP_CLIP_MAX_LENGTH - 2);
  if (!pad) free(seq);
  free(ids);
  free(text);
  free(path);
  mp_tokenizer_free(tok);
  return seq ? 0 : cli_fail("tokenize", mp_errorf("out of memory"));
}
