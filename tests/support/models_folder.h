/* The fixtures the end-to-end pipeline tests build: a models folder with the fetched detection
 * models, tiny random-weight checkpoints, copies of golden files, result.json. */
#ifndef MP_TEST_MODELS_FOLDER_H
#define MP_TEST_MODELS_FOLDER_H

#include <stdint.h>

#include <cjson/cJSON.h>

/* Create <dir>/models with vision/ linked to the detection models scripts/fetch-models.sh put in
 * the checkout's models/vision. Fails the test (never skips) when they are missing. Caller frees. */
char *test_models_folder(const char *dir);
/* Path of a file under the checkout's models/vision (e.g. "images/sample6.jpg"). Caller frees. */
char *test_vision_path(const char *rel);
/* A tiny checkpoint of `preset` ("tiny", "tiny-xl") with random f16 weights drawn from `seed`. */
void test_write_tiny_checkpoint(const char *path, const char *preset, uint64_t seed);
/* Copy a file; fails the test on error. */
void test_copy_file(const char *from, const char *to);
/* Parse a JSON file; fails the test when it is missing or not JSON. Caller deletes. */
cJSON *test_read_json(const char *path);

#endif
