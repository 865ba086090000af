/* Split a diffusers part's single weights file into shards with their index, as
 * save_pretrained(max_shard_size=...) writes them, for the sharded-folder tests. */
#ifndef MP_TEST_SHARDS_H
#define MP_TEST_SHARDS_H

/* <dir>/<sub>/<stem>.safetensors ("" sub: <dir> itself) becomes n shards
 * "<prefix>-0000k-of-0000n.safetensors" (prefix NULL: the stem) holding runs of its tensors in name order,
 * and the index <index_name> (NULL: "<stem>.safetensors.index.json") with "metadata": {"total_size"} and
 * "weight_map"; the single file is removed. Fails the test on error. */
void test_split_shards(const char *dir, const char *sub, const char *stem, int n, const char *prefix, const char *index_name);

#endif
